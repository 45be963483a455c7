"""Enricher benchmark: events/s enriched per process, without and with NATS.

1. Pure path, no I/O, over prepared RawBatch messages of `--events` events each:
   decode + enrich to bytes (what the consumer does per message), against a baseline
   measured in the same run: decode + serialise alone (the protobuf floor). Also the
   gRPC path (decoded input, enriched to a message).
2. Through a private nats-server: `--messages` raw batches are stored first, then the
   enricher (in this process) consumes them: fetch, enrich, publish with PubAck, ack.
   Baseline in the same run: the same fetch loop and handler shape republishing the raw
   bytes untouched (broker cost with zero enrichment).

    python bench/enricher/run.py [--events 100] [--messages 2000] [--rounds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

import nats  # noqa: E402 (after the path set-up)
from nats.js import JetStreamContext  # noqa: E402
from nats.js.errors import NotFoundError  # noqa: E402
from telemetry.v1 import event_pb2  # noqa: E402

from enricher import Config, Enricher, EnrichOptions, enrich_batch  # noqa: E402
from enricher._enrich import enrich_batch_bytes  # noqa: E402
from enricher._geo import OfflineGeo  # noqa: E402
from enricher._handler import Delivery  # noqa: E402
from enricher._nats import ConsumerSettings, FetchLoop, bind_consumer  # noqa: E402
from pipeline import natsconn, subjects  # noqa: E402
from pipeline.config import load  # noqa: E402
from tests.servers import NatsProcess  # noqa: E402

TARGET_EVENTS_PER_S = 50_000
PREPARED_BATCHES = 200
DEVICES = ("iOS 17.2", "iOS 17.1.2", "iPadOS 17.0.1", "iOS 16.7", "watchOS 10")
IPS = ("81.2.69.142", "8.8.8.8", "2a00:1450:4009:81f::200e", "10.0.0.1", "203.0.113.9")


def _raw(seed: int, events: int) -> bytes:
    # Times as the gateway and the Swift client write them: the receipt to the nanosecond,
    # the client's times to the millisecond, each batch and event at its own instant.
    received, received_nanos = divmod(time.time_ns(), 1_000_000_000)
    raw = event_pb2.RawBatch()
    ctx = raw.context
    ctx.received_at.seconds = received
    ctx.received_at.nanos = received_nanos
    ctx.sent_at.seconds = received + (seed % 7) - 3
    ctx.sent_at.nanos = (seed * 7919) % 1000 * 1_000_000
    ctx.client_ip = IPS[seed % len(IPS)]
    ctx.user_agent = "ShopApp/1.0 CFNetwork/1492 Darwin/23.2.0"
    ctx.app_id = "shop"
    ctx.request_id = f"req-{seed}"
    ctx.batch_id = f"batch-{seed}"
    for i in range(events):
        event = raw.events.add(
            event_id=f"{seed:08x}-{i:04x}-4000-8000-000000000000",
            session_id=f"session-{seed}",
            user_id=f"user-{seed % 100}",
            event_name=("screen_view", "item_purchased", "add_to_cart")[i % 3],
            app_version="2.3.1",
            device_os=DEVICES[seed % len(DEVICES)],
        )
        event.client_timestamp.seconds = received - i
        event.client_timestamp.nanos = (seed * 31 + i * 17) % 1000 * 1_000_000
        event.metadata["screen"] = "checkout"
        event.metadata["sku"] = f"SKU-{i}"
        event.metadata["price"] = "19.99"
    return raw.SerializeToString()


def _rate(work: Callable[[bytes], int], data: Sequence[bytes]) -> float:
    """Events per second of `work` over one pass of `data`."""
    events = 0
    started = time.perf_counter()
    for item in data:
        events += work(item)
    return events / (time.perf_counter() - started)


def bench_pure(events: int, rounds: int) -> None:
    data = [_raw(seed, events) for seed in range(PREPARED_BATCHES)]
    geo, options = OfflineGeo(), EnrichOptions()
    decoded = {item: event_pb2.RawBatch.FromString(item) for item in data}

    def floor(item: bytes) -> int:
        raw = event_pb2.RawBatch.FromString(item)
        raw.SerializeToString()
        return len(raw.events)

    def as_message(item: bytes) -> int:
        out = enrich_batch(
            decoded[item], app_id="shop", fallback_received_ns=0, now_ns=0, geo=geo, options=options
        )
        return len(out.events)

    def full(item: bytes) -> int:
        raw = event_pb2.RawBatch.FromString(item)
        enrich_batch_bytes(
            raw,
            app_id="shop",
            fallback_received_ns=0,
            now_ns=time.time_ns(),
            geo=geo,
            options=options,
            cut=set(),  # as the consumer asks, to count the events whose text is cut
        )
        return len(raw.events)

    # Rounds alternate between the variants, so a noisy neighbour hits them alike.
    variants = {"floor": floor, "message": as_message, "full": full}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, work in variants.items():
            rates[name].append(_rate(work, data))
    best = {name: max(values) for name, values in rates.items()}
    median = {name: statistics.median(values) for name, values in rates.items()}
    print(f"pure path, {events} events per batch, {rounds} rounds (median / best)")
    for name, label in (
        ("floor", "baseline decode+serialise"),
        ("full", "decode+enrich to bytes"),
        ("message", "enrich to message (gRPC path)"),
    ):
        print(f"  {label:<30}{median[name]:>12,.0f} /{best[name]:>10,.0f} events/s")
    print(f"  ratio full / baseline         {median['full'] / median['floor']:>12.3f}")
    print(f"  ratio full / target 50k       {median['full'] / TARGET_EVENTS_PER_S:>12.2f}")


class _PassThrough:
    """The handler's shape (publish all, await PubAcks, ack) without enrichment."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def handle(self, deliveries: Sequence[Delivery]) -> None:
        async def one(delivery: Delivery) -> None:
            headers: Mapping[str, str] = {
                subjects.MSG_ID_HEADER: f"base:{delivery.stream_seq}",
            }
            await self._js.publish(
                "telemetry.enriched.v1.baseline",
                delivery.data,
                stream=subjects.ENRICHED_STREAM,
                headers=dict(headers),
            )
            await delivery.ack()

        await asyncio.gather(*(one(d) for d in deliveries))


