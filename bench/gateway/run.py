"""Gateway load benchmark: 100-event batches over many connections, with JetStream acks.

Starts a private nats-server and `python -m gateway` as a subprocess, posts batches of
the original Swift client's shape from an aiohttp load generator, and prints accepted
events/s and p50/p99 latency. In the same run it measures the in-process handler ceiling
(JSON parse + validation + RawBatch build + serialisation + batch id, no network) and the
raw JetStream publish rate of the same payload, and prints the ratios.

    python bench/gateway/run.py [--duration 10] [--connections 64] [--batch 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

import aiohttp  # noqa: E402 (after the path set-up)
import nats  # noqa: E402
import orjson  # noqa: E402
from telemetry.v1 import event_pb2  # noqa: E402

from gateway._ingest import IngestCore, Origin  # noqa: E402
from gateway._metrics import Metrics  # noqa: E402
from gateway._validate import Limits  # noqa: E402
from gateway.config import GatewayConfig  # noqa: E402
from pipeline import natsconn, subjects  # noqa: E402
from pipeline.config import load  # noqa: E402
from pipeline.settings import NatsSettings  # noqa: E402
from tests.servers import NatsProcess, free_port  # noqa: E402

WRITE_KEY = "bench-write-key"


def make_batch(size: int) -> bytes:
    """A batch shaped like the original Swift client's, `size` events."""
    events = []
    for n in range(size):
        events.append(
            {
                "event_id": f"7f9c2ba4-e88f-11ed-a05b-{n:012d}",
                "session_id": "sess-42",
                "user_id": f"user-{n % 17}",
                "event_name": ("item_purchased", "screen_view", "tap")[n % 3],
                "client_timestamp": f"2023-10-26T10:{n // 60 % 60:02d}:{n % 60:02d}.250Z",
                "app_version": "2.3.1",
                "device_os": "iOS 17.2",
                "metadata": {"item_id": f"sku-{n}", "price": "19.99", "screen": "checkout"},
            }
        )
    return orjson.dumps(events)


class _NullPublisher:
    """An instant broker that keeps the last payload."""

    max_payload = 1024 * 1024
    last = b""

    async def publish(self, subject: str, payload: bytes, *, msg_id: str) -> bool:
        self.last = payload
        return False


ORIGIN = Origin(
    app_id="bench",
    client_ip="127.0.0.1",
    user_agent="bench",
    request_id="r",
    protocol=event_pb2.INGEST_PROTOCOL_HTTP_JSON,
    received_at=time.time(),
)


def _core(publisher: _NullPublisher) -> IngestCore:
    return IngestCore(
        publisher=publisher,
        limits=Limits.from_config(load(GatewayConfig, {})),
        metrics=Metrics(),
        max_in_flight=1,
    )


async def published_payload(body: bytes) -> bytes:
    """The RawBatch the gateway publishes for `body`."""
    publisher = _NullPublisher()
    await _core(publisher).ingest_json(body, ORIGIN)
    return publisher.last


async def handler_ceiling(body: bytes, seconds: float) -> float:
    """Batches/s through the ingest core with an instant broker (one core, no network)."""
    core = _core(_NullPublisher())
    origin = ORIGIN
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(50):
            receipt = await core.ingest_json(body, origin)
            assert receipt.accepted > 0
        done += 50
    return done / (time.perf_counter() - started)


