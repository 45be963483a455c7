"""OpenSearch over TLS with basic auth, as in production: `https://` URL, a private CA,
a user name and password.

The test node speaks plain HTTP (its distribution has no security plugin), so a
TLS-terminating relay with a certificate from a CA made here (the `openssl` CLI) stands
in front of it. What is checked is the indexer's side: it verifies the certificate against
OPENSEARCH_CA_CERTS, refuses a certificate it cannot verify, and sends its credentials.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from indexer_support import (
    NOW,
    IndexerFactory,
    enriched,
    indexer_config,
    publish,
    query_stub,
    wait_count,
)
from nats.aio.client import Client
from opensearchpy import AsyncOpenSearch
from telemetry.v1 import query_service_pb2 as qs

from indexer import Indexer
from tests.certificates import make_certificates
from tests.servers import NatsProcess

pytestmark = pytest.mark.integration

USER, PASSWORD = "indexer-user", "s3cret-Passw0rd"
NOT_READY_WAIT_S = 3.0


class TlsRelay:
    """Accepts TLS on 127.0.0.1 and relays the bytes to a plain-HTTP OpenSearch; keeps the
    first request head of every connection to show what the client sent."""

    def __init__(self, upstream: str, cert: Path, key: Path) -> None:
        parts = urlsplit(upstream)
        assert parts.hostname is not None
        assert parts.port is not None
        self._upstream = (parts.hostname, parts.port)
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(cert, key)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.heads: list[bytes] = []

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=self._context)
        port = self._server.sockets[0].getsockname()[1]
        return f"https://localhost:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                up_writer.write(head)
                await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
            finally:
                up_writer.close()
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    finally:
        sink.close()


@pytest.fixture
async def relay(opensearch_url: str, tmp_path: Path) -> AsyncIterator[tuple[TlsRelay, str, Path]]:
    ca, cert, key = make_certificates(tmp_path)
    running = TlsRelay(opensearch_url, cert, key)
    url = await running.start()
    try:
        yield running, url, ca
    finally:
        await running.stop()


async def test_indexes_and_queries_over_tls_with_credentials(
    relay: tuple[TlsRelay, str, Path],
    start_indexer: IndexerFactory,
    nc: Client,
    os_client: AsyncOpenSearch,
    prefix: str,
) -> None:
    tls, url, ca = relay
    indexer = await start_indexer(
        opensearch_url=url,
        OPENSEARCH_CA_CERTS=str(ca),
        OPENSEARCH_USERNAME=USER,
        OPENSEARCH_PASSWORD=PASSWORD,
    )
    ids = [str(uuid.uuid4()) for _ in range(3)]
    await publish(nc, [enriched(event_id, when=NOW) for event_id in ids])

    await wait_count(os_client, prefix, 3)  # checked beside the relay, over plain HTTP
    channel, stub = query_stub(indexer)
    async with channel:
        page = await stub.QueryEvents(qs.QueryEventsRequest(page_size=10))
    assert sorted(e.event.event_id for e in page.events) == sorted(ids)

    # Every connection the indexer opened went through TLS with the credentials.
    credentials = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert tls.heads
    for head in tls.heads:
        assert f"authorization: basic {credentials}".lower() in head.decode().lower(), head


async def _stays_unready(indexer: Indexer) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + NOT_READY_WAIT_S
    while loop.time() < deadline:
        ok, _ = await indexer.ready()
        assert not ok, "ready against a certificate it cannot verify"
        await asyncio.sleep(0.2)
    return (await indexer.ready())[1]


async def test_a_certificate_it_cannot_verify_is_refused(
    relay: tuple[TlsRelay, str, Path], nats_server: NatsProcess, prefix: str
) -> None:
    tls, url, _ = relay
    indexer = Indexer(indexer_config(nats_server.url, url, prefix))  # system CAs only
    await indexer.start()
    try:
        assert await _stays_unready(indexer) == "opensearch not answering"
    finally:
        await indexer.stop()
    assert not tls.heads, "a request was sent before the certificate was verified"


async def test_verification_can_be_turned_off(
    relay: tuple[TlsRelay, str, Path], start_indexer: IndexerFactory
) -> None:
    tls, url, _ = relay
    with pytest.warns(UserWarning, match="verify_certs=False is insecure"):
        indexer = await start_indexer(opensearch_url=url, OPENSEARCH_VERIFY_CERTS="false")
    assert await indexer.ready() == (True, "ok")
    assert tls.heads
