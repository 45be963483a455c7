"""Every JSON, Connect and gRPC route of the gateway refuses a missing key, a wrong key and a
key of the other kind (write vs read); per-key rate limits answer 429 to that key only."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import httpx
import orjson
import pytest
from telemetry.v1 import event_pb2, ingest_service_pb2, ingest_service_pb2_grpc

from tests.faults.harness import make_batch
from tests.procs import APP_ID, READ_KEY, WRITE_KEY, Pipeline
from tests.servers import NatsProcess

pytestmark = pytest.mark.integration

WRONG_KEY = "not-a-key-" + "x" * 20

# (method, path, kind of key the route needs)
JSON_ROUTES = [
    ("POST", "/v1/track", "write"),
    ("POST", "/telemetry.v1.IngestService/IngestEvents", "write"),
    ("GET", "/v1/events", "read"),
    ("GET", "/v1/events/aggregate", "read"),
]


def _request(base: str, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    body = orjson.dumps({"events": make_batch(1, "auth")}) if method == "POST" else None
    return httpx.request(
        method,
        f"{base}{path}",
        content=body,
        headers={"Content-Type": "application/json", **headers},
        timeout=30,
    )


@pytest.mark.parametrize(("method", "path", "kind"), JSON_ROUTES)
@pytest.mark.parametrize("how", ["bearer", "x-api-key"])
def test_security_http_routes_refuse_bad_keys(
    secured: Pipeline, method: str, path: str, kind: str, how: str
) -> None:
    base = secured.gateway.base_url
    other = READ_KEY if kind == "write" else WRITE_KEY
    right = WRITE_KEY if kind == "write" else READ_KEY

    def header(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"} if how == "bearer" else {"X-Api-Key": key}

    missing = _request(base, method, path, {})
    wrong = _request(base, method, path, header(WRONG_KEY))
    crossed = _request(base, method, path, header(other))
    allowed = _request(base, method, path, header(right))

    assert (missing.status_code, wrong.status_code, crossed.status_code) == (401, 401, 403)
    for refused in (missing, wrong, crossed):
        assert refused.json()["code"] in ("unauthenticated", "permission_denied")
        assert WRONG_KEY not in refused.text
        assert other not in refused.text
    # The right key passes the same route (so the refusals above are about the key).
    assert allowed.status_code in (200, 202), allowed.text


def _ingest(pipeline: Pipeline, metadata: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
    event = event_pb2.Event(
        event_id=str(uuid.uuid4()), session_id="s", user_id="u", event_name="grpc_auth"
    )
    event.client_timestamp.GetCurrentTime()
    request = ingest_service_pb2.IngestEventsRequest(events=[event])
    with grpc.insecure_channel(f"127.0.0.1:{pipeline.gateway_grpc_port}") as channel:
        stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
        try:
            stub.IngestEvents(request, metadata=metadata, timeout=30)
        except grpc.RpcError as err:
            code: grpc.StatusCode = err.code()
            return code
    return grpc.StatusCode.OK


def test_security_grpc_ingest_refuses_bad_keys(secured: Pipeline) -> None:
    assert _ingest(secured, ()) is grpc.StatusCode.UNAUTHENTICATED
    assert _ingest(secured, (("authorization", f"Bearer {WRONG_KEY}"),)) is (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert _ingest(secured, (("x-api-key", WRONG_KEY),)) is grpc.StatusCode.UNAUTHENTICATED
    assert _ingest(secured, (("authorization", f"Bearer {READ_KEY}"),)) is (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert _ingest(secured, (("authorization", f"Bearer {WRITE_KEY}"),)) is grpc.StatusCode.OK


def test_security_rate_limit_is_per_app(tmp_path: Path, opensearch_url: str) -> None:
    nats = NatsProcess(tmp_path / "nats")
    nats.start()
    other_key = "second-write-key-0123456789"
    rotated_key = "rotated-write-key-0123456789"
    pipeline = Pipeline(
        nats_url=nats.url,
        opensearch_url=opensearch_url,
        index_prefix=f"sec-rl-{uuid.uuid4().hex[:8]}-",
        log_dir=tmp_path,
        overrides={
            "gateway": {
                "GATEWAY_WRITE_KEYS": (
                    f"{WRITE_KEY}:{APP_ID},{rotated_key}:{APP_ID},{other_key}:other-app"
                ),
                # One token per 20 s: none comes back while the test runs, however slowly.
                "GATEWAY_RATE_LIMIT_RPS": "0.05",
                "GATEWAY_RATE_LIMIT_BURST": "5",
                "GATEWAY_RETRY_AFTER_S": "2",
            }
        },
    )
    gateway = pipeline.gateway
    try:
        gateway.start()
        url = f"{gateway.base_url}/v1/track"

        def post(key: str) -> httpx.Response:
            return httpx.post(
                url,
                content=orjson.dumps(make_batch(1, "rate")),
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            )

        first = [post(WRITE_KEY) for _ in range(20)]
        statuses = [r.status_code for r in first]
        assert statuses[:5] == [202] * 5  # the burst
        limited = [r for r in first if r.status_code == 429]
        assert len(limited) >= 14  # all but the burst (and at most one refill)
        # Retry-After is the wait for the next token (up to 20 s, shrinking as it nears),
        # not GATEWAY_RETRY_AFTER_S.
        waits = [int(r.headers["retry-after"]) for r in limited]
        assert all(1 <= wait <= 20 for wait in waits), waits
        assert waits == sorted(waits, reverse=True)
        assert waits[0] > 2
        assert all(r.json()["code"] == "resource_exhausted" for r in limited)
        # A second key of the same app shares its bucket (rotating keys does not double
        # a rate, and the answer names the app); another app's key is not limited.
        rotated = post(rotated_key)
        assert rotated.status_code == 429
        assert APP_ID in rotated.json()["message"]
        assert post(other_key).status_code == 202
    finally:
        gateway.terminate()
        nats.stop()
