"""The guard itself: `scripts/proto_check.sh` passes on the contract and fails on a breaking
edit or a stale gen/, in a throwaway git repository."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
EVENT_PROTO = Path("protos/telemetry/v1/event.proto")


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def _proto_check(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "scripts/proto_check.sh"],
        cwd=repo,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(repo)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository holding the contract, gen/ and the scripts, committed."""
    for name in ("protos", "gen", "scripts"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    _git(tmp_path, "init", "-q", "-b", "main")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-q", "-m", "contract")
    return tmp_path


def test_passes_on_the_committed_contract(repo: Path) -> None:
    result = _proto_check(repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "proto-check passed" in result.stdout


def test_fails_when_a_field_is_renumbered(repo: Path) -> None:
    proto = repo / EVENT_PROTO
    text = proto.read_text()
    assert "string event_name = 4;" in text
    proto.write_text(text.replace("string event_name = 4;", "string event_name = 14;"))

    result = _proto_check(repo)

    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "event_name" in out
    assert "changed from" in out or "deleted" in out.lower(), out


def test_fails_when_a_committed_field_is_renumbered_in_the_last_commit(repo: Path) -> None:
    proto = repo / EVENT_PROTO
    proto.write_text(proto.read_text().replace("string device_os = 8;", "string device_os = 18;"))
    _git(repo, "commit", "-q", "-am", "renumber")

    result = _proto_check(repo)

    assert result.returncode != 0
    assert "device_os" in result.stdout + result.stderr


def test_fails_when_gen_is_stale(repo: Path) -> None:
    generated = repo / "gen/telemetry/v1/event_pb2.py"
    generated.write_text(generated.read_text() + "\n# edited by hand\n")

    result = _proto_check(repo)

    assert result.returncode != 0
    assert "gen/ is stale" in result.stderr
