"""Prints the README's configuration table from the services' settings declarations.

    .local/venv/bin/python scripts/settings_table.py            print the table
    .local/venv/bin/python scripts/settings_table.py --write    replace it in README.md

A test checks that README.md holds exactly this table, so the docs follow the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

from enricher.config import Config as EnricherConfig
from gateway.config import GatewayConfig
from indexer.config import Config as IndexerConfig
from pipeline.config import describe

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN = "<!-- settings-table:begin (scripts/settings_table.py --write) -->"
END = "<!-- settings-table:end -->"
SERVICES = {"gateway": GatewayConfig, "enricher": EnricherConfig, "indexer": IndexerConfig}


def table() -> str:
    """One row per variable: which services read it, its default and what it does."""
    rows: dict[str, tuple[list[str], str, str]] = {}
    for service, config in SERVICES.items():
        for name, default, text in describe(config):
            users = rows.setdefault(name, ([], default, text))[0]
            users.append(service)
    lines = ["| variable | read by | default | meaning |", "|---|---|---|---|"]
    shared = [name for name, (users, _, _) in rows.items() if len(users) > 1]
    own = [name for name in rows if name not in shared]
    for name in [*shared, *own]:
        users, default, text = rows[name]
        who = "all" if len(users) == len(SERVICES) else ", ".join(users)
        shown = f"`{default}`" if default else "(empty)"
        lines.append(f"| `{name}` | {who} | {shown} | {text.replace('|', '/')} |")
    return "\n".join(lines)


def readme_table(text: str) -> str:
    """The table currently between the markers of README.md."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[start:end].strip()


def main() -> int:
    if sys.argv[1:] == ["--write"]:
        text = README.read_text()
        start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
        README.write_text(f"{text[:start]}\n{table()}\n{text[end:]}")
        return 0
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
