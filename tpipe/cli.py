"""`tpipe <command> [--help]`: the services, and the commands people use.

`tpipe gateway|enricher|indexer` starts a service; each reads its settings from
environment variables and `tpipe <service> --help` lists them with their defaults.
`tpipe query|aggregate|tail|send|loadgen|dlq|status` are the people commands (see
`tpipe <command> --help` for options and examples).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from pipeline.console import print_out
from tpipe import _commands

SERVICES = {
    "gateway": "HTTP/JSON and gRPC ingest into JetStream, JSON query routes",
    "enricher": "enriches raw batches (time, clock skew, geo, OS) into the enriched stream",
    "indexer": "bulk-loads enriched events into OpenSearch and serves gRPC QueryService",
}

USAGE = (
    "usage: tpipe <command> [--help]\n\nservices:\n"
    + "\n".join(f"  {name:<10} {text}" for name, text in SERVICES.items())
    + "\n\ncommands:\n"
    + "\n".join(f"  {name:<10} {text}" for name, (_, text) in _commands.COMMANDS.items())
    + "\n\n"
    + _commands.EXIT_CODES
)


def _service_main(name: str) -> Callable[[list[str] | None], int]:
    module = importlib.import_module(f"{name}.__main__")
    entry: Callable[[list[str] | None], int] = module.main
    return entry


def main(argv: list[str] | None = None) -> int:
    """Dispatches to a service's own `main` or to a people command; returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print_out(USAGE)
        return 0
    command, rest = args[0], args[1:]
    if command in SERVICES:
        return _service_main(command)(rest)
    if command in _commands.COMMANDS:
        return _commands.run(args)
    print(f"tpipe: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2
