"""The README says what the code does: its settings table is the one the code declares."""

from __future__ import annotations

from pathlib import Path

from scripts import settings_table

ROOT = Path(__file__).resolve().parents[2]


def test_readme_lists_every_setting_as_the_code_declares_it() -> None:
    tool = settings_table
    expected = tool.table()
    assert "`GATEWAY_HTTP_PORT`" in expected
    assert "`INDEXER_INDEX_PREFIX`" in expected
    current = tool.readme_table((ROOT / "README.md").read_text())
    assert current == expected, "README.md is stale: run scripts/settings_table.py --write"


def test_readme_names_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert "make run" in text
    assert "make test" in text
