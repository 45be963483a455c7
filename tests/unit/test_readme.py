"""The README says what the code does: its settings table is the one the code declares."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from enricher.config import DEFAULT_EVENT_MESSAGE_MAX_CHARS
from gateway import _query
from gateway._openapi import document
from indexer import paging, queries
from scripts import settings_table
from tests.script_modules import load_script

ROOT = Path(__file__).resolve().parents[2]


def test_readme_lists_every_setting_as_the_code_declares_it() -> None:
    tool = settings_table
    expected = tool.table()
    assert "`GATEWAY_HTTP_PORT`" in expected
    assert "`INDEXER_INDEX_PREFIX`" in expected
    current = tool.readme_table((ROOT / "README.md").read_text())
    assert current == expected, "README.md is stale: run scripts/settings_table.py --write"


def test_what_free_text_search_reaches_is_said_with_the_enrichers_default() -> None:
    """q and EventFilter.text search event_message, which the enricher cuts: the README, the
    OpenAPI document and the proto say so, with the default the enricher has."""
    bound = f"`ENRICHER_EVENT_MESSAGE_MAX_CHARS` characters ({DEFAULT_EVENT_MESSAGE_MAX_CHARS:,}"
    assert bound in (ROOT / "README.md").read_text()
    params = document()["paths"]["/v1/events"]["get"]["parameters"]
    (q,) = [param for param in params if param["name"] == "q"]
    proto = (ROOT / "protos" / "telemetry" / "v1" / "query_service.proto").read_text()
    for text in (q["description"], " ".join(proto.split("//"))):
        assert bound.replace("`", "") in " ".join(text.split())


def test_the_openapi_document_gives_the_indexers_paging_and_limits() -> None:
    """The gateway cannot import the indexer: its OpenAPI document writes the indexer's
    defaults and bounds as numbers, checked here against the indexer's own."""
    described = {
        (path, param["name"]): " ".join(param["description"].split())
        for path, item in document()["paths"].items()
        for operation in item.values()
        for param in operation["parameters"]
    }
    page_size = described[("/v1/events", "page_size")]
    assert f"0 means {paging.DEFAULT_PAGE_SIZE}," in page_size
    assert f"more than {paging.MAX_PAGE_SIZE} is taken as {paging.MAX_PAGE_SIZE}" in page_size
    limit = described[("/v1/events/aggregate", "limit")]
    assert f"0 means {queries.DEFAULT_LIMIT}," in limit
    assert f"more than {queries.MAX_LIMIT} is taken as {queries.MAX_LIMIT}" in limit
    for path in ("/v1/events", "/v1/events/aggregate"):
        assert f"at most {queries.MAX_FILTER_VALUES:,} values" in described[(path, "user_id")]
        assert f"At most {queries.MAX_TEXT_CHARS:,} characters" in described[(path, "q")]
    assert _query.MAX_TEXT_CHARS == queries.MAX_TEXT_CHARS  # the gateway refuses a longer q


def test_readme_names_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert "make run" in text
    assert "make test" in text


def test_the_readme_shows_what_make_run_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sample after "make run returns once everything answers" is local.py's output for
    the dev profile, but for what differs from run to run (pids, keys, event id, time)."""
    local = load_script("local.py", "local_script_readme")
    monkeypatch.setattr(local, "LOCAL", tmp_path / ".local")
    monkeypatch.setattr(local, "running_pid", lambda proc: 4242)
    profile = local.PROFILES["dev"]
    local.print_running(local.managed_processes(profile))
    local.print_usage(profile)
    printed = capsys.readouterr().out.replace(f"{tmp_path}/", "")
    tpipe = local.relative(Path(sys.executable).parent / "tpipe")  # where this venv is
    printed = printed.replace(tpipe, ".local/venv/bin/tpipe")

    text = (ROOT / "README.md").read_text()
    start = text.index("```\nRunning (profile dev):") + len("```\n")
    sample = text[start : text.index("```", start)]

    def varying(output: str) -> str:
        for pattern, stand_in in (
            (r"pid \d+ +", "pid PID "),
            (r"\b(wk|rk)_[A-Za-z0-9_-]+", r"\1_KEY"),
            (r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", "UUID"),
            (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "TIME"),
        ):
            output = re.sub(pattern, stand_in, output)
        return output

    assert varying(sample) == varying(printed.lstrip("\n"))
