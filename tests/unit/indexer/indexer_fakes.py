"""Fakes for the indexer's ports."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from indexer.bulk import BulkWriter, ItemResult
from indexer.errors import DeadLetterRefusedError, SearchRequestError, SearchUnavailableError


def parse_bulk(body: bytes) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    lines = body.splitlines()
    return [
        (orjson.loads(lines[i])["create"], orjson.loads(lines[i + 1]))
        for i in range(0, len(lines), 2)
    ]


class FakeStore:
    """An in-memory `_bulk`: create-only documents by (index, id); failures on demand."""

    def __init__(self) -> None:
        self.docs: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[int] = []
        self.down = False
        self.item_status: Callable[[dict[str, Any]], int | None] = lambda _: None
        self.forced_type = "forced"  # the error type of a forced item status
        self.refuse_request_when: Callable[[list[dict[str, Any]]], bool] = lambda _: False
        self.refuse_status = 400  # of a refused request
        self.in_flight = 0
        self.max_in_flight = 0
        self.gate: asyncio.Event | None = None

    async def bulk(self, body: bytes) -> Sequence[ItemResult]:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(0)
            if self.down:
                raise SearchUnavailableError("connection refused")
            pairs = parse_bulk(body)
            if self.refuse_request_when([doc for _, doc in pairs]):
                raise SearchRequestError(self.refuse_status, "request refused")
            self.requests.append(len(pairs))
            results = []
            for action, doc in pairs:
                forced = self.item_status(doc)
                if forced is not None:
                    results.append(
                        ItemResult(forced, {"type": self.forced_type, "reason": f"status {forced}"})
                    )
                    continue
                key = (action["_index"], action["_id"])
                if key in self.docs:
                    results.append(ItemResult(409, {"type": "version_conflict_engine_exception"}))
                else:
                    self.docs[key] = doc
                    results.append(ItemResult(201))
            return results
        finally:
            self.in_flight -= 1

    async def sources(
        self, keys: Sequence[tuple[str, str]], fields: Sequence[str]
    ) -> list[Mapping[str, Any] | None]:
        """The `fields` of the stored documents at `keys` (None for one not stored)."""
        await asyncio.sleep(0)
        if self.down:
            raise SearchUnavailableError("connection refused")
        found = [self.docs.get(key) for key in keys]
        return [None if doc is None else {f: doc[f] for f in fields if f in doc} for doc in found]


def quiet_writer(store: FakeStore | None = None) -> BulkWriter:
    """A writer over a `FakeStore` for tests where the writer is not what is looked at."""
    return BulkWriter(
        store or FakeStore(),
        max_docs=10,
        max_bytes=1_000_000,
        flush_interval_s=1.0,
        concurrency=1,
        retry_base_s=0.01,
        retry_max_s=0.1,
    )


class ShortAnswerPort:
    """A `_bulk` whose first answer lists one item fewer than were sent and stores nothing;
    the store answers every request after it."""

    def __init__(self) -> None:
        self.store = FakeStore()
        self.sizes: list[int] = []

    async def bulk(self, body: bytes) -> Sequence[ItemResult]:
        sent = len(parse_bulk(body))
        self.sizes.append(sent)
        if len(self.sizes) == 1:
            await asyncio.sleep(0)
            return [ItemResult(201)] * (sent - 1)
        return await self.store.bulk(body)

    async def sources(
        self, keys: Sequence[tuple[str, str]], fields: Sequence[str]
    ) -> list[Mapping[str, Any] | None]:
        return await self.store.sources(keys, fields)


@dataclass
class FakeDelivery:
    data: bytes
    subject: str = "telemetry.enriched.v1.shop"
    headers: Mapping[str, str] = field(default_factory=dict)
    deliveries: int = 1
    stream_seq: int = 1
    settled: list[str] = field(default_factory=list)
    touched: int = 0

    @property
    def msg_id(self) -> str:
        return f"TELEMETRY_ENRICHED:{self.stream_seq}"

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nak(self, delay_s: float) -> None:
        self.settled.append("nak")

    async def term(self) -> None:
        self.settled.append("term")

    async def in_progress(self) -> None:
        self.touched += 1


@dataclass
class DeadLetter:
    reason: str
    data: bytes
    subject: str
    headers: Mapping[str, str]
    deliveries: int
    msg_id: str
    source_seq: int


class FakeDeadLetters:
    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []
        self.fail = False
        # Whether NATS refuses a letter for good (the consumer's DeadLetterRefusedError).
        self.refuse: Callable[[str], bool] = lambda msg_id: False

    async def publish(
        self,
        *,
        reason: str,
        data: bytes,
        subject: str,
        headers: Mapping[str, str],
        deliveries: int,
        msg_id: str,
        source_seq: int,
    ) -> bool:
        """Keeps one letter per message id, as JetStream's duplicate window does."""
        if self.fail:
            raise ConnectionError("nats away")
        if self.refuse(msg_id):
            raise DeadLetterRefusedError("the DLQ refused it: nats: maximum payload exceeded")
        if any(letter.msg_id == msg_id for letter in self.letters):
            return True
        self.letters.append(
            DeadLetter(reason, data, subject, dict(headers), deliveries, msg_id, source_seq)
        )
        return False
