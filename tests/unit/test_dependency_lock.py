"""`requirements.lock` pins every Python distribution the project installs: it agrees with
pyproject.toml's pins, the environment the tests run in is exactly the lock, and
`scripts/lock.py check` refuses (naming each difference) an environment or a lock that drifted."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.script_modules import load_script

ROOT = Path(__file__).resolve().parents[2]


lock = load_script("lock.py", "lock_script")


def _committed() -> dict[str, str]:
    return lock.parse_lock((ROOT / "requirements.lock").read_text())


def _pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_pyproject_pin_is_in_the_lock_at_the_same_version() -> None:
    pins = lock.direct_pins(_pyproject())
    assert "grpcio" in pins
    assert "pytest" in pins  # the dev extra counts too
    assert "opensearch-py" in pins  # `opensearch-py[async]`: the extra does not hide the pin
    assert lock.pyproject_disagreements(pins, _committed()) == []


def test_the_lock_holds_what_the_pins_pull_in_and_pip() -> None:
    committed = _committed()
    pins = lock.direct_pins(_pyproject())
    assert len(committed) > len(pins)
    for transitive in ("multidict", "h11", "googleapis-common-protos", "pip"):
        assert transitive in committed
        assert transitive not in pins


def test_this_environment_is_exactly_the_lock() -> None:
    assert lock.differences(_committed(), lock.installed(), ignore={lock.PROJECT}) == []


def test_check_refuses_an_environment_that_drifted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    committed = _committed()
    assert lock.main(["check"]) == 0
    drifted = dict(committed)
    drifted["multidict"] = "0.0.1"
    drifted["not-installed-anywhere"] = "1.0"
    del drifted["h11"]
    path = tmp_path / "requirements.lock"
    path.write_text(lock.render_lock(drifted))
    monkeypatch.setattr(lock, "LOCK", path)
    capsys.readouterr()
    assert lock.main(["check"]) == 1
    err = capsys.readouterr().err
    assert f"multidict: requirements.lock has 0.0.1, installed is {committed['multidict']}" in err
    assert "not-installed-anywhere==1.0 is in requirements.lock but not installed" in err
    assert f"h11=={committed['h11']} is installed but not in requirements.lock" in err
    # Nothing to do with pyproject.toml (a pull, or a package installed by hand): start over.
    assert "make lock" not in err
    assert "to install the virtualenv afresh: `rm -rf " in err


def test_prune_uninstalls_what_the_lock_does_not_list_but_pip_and_the_project(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # pip's --constraint installs never uninstall: a package a pull dropped from the lock (or
    # one installed by hand) failed `check` on every `make run` after.
    found = {**_committed(), "dropped-by-a-pull": "1.0", "Installed_By_Hand": "2.0"}
    found.update({lock.PROJECT: "0.1.0", "pip": "1.0"})
    found = {lock.canonical(name): version for name, version in found.items()}
    commands: list[list[str]] = []
    monkeypatch.setattr(lock, "installed", lambda: found)
    monkeypatch.setattr(lock.sys, "prefix", "/venv")
    monkeypatch.setattr(lock.sys, "base_prefix", "/usr")
    monkeypatch.setattr(
        lock.subprocess,
        "run",
        lambda argv, **_: commands.append(argv) or subprocess.CompletedProcess(argv, 0),
    )

    assert lock.main(["prune"]) == 0

    uninstall = [lock.sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet"]
    assert commands == [[*uninstall, "dropped-by-a-pull", "installed-by-hand"]]
    assert "does not list dropped-by-a-pull, installed-by-hand: uninstalling" in (
        capsys.readouterr().out
    )
    commands.clear()
    monkeypatch.setattr(lock, "installed", lambda: {**_committed(), lock.PROJECT: "0.1.0"})
    assert lock.main(["prune"]) == 0
    assert commands == []  # nothing to uninstall


def test_prune_refuses_to_run_outside_a_virtualenv(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(lock.sys, "prefix", "/usr")
    monkeypatch.setattr(lock.sys, "base_prefix", "/usr")
    monkeypatch.setattr(lock, "installed", lambda: {"someones-package": "1.0"})
    assert lock.main(["prune"]) == 1
    assert "prune uninstalls only from a virtualenv" in capsys.readouterr().err


def test_the_venv_is_pruned_to_the_lock_before_it_is_installed_and_checked() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("$(VENV_STAMP): pyproject.toml requirements.lock\n", 1)[1]
    steps = [line.strip() for line in recipe.split("\n\n", 1)[0].splitlines()]
    assert steps.index("$(PY) scripts/lock.py prune") < steps.index(
        "$(PY) -m pip install --quiet --constraint requirements.lock -e '.[dev]'"
    )
    assert steps[-2:] == ["$(PY) scripts/lock.py check", "touch $@"]


def test_check_refuses_a_lock_behind_a_pyproject_pin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    behind = dict(_committed())
    behind["grpcio"] = "1.0.0"
    path = tmp_path / "requirements.lock"
    path.write_text(lock.render_lock(behind))
    monkeypatch.setattr(lock, "LOCK", path)
    assert lock.main(["check"]) == 1
    pinned = lock.direct_pins(_pyproject())["grpcio"]
    assert (
        f"grpcio: pyproject.toml pins {pinned}, requirements.lock has 1.0.0"
        in capsys.readouterr().err
    )


def test_check_without_a_lock_says_how_to_make_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(lock, "LOCK", tmp_path / "requirements.lock")
    assert lock.main(["check"]) == 1
    assert "requirements.lock is missing; run `make lock`" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("grpcio>=1.0\n", "line 1: not `name==version`"),
        ("# header\n\nh11==0.16.0\nH11==0.16.0\n", "line 4: H11 is pinned twice"),
    ],
)
def test_a_malformed_lock_is_refused_with_its_line(text: str, message: str) -> None:
    with pytest.raises(lock.LockError, match=message):
        lock.parse_lock(text)


def test_names_compare_as_pip_compares_them() -> None:
    assert lock.parse_lock("Typing_Extensions==4.0\nzope.interface==6\n") == {
        "typing-extensions": "4.0",
        "zope-interface": "6",
    }


def test_an_unpinned_pyproject_requirement_is_refused() -> None:
    pyproject = {"project": {"dependencies": ["grpcio==1.0"], "optional-dependencies": {}}}
    assert lock.direct_pins(pyproject) == {"grpcio": "1.0"}
    pyproject["project"]["optional-dependencies"] = {"dev": ["pytest>=8"]}  # type: ignore[index]
    with pytest.raises(lock.LockError, match=r"'pytest>=8' is not pinned with `==`"):
        lock.direct_pins(pyproject)


def test_write_reports_what_moved() -> None:
    before = {"a": "1", "b": "1", "c": "1"}
    after = {"a": "1", "b": "2", "d": "1"}
    assert lock.changes(before, after) == ["  b 1 -> 2", "- c==1", "+ d==1"]
    text = lock.render_lock(after)
    assert text.startswith("# ")
    assert lock.parse_lock(text) == after