async def _drained(js: JetStreamContext, consumer: str, total: int) -> None:
    while True:
        try:
            info = await js.consumer_info(subjects.RAW_STREAM, consumer)
        except NotFoundError:  # the enricher has not bound its consumer yet
            info = None
        if info and info.delivered.stream_seq >= total and info.num_ack_pending == 0:
            return
        await asyncio.sleep(0.02)


async def bench_nats(events: int, messages: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsProcess(Path(tmp) / "nats")
        server.start()
        try:
            config = load(
                Config,
                {
                    "NATS_URL": server.url,
                    "ENRICHER_GRPC_PORT": "0",
                    "ENRICHER_HTTP_PORT": "0",
                    "LOG_LEVEL": "WARNING",
                },
            )
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            await natsconn.ensure_streams(js, config)
            data = [_raw(seed, events) for seed in range(PREPARED_BATCHES)]
            pending = []
            for i in range(messages):
                pending.append(
                    js.publish(
                        subjects.raw_subject("shop"),
                        data[i % len(data)],
                        stream=subjects.RAW_STREAM,
                    )
                )
                if len(pending) >= 200:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
            total = messages * events

            settings = ConsumerSettings(
                name="baseline",
                ack_wait_s=30,
                max_ack_pending=config.max_ack_pending,
                fetch_batch=config.fetch_batch,
                fetch_timeout_s=config.fetch_timeout_s,
            )
            subs = await bind_consumer(js, settings, subscriptions=config.concurrency)
            loops = [
                FetchLoop(sub, _PassThrough(js), settings=settings)  # type: ignore[arg-type]
                for sub in subs
            ]
            started = time.perf_counter()
            tasks = [asyncio.create_task(loop.run()) for loop in loops]
            await _drained(js, "baseline", messages)
            base_s = time.perf_counter() - started
            for loop in loops:
                loop.stop()
            await asyncio.gather(*tasks)

            service = Enricher(config)
            started = time.perf_counter()
            await service.start()
            await _drained(js, config.consumer_name, messages)
            enrich_s = time.perf_counter() - started
            await service.stop()
            await nc.close()
        finally:
            server.stop()
    base_rate, enrich_rate = total / base_s, total / enrich_s
    print(f"through NATS, {messages} messages x {events} events, one process")
    for label, rate, seconds in (
        ("baseline pass-through", base_rate, base_s),
        ("enricher", enrich_rate, enrich_s),
    ):
        print(f"  {label:<30}{rate:>12,.0f} events/s ({messages / seconds:,.0f} msgs/s)")
    print(f"  ratio enricher / pass-through {enrich_rate / base_rate:>12.2f}")
    print(f"  ratio enricher / target 50k   {enrich_rate / TARGET_EVENTS_PER_S:>12.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100, help="events per raw batch")
    parser.add_argument("--messages", type=int, default=2000, help="raw messages through NATS")
    parser.add_argument("--rounds", type=int, default=15, help="rounds of the pure measurement")
    args = parser.parse_args()
    bench_pure(args.events, args.rounds)
    asyncio.run(bench_nats(args.events, args.messages))


if __name__ == "__main__":
    main()
