"""`python -m indexer`: run the indexer; `--help` lists every setting."""

from __future__ import annotations

import gc
import sys

from indexer.config import Config
from indexer.service import Indexer
from pipeline import logs
from pipeline.config import help_text, load
from pipeline.console import print_out
from pipeline.errors import ConfigError
from pipeline.service import run

GC_YOUNG_THRESHOLD = 50_000  # allocations between young-generation collections
USAGE = (
    "usage: tpipe indexer [--help]   (also: python -m indexer)\n\n"
    "Indexes enriched events into OpenSearch and serves gRPC QueryService."
)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 for bad settings or arguments, 3 when it
    cannot listen)."""
    args = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in args):
        print_out(f"{USAGE}\n\n{help_text(Config, 'Settings')}")
        return 0
    if args:
        print(f"indexer: unexpected arguments: {' '.join(args)}", file=sys.stderr)
        print(USAGE, file=sys.stderr)
        return 2
    try:
        config = load(Config)
    except ConfigError as err:
        print(f"indexer: {err}", file=sys.stderr)
        return 2
    logs.configure("indexer", level=config.log_level, fmt=config.log_format)
    # Every event allocates a few short-lived dicts and strings and no cycles: collect the
    # young generation less often, and never rescan what was loaded at start.
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    return run(lambda: Indexer(config), name="indexer")


if __name__ == "__main__":
    sys.exit(main())
