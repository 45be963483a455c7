"""`python -m gateway`: runs the gateway until SIGTERM/SIGINT."""

from __future__ import annotations

import sys

from gateway._auth import KeyStore
from gateway._service import Gateway
from gateway._workers import supervise
from gateway.config import GatewayConfig
from pipeline import logs, service
from pipeline.config import help_text, load
from pipeline.console import print_out
from pipeline.errors import ConfigError

USAGE = "usage: tpipe gateway [--help]   (also: python -m gateway)"


def main(argv: list[str] | None = None) -> int:
    """Runs the gateway; 0 on a clean stop, 2 on bad settings, 3 when it cannot listen."""
    args = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in args):
        print_out(
            f"{USAGE}\n"
            "Telemetry gateway: POST /v1/track, gRPC/Connect IngestService, GET /v1/events.\n\n"
            f"{help_text(GatewayConfig, 'Settings')}"
        )
        return 0
    if args:
        print(f"gateway: unexpected arguments: {' '.join(args)}\n{USAGE}", file=sys.stderr)
        return 2
    try:
        config = load(GatewayConfig)
        keys = KeyStore.from_config(config)
    except ConfigError as err:
        print(f"gateway: {err}", file=sys.stderr)
        return 2
    if config.http_port and config.http_port == config.grpc_port:
        # Each would take the other's connections: under GATEWAY_WORKERS both binds share it.
        print(
            f"gateway: GATEWAY_HTTP_PORT and GATEWAY_GRPC_PORT are both {config.http_port}:"
            " give each server a port of its own",
            file=sys.stderr,
        )
        return 2
    logs.configure("gateway", level=config.log_level, fmt=config.log_format)
    if not len(keys):
        print(
            "gateway: no keys configured (GATEWAY_WRITE_KEYS / GATEWAY_KEYS_FILE)", file=sys.stderr
        )
        return 2
    if config.workers > 1:
        return supervise(config)
    return service.run(lambda: Gateway(config, keys=keys), name="gateway")


if __name__ == "__main__":
    sys.exit(main())
