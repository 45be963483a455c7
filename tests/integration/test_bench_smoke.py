"""Every bench under bench/ runs to the end at toy sizes and prints its figures.

Benches are not tests (no timing is asserted here); this only keeps them runnable, so a
change to a service's internals that a bench script reaches into fails here, not on the day
someone wants numbers. The figures printed must be real numbers, not placeholders.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 240
RATIO = re.compile(r"ratio[^\n]*?(\d+\.\d+)")


def _bench(script: str, *args: str, opensearch_url: str = "") -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "gen")])}
    if opensearch_url:
        env["OPENSEARCH_URL"] = opensearch_url
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _ratios(out: str) -> list[float]:
    found = [float(value) for value in RATIO.findall(out)]
    assert found, out
    assert all(value > 0 for value in found), out
    return found


def test_gateway_bench_runs() -> None:
    out = _bench("gateway/run.py", "--duration", "1", "--warmup", "0.3", "--connections", "4")
    assert len(_ratios(out)) == 2, out


def test_enricher_bench_runs() -> None:
    out = _bench("enricher/run.py", "--events", "20", "--messages", "40", "--rounds", "2")
    assert len(_ratios(out)) == 4, out


def _opensearch_threads_cpus(opensearch_url: str) -> set[frozenset[int]]:
    """The distinct CPU sets OpenSearch's threads may run on."""
    with urllib.request.urlopen(f"{opensearch_url}/_nodes/_local/process", timeout=10) as answer:
        (node,) = json.load(answer)["nodes"].values()
    pid = node["process"]["id"]
    return {frozenset(os.sched_getaffinity(int(tid))) for tid in os.listdir(f"/proc/{pid}/task")}


def test_indexer_bench_runs(opensearch_url: str) -> None:
    out = _bench(
        "indexer/bench_indexer.py",
        "--docs",
        "1500",
        "--rounds",
        "2",
        "--warmup",
        "0",
        "--queries",
        "5",
        opensearch_url=opensearch_url,
    )
    assert "documents: 1500" in out, out
    assert re.search(r"indexer +\d[\d,]* docs/s, OpenSearch \d+\.\d\d cores", out), out
    # where the CPU went in each indexer round: the machine, the indexer, nats-server
    busy = re.findall(r"machine (\d+\.\d\d) of (\d+) cores busy", out)
    assert len(busy) == 2 * 3, out  # each round: the raw load before, the indexer, the raw after
    # a short load may fall within a tick of the kernel's CPU clock: 0.00 is possible here
    assert all(0 <= float(used) <= int(cores) for used, cores in busy), out
    split = re.findall(
        r"of which the indexer (\d+\.\d\d) cores.*; nats-server (\d+\.\d\d) cores", out
    )
    assert len(split) == 2, out
    # each round's ratio, their median, then one line per query kind
    assert len(_ratios(out)) == 2 + 1 + 3, out


def test_indexer_bench_gives_opensearch_its_own_cpu_and_gives_it_back(opensearch_url: str) -> None:
    everything = frozenset(os.sched_getaffinity(0))
    assert _opensearch_threads_cpus(opensearch_url) == {everything}
    out = _bench(
        "indexer/bench_indexer.py",
        "--isolate",
        "--docs",
        "1000",
        "--rounds",
        "1",
        "--warmup",
        "0",
        "--queries",
        "3",
        opensearch_url=opensearch_url,
    )
    first = min(everything)
    assert f"OpenSearch on CPU [{first}], the rest on {sorted(everything - {first})}" in out, out
    assert len(_ratios(out)) == 1 + 1 + 3, out
    assert _opensearch_threads_cpus(opensearch_url) == {everything}


def test_pipeline_bench_runs_and_writes_its_results(opensearch_url: str, tmp_path: Path) -> None:
    out = _bench(
        "pipeline/run.py",
        "--rounds=1",
        "--events=2000",
        "--warmup=0",
        "--duration=2",
        "--connections=4",
        "--queries=5",
        "--query-events=3000",
        f"--opensearch-url={opensearch_url}",
        f"--out={tmp_path}",
    )
    [written] = list(tmp_path.glob("*.json"))
    assert str(written.name) in out, out
    results = json.loads(written.read_text())
    flood = results["flood"]
    assert flood["e2e_events_per_s"]["median"] > 0
    assert flood["raw_bulk_docs_per_s"]["median"] > 0
    assert flood["ratio_e2e_raw"]["median"] > 0
    assert results["half_load"]["searchable_p99_s"]["median"] > 0
    query = results["query"]
    assert query["indexed_events"] >= 3000, query
    assert query["kinds"]["newest 50, no filter"]["returned"] == 50, query
    for kind in query["kinds"].values():
        assert kind["grpc_p50_ms"] > 0, query
        assert kind["raw_p50_ms"] > 0, query
    for service in ("gateway", "enricher", "indexer"):
        assert results["rss_mb_idle_end"][service] > 0, results["rss_mb_idle_end"]
