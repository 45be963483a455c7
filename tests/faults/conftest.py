"""Fixtures of the fault tests: a private NATS, a pipeline factory, a prefix per test.

Each test owns its broker (so it may stop it) and writes under an index prefix of
its own in OpenSearch, removed afterwards. The counts of every fault test are
printed as one table at the end of the run.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.faults.harness import REPORTS
from tests.procs import Pipeline
from tests.servers import NatsProcess

PipelineFactory = Callable[..., Pipeline]


@pytest.fixture
def prefix(opensearch_url: str) -> Iterator[str]:
    """A fresh index prefix; its indices and template go when the test ends."""
    name = f"fault-{uuid.uuid4().hex[:10]}-"
    yield name
    remove_prefix(opensearch_url, name)


def remove_prefix(opensearch_url: str, name: str) -> None:
    """Deletes the indices and the index template under `name` (never `telemetry-*`)."""
    assert name
    assert not name.startswith("telemetry-")
    try:
        httpx.delete(
            f"{opensearch_url}/{name}*?expand_wildcards=all&ignore_unavailable=true", timeout=30
        )
        templates = httpx.get(f"{opensearch_url}/_index_template", timeout=30).json()
        for template in templates.get("index_templates", []):
            patterns = template["index_template"]["index_patterns"]
            if all(p.startswith(name) for p in patterns):
                httpx.delete(f"{opensearch_url}/_index_template/{template['name']}", timeout=30)
    except httpx.HTTPError:
        pass  # a stopped private node: nothing to clean there


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsProcess]:
    """A private nats-server with JetStream, its store on disk."""
    server = NatsProcess(tmp_path / "nats")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def make_pipeline(tmp_path: Path) -> Iterator[PipelineFactory]:
    """Builds pipelines (not started); every one is stopped when the test ends."""
    built: list[Pipeline] = []

    def factory(**kwargs: object) -> Pipeline:
        pipeline = Pipeline(log_dir=tmp_path, **kwargs)  # type: ignore[arg-type]
        built.append(pipeline)
        return pipeline

    yield factory
    for pipeline in built:
        pipeline.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The table of accepted, lost and duplicated events per fault."""
    if not REPORTS:
        return
    terminalreporter.section("faults: accepted / lost / duplicated")
    terminalreporter.write_line(f"{'fault':<34} {'accepted':>9} {'lost':>5} {'dup':>5}  notes")
    for report in REPORTS:
        terminalreporter.write_line(
            f"{report.fault:<34} {report.accepted:>9} {report.lost:>5} {report.duplicated:>5}"
            f"  {report.extra}"
        )
