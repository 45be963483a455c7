"""The enricher: consumes raw batches from JetStream, enriches every event, publishes them.

Public surface: `Config` (settings), `Enricher` (the service), `enrich_batch`
with `EnrichOptions` (the pure enrichment, also behind gRPC EnrichService),
`main` (the command line) and the exception root `EnricherError`.
"""

from enricher._enrich import EnrichOptions, enrich_batch
from enricher._service import Enricher
from enricher.config import Config
from enricher.errors import EnricherError

__all__ = ["Config", "EnrichOptions", "Enricher", "EnricherError", "enrich_batch", "main"]


def main(argv: list[str] | None = None) -> int:
    """Runs the enricher until SIGTERM/SIGINT; see `python -m enricher --help`."""
    from enricher._cli import main as cli_main

    return cli_main(argv)
