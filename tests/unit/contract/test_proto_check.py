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


def _commit_other_file(repo: Path) -> None:
    """A later commit that leaves protos/ alone."""
    (repo / "NOTES").write_text("another change\n")
    _git(repo, "add", "NOTES")
    _git(repo, "commit", "-q", "-m", "unrelated")


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


def test_fails_on_a_break_that_later_commits_buried(repo: Path) -> None:
    proto = repo / EVENT_PROTO
    proto.write_text(proto.read_text().replace("string device_os = 8;", "string device_os = 18;"))
    _git(repo, "commit", "-q", "-am", "renumber")
    _commit_other_file(repo)

    result = _proto_check(repo)

    assert result.returncode != 0
    assert "device_os" in result.stdout + result.stderr
    assert "breaks the contract of" in result.stderr


def test_a_field_once_added_stays_guarded(repo: Path) -> None:
    proto = repo / EVENT_PROTO
    text = proto.read_text()
    proto.write_text(
        text.replace("string device_os = 8;", "string device_os = 8;\n  string extra = 99;")
    )
    _git(repo, "commit", "-q", "-am", "add a field")
    # Taken out again, it is a break of the commit that added it, however many commits on.
    proto.write_text(text)
    _git(repo, "commit", "-q", "-am", "remove it")
    _commit_other_file(repo)

    result = _proto_check(repo)

    assert result.returncode != 0
    assert "extra" in result.stdout + result.stderr


def test_a_shallow_clone_is_warned_it_lacks_the_history(repo: Path, tmp_path: Path) -> None:
    _commit_other_file(repo)
    shallow = tmp_path / "shallow"
    _git(tmp_path, "clone", "-q", "--depth", "1", f"file://{repo}", str(shallow))

    result = _proto_check(shallow)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "git fetch --unshallow" in result.stderr


def test_fails_when_gen_is_stale(repo: Path) -> None:
    generated = repo / "gen/telemetry/v1/event_pb2.py"
    generated.write_text(generated.read_text() + "\n# edited by hand\n")

    result = _proto_check(repo)

    assert result.returncode != 0
    assert "gen/ is stale" in result.stderr
