"""A service's gRPC server: its own service plus grpc.health.v1 and server reflection.

Each service subclasses `GrpcServer` and adds its servicer in `register`; binding,
health reporting and the graceful stop are the same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pipeline.errors import PipelineError

DEFAULT_GRACE_S = 5.0


class ListenError(PipelineError):
    """The server cannot listen on its address (taken, or not an address of this host)."""


class GrpcServer:
    """grpc.aio server with one service, health checking and reflection.

    Health is NOT_SERVING from start until `set_serving(True)`; `stop()` turns it to
    NOT_SERVING for good and lets calls in flight finish within the grace period.
    """

    def __init__(
        self,
        *,
        service_name: str,
        host: str,
        port: int,
        options: Sequence[tuple[str, Any]] = (),
        grace_s: float = DEFAULT_GRACE_S,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> None:
        self._service_name = service_name
        self._interceptors = tuple(interceptors)
        self._address = f"{host}:{port}"
        self._options = list(options)
        self._grace_s = grace_s
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self.port = 0

    def register(self, server: grpc.aio.Server) -> None:
        """Adds the service's own servicer to `server`."""
        raise NotImplementedError

    async def start(self) -> None:
        """Binds and starts serving (idempotent); raises ListenError when it cannot bind."""
        if self._server is not None:
            return
        server = grpc.aio.server(options=self._options, interceptors=self._interceptors)
        self.register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (self._service_name, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        try:
            self.port = server.add_insecure_port(self._address)
        except RuntimeError as err:
            raise ListenError(f"gRPC cannot listen on {self._address}: {err}") from err
        if self.port == 0:
            raise ListenError(f"gRPC cannot listen on {self._address}")
        await server.start()
        self._server = server
        await self.set_serving(False)

    async def set_serving(self, serving: bool) -> None:
        """Reports SERVING or NOT_SERVING for the whole server and for the service."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", self._service_name):
            await self._health.set(name, status)

    async def stop(self, *, grace_s: float | None = None) -> None:
        """Stops accepting calls and lets those in flight finish (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        await self._health.enter_graceful_shutdown()
        await server.stop(self._grace_s if grace_s is None else grace_s)
