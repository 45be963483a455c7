"""The gateway: Swift-compatible JSON ingest, gRPC and Connect IngestService, query routes.

Batches are validated per event, made durable in JetStream (TELEMETRY_RAW) and only
then acknowledged. `python -m gateway --help` lists the settings.

Contract notes:
- A batch whose events are all invalid is answered 202 with `accepted: 0` and every
  rejection listed: the request was understood and judged, and retrying it cannot help.
- A retry (same Idempotency-Key, or the same body, per app) is recognised by JetStream's
  duplicate window (STREAM_DUPLICATE_WINDOW_S) and answered 202 with `duplicate: true`.
- Metadata numbers and booleans become strings as Go's fmt %v printed them (true ->
  "true", 2.5 -> "2.5", 1e21 -> "1e+21"), except integers, which keep all their digits
  (the original decoded them as float64 and printed 1000000 as "1e+06").
- The Connect protocol (unary, JSON and binary) is implemented here in `_connect`.
"""

from gateway._service import Gateway
from gateway.config import GatewayConfig
from gateway.errors import GatewayError

__all__ = ["Gateway", "GatewayConfig", "GatewayError"]