async def jetstream_ceiling(url: str, payload: bytes, connections: int, seconds: float) -> float:
    """Acked publishes/s of one RawBatch-sized payload straight from nats-py, same concurrency."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    count = 0
    stop_at = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal count
        n = 0
        while time.perf_counter() < stop_at:
            await js.publish(
                "telemetry.raw.v1.bench-raw",
                payload,
                stream=subjects.RAW_STREAM,
                headers={subjects.MSG_ID_HEADER: f"raw-{w}-{n}"},
            )
            n += 1
            count += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(connections)))
    rate = count / (time.perf_counter() - started)
    await nc.close()
    return rate


async def offer_load(
    url: str, body: bytes, *, connections: int, seconds: float, warmup: float
) -> tuple[int, int, list[float], dict[int, int]]:
    """(accepted events, requests, latencies in s, statuses) over `seconds` after a warm-up."""
    accepted = 0
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = 0
    connector = aiohttp.TCPConnector(limit=connections)
    measure_from = time.perf_counter() + warmup
    stop_at = measure_from + seconds
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal accepted, counter
            while time.perf_counter() < stop_at:
                counter += 1
                headers = {
                    "Content-Type": "application/json",
                    "X-Api-Key": WRITE_KEY,
                    "Idempotency-Key": f"bench-{counter}",
                }
                sent = time.perf_counter()
                async with session.post(f"{url}/v1/track", data=body, headers=headers) as resp:
                    answer = await resp.read()
                    status = resp.status
                done = time.perf_counter()
                if sent < measure_from:
                    continue
                statuses[status] = statuses.get(status, 0) + 1
                latencies.append(done - sent)
                if status == 202:
                    accepted += orjson.loads(answer)["accepted"]

        await asyncio.gather(*(worker() for _ in range(connections)))
    return accepted, len(latencies), latencies, statuses


async def wait_ready(url: str) -> None:
    """Until 20 new connections in a row find a ready worker (so every worker is ready)."""
    in_a_row = 0
    deadline = time.monotonic() + 30
    while in_a_row < 20:
        if time.monotonic() > deadline:
            raise SystemExit("gateway did not become ready")
        try:
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
                session.get(f"{url}/readyz") as resp,
            ):
                in_a_row = in_a_row + 1 if resp.status == 200 else 0
        except aiohttp.ClientError:
            in_a_row = 0
        if not in_a_row:
            await asyncio.sleep(0.1)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--batch", type=int, default=100, help="events per batch")
    parser.add_argument("--workers", type=int, default=1, help="GATEWAY_WORKERS")
    args = parser.parse_args()
    os.environ.setdefault("NATS_SERVER_BIN", "/tmp/probe/bin/nats-server")

    body = make_batch(args.batch)
    print(f"batch: {args.batch} events, {len(body)} bytes of JSON; cpus: {os.cpu_count()}")
    ceiling = await handler_ceiling(body, 3.0)
    print(
        f"in-process handler ceiling: {ceiling:,.0f} batches/s = "
        f"{ceiling * args.batch:,.0f} events/s (one core, no network)"
    )

    with tempfile.TemporaryDirectory() as tmp:
        server = NatsProcess(Path(tmp) / "nats")
        server.start()
        try:
            settings = load(NatsSettings, {"NATS_URL": server.url})
            nc = await nats.connect(server.url)
            await natsconn.ensure_streams(nc.jetstream(), settings)
            await nc.close()
            port = free_port()
            env = {
                **os.environ,
                "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen'}",
                "NATS_URL": server.url,
                "GATEWAY_HTTP_PORT": str(port),
                "GATEWAY_GRPC_PORT": str(free_port()),
                "GATEWAY_WRITE_KEYS": f"{WRITE_KEY}:bench",
                "GATEWAY_MAX_IN_FLIGHT": str(max(512, args.connections * 2)),
                "LOG_LEVEL": "WARNING",
                "GATEWAY_WORKERS": str(args.workers),
            }
            # The gateway runs in its own process, as in production: one worker, one core.
            proc = subprocess.Popen(  # noqa: ASYNC220 (started once, before the measurement)
                [sys.executable, "-m", "gateway"], env=env, cwd=ROOT
            )
            try:
                url = f"http://127.0.0.1:{port}"
                await wait_ready(url)
                accepted, requests, latencies, statuses = await offer_load(
                    url,
                    body,
                    connections=args.connections,
                    seconds=args.duration,
                    warmup=args.warmup,
                )
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            payload = await published_payload(body)
            js_rate = await jetstream_ceiling(server.url, payload, args.connections, 3.0)
        finally:
            server.stop()

    rate = accepted / args.duration
    print(
        f"gateway ({args.workers} worker(s), JetStream acks, {args.connections} connections): "
        f"{rate:,.0f} accepted events/s, {requests / args.duration:,.0f} requests/s"
    )
    if latencies:
        print(
            f"latency p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
            f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms, "
            f"mean {statistics.fmean(latencies) * 1000:.1f} ms; statuses {statuses}"
        )
    print(
        f"raw JetStream publish ceiling (nats-py, same payload size and concurrency): "
        f"{js_rate:,.0f} batches/s = {js_rate * args.batch:,.0f} events/s"
    )
    print(f"ratio gateway / in-process handler ceiling: {rate / (ceiling * args.batch):.2f}")
    print(f"ratio gateway / raw JetStream publish ceiling: {rate / (js_rate * args.batch):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
