"""The shared gRPC server: binding its address."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from pipeline.grpcserver import GrpcServer, ListenError


class Bare(GrpcServer):
    """A server with health and reflection only."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        super().__init__(service_name="test.v1.Bare", host=host, port=port)

    def register(self, server: grpc.aio.Server) -> None:
        return None


async def test_a_second_server_on_a_taken_port_cannot_listen() -> None:
    # grpcio's own default (SO_REUSEPORT on Linux) would let both listen and share the calls.
    first = Bare(0)
    await first.start()
    try:
        second = Bare(first.port)
        with pytest.raises(ListenError, match=f"127.0.0.1:{first.port}"):
            await second.start()
    finally:
        await first.stop(grace_s=0)


@pytest.mark.parametrize("host", ["::1", "[::1]"])
async def test_an_ipv6_host_listens_with_or_without_its_brackets(host: str) -> None:
    server = Bare(0, host=host)
    await server.start()
    try:
        _, writer = await asyncio.open_connection("::1", server.port)
        writer.close()
    finally:
        await server.stop(grace_s=0)
