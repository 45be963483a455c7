"""The indexer: enriched events from JetStream into OpenSearch, and gRPC QueryService over them.

Public surface: `Config`, `Indexer` (start/stop/ready) and `main` (the command line).
"""

from indexer.config import Config
from indexer.service import Indexer

__all__ = ["Config", "Indexer", "main"]


def main(argv: list[str] | None = None) -> int:
    """Runs the indexer until SIGTERM/SIGINT; see `python -m indexer --help`."""
    from indexer.__main__ import main as _main

    return _main(argv)
