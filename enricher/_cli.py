"""`python -m enricher` / `tpipe enricher`: settings from the environment, run until a signal."""

from __future__ import annotations

import sys

from enricher._service import NAME, Enricher
from enricher.config import Config
from enricher.errors import EnricherError
from pipeline import logs
from pipeline.config import help_text, load
from pipeline.console import print_out
from pipeline.errors import ConfigError
from pipeline.service import run

USAGE = (
    "usage: tpipe enricher [--help]   (also: python -m enricher)\n"
    "Consumes TELEMETRY_RAW, enriches every event, publishes TELEMETRY_ENRICHED;\n"
    "serves gRPC EnrichService and /healthz /readyz /metrics. Settings come from\n"
    "the environment."
)

EXIT_OK = 0
EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    """Parses the arguments, loads the settings and runs; returns the exit status (2 for bad
    settings or arguments, 3 when it cannot listen)."""
    args = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in args):
        print_out(f"{USAGE}\n\n{help_text(Config, 'Settings')}")
        return EXIT_OK
    if args:
        print(f"enricher: unexpected argument {args[0]!r}", file=sys.stderr)
        print(USAGE, file=sys.stderr)
        return EXIT_USAGE
    try:
        config = load(Config)
    except ConfigError as err:
        print(f"enricher: {err}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(NAME, level=config.log_level, fmt=config.log_format)
    try:
        return run(lambda: Enricher(config), name=NAME)
    except EnricherError as err:  # its GeoIP data unusable
        print(f"enricher: {err}", file=sys.stderr)
        return EXIT_USAGE
