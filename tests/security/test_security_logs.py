"""Keys and client IPs never reach a service's log in clear, whatever the request did."""

from __future__ import annotations

import asyncio
import time

import httpx
import nats
import orjson
import pytest
from telemetry.v1 import event_pb2

from pipeline import subjects
from tests.faults.harness import make_batch, settle
from tests.procs import APP_ID, READ_KEY, WRITE_KEY, Pipeline

pytestmark = pytest.mark.integration

CLIENT_IP = "203.0.113.77"  # TEST-NET-3: appears nowhere unless we send it
WRONG_KEY = "wrong-key-fedcba9876543210"


async def _last_raw_client_ip(url: str) -> str:
    nc = await nats.connect(url)
    try:
        raw = await nc.jetstream().get_last_msg(subjects.RAW_STREAM, subjects.raw_subject(APP_ID))
    finally:
        await nc.close()
    return str(event_pb2.RawBatch.FromString(raw.data or b"").context.client_ip)


def test_security_keys_and_client_ips_stay_out_of_logs(secured: Pipeline) -> None:
    base = secured.gateway.base_url
    forwarded = {"X-Forwarded-For": CLIENT_IP}
    batch = make_batch(5, "logs")
    accepted = httpx.post(
        f"{base}/v1/track",
        content=orjson.dumps(batch),
        headers={"Authorization": f"Bearer {WRITE_KEY}", **forwarded},
        timeout=30,
    )
    assert accepted.status_code == 202, accepted.text
    # Requests that fail in every way a log might want to explain.
    attempts = [
        ("POST", "/v1/track", {"Authorization": f"Bearer {WRONG_KEY}"}, b"[]"),
        ("POST", "/v1/track", {"X-Api-Key": READ_KEY}, b"[]"),
        ("POST", "/v1/track", {"Authorization": f"Bearer {WRITE_KEY}"}, b"{not json"),
        ("POST", "/v1/track", {"Authorization": f"Bearer {WRITE_KEY}"}, b"\x1f\x8b broken"),
        ("GET", "/v1/events?page_size=-1", {"Authorization": f"Bearer {READ_KEY}"}, b""),
        ("GET", "/v1/events?user_id=u", {"X-Api-Key": WRITE_KEY}, b""),
    ]
    for method, path, headers, body in attempts:
        answer = httpx.request(
            method,
            f"{base}{path}",
            content=body or None,
            headers={**headers, **forwarded, "Content-Encoding": "gzip"}
            if body.startswith(b"\x1f")
            else {**headers, **forwarded},
            timeout=30,
        )
        assert 400 <= answer.status_code < 500, (path, answer.status_code, answer.text)
    # The accepted events went all the way, through every service's code.
    verdict = settle(
        secured.opensearch_url, secured.index_prefix, {e["event_id"] for e in batch}, 60
    )
    assert verdict.lost == []
    # The IP did reach the pipeline (so its absence from the logs means something).
    assert asyncio.run(_last_raw_client_ip(secured.nats_url)) == CLIENT_IP
    time.sleep(1.0)  # let the services' log handlers flush

    secrets = {
        "write key": WRITE_KEY,
        "read key": READ_KEY,
        "wrong key": WRONG_KEY,
        "client ip": CLIENT_IP,
    }
    logs = {path.name: path.read_text(errors="replace") for path in secured.log_files}
    assert len(logs) == 3
    assert all(logs.values()), "every service wrote a log"
    leaks = [
        f"{what} in {name}"
        for name, text in logs.items()
        for what, secret in secrets.items()
        if secret in text or secret[:-4] in text
    ]
    print(f"log files scanned: {sorted(logs)}; {sum(len(t) for t in logs.values())} bytes")
    assert leaks == []
