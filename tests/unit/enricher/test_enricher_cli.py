"""`python -m enricher`: help, bad settings, bad arguments."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from enricher import main
from enricher.config import Config
from tests.servers import ROOT


def test_help_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tpipe enricher [--help]   (also: python -m enricher)")
    for field in dataclasses.fields(Config):
        assert field.metadata["env"] in out


def test_bad_setting_is_one_line_naming_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENRICHER_FETCH_BATCH", "zero")
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "ENRICHER_FETCH_BATCH" in err


def test_unexpected_argument_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--verbose"]) == 2
    assert "--verbose" in capsys.readouterr().err


def test_unusable_geoip_database_exits_2_naming_the_setting(tmp_path: object) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen'}",
        "ENRICHER_GEOIP_DB": "/nonexistent/city.mmdb",
        "ENRICHER_HTTP_PORT": "0",
        "ENRICHER_GRPC_PORT": "0",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "enricher"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "ENRICHER_GEOIP_DB" in proc.stderr.splitlines()[-1]


def test_module_entry_point_prints_help() -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen'}"}
    proc = subprocess.run(
        [sys.executable, "-m", "enricher", "--help"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0
    assert "ENRICHER_GEOIP_DB" in proc.stdout
