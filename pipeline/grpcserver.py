"""A service's gRPC server: its own service plus grpc.health.v1 and server reflection.

Each service subclasses `GrpcServer` and adds its servicer in `register`; binding,
health reporting and the graceful stop are the same everywhere.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pipeline.errors import ListenError
from pipeline.listen import address, cannot_listen, check_bindable

log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 5.0
HEALTH_POLL_S = 1.0
SERVER = ""  # grpc.health.v1's name for the whole server


class GrpcServer:
    """grpc.aio server with one service, health checking and reflection.

    Health is NOT_SERVING from start until `set_serving(True)`, for the whole server (SERVER)
    and for the service (`service_name`), together or each on its own; `stop()` turns both to
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
        host_setting: str = "the host",
        port_setting: str = "the port",
    ) -> None:
        self._service_name = service_name
        self._interceptors = tuple(interceptors)
        # `[::]`, as gRPC took the host before its address was put together here: one pair
        # of brackets is the address's, not the host's.
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        self._host, self._port = host, port
        self._host_setting, self._port_setting = host_setting, port_setting  # named in errors
        self._address = address(host, port)
        self._options = list(options)
        if not any(name == "grpc.so_reuseport" for name, _ in self._options):
            # grpcio turns SO_REUSEPORT on by default on Linux: a second process on the same
            # port would start without an error and take part of the calls.
            self._options.append(("grpc.so_reuseport", 0))
        self._grace_s = grace_s
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self.port = 0

    @property
    def service_name(self) -> str:
        """The service's full name, as gRPC health and reflection know it."""
        return self._service_name

    def register(self, server: grpc.aio.Server) -> None:
        """Adds the service's own servicer to `server`."""
        raise NotImplementedError

    async def start(self) -> None:
        """Binds and starts serving (idempotent); raises ListenError when it cannot bind,
        naming the setting to change."""
        if self._server is not None:
            return
        reuse_port = bool(dict(self._options)["grpc.so_reuseport"])  # checked as it will bind
        try:
            check_bindable(self._host, self._port, reuse_port=reuse_port)
        except OSError as err:
            raise cannot_listen(
                "gRPC",
                self._host,
                self._port,
                err,
                host_setting=self._host_setting,
                port_setting=self._port_setting,
            ) from err
        server = grpc.aio.server(options=self._options, interceptors=self._interceptors)
        self.register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (self._service_name, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        try:
            self.port = server.add_insecure_port(self._address)
        except RuntimeError:  # gRPC's "Failed to bind to address", which says no more
            self.port = 0
        if self.port == 0:  # taken since the check, say
            raise ListenError(
                f"gRPC cannot listen on {self._address}: check {self._host_setting} and"
                f" {self._port_setting}"
            )
        await server.start()
        self._server = server
        await self.set_serving(False)

    async def set_serving(self, serving: bool, *, names: Sequence[str] | None = None) -> None:
        """Reports SERVING or NOT_SERVING under each of `names` (SERVER, the service's name);
        by default for the whole server and the service. Ignored once `stop()` has begun."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in (SERVER, self._service_name) if names is None else names:
            await self._health.set(name, status)

    async def stop(self, *, grace_s: float | None = None) -> None:
        """Stops accepting calls and lets those in flight finish (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        await self._health.enter_graceful_shutdown()
        await server.stop(self._grace_s if grace_s is None else grace_s)


class ReadinessHealth:
    """Keeps a server's gRPC health in step with its service's readiness, so that /readyz and
    gRPC health never disagree for long.

    The service puts every readiness answer it gives (to a /readyz probe) into `record()`, and
    `follow()` asks for one every HEALTH_POLL_S besides. A change is logged: `<name> ready`, or
    `<name> not ready` with the reason (a warning when it was ready: at start, waiting is
    normal).

    It sets the health of `names` (see `GrpcServer.set_serving`), by default the whole
    server's and the service's; a service whose calls need less than it needs to be ready
    keeps one of these for SERVER and one, following what its calls need, for its service.
    """

    def __init__(
        self,
        server: GrpcServer,
        *,
        name: str,
        logger: logging.Logger | None = None,
        on_ready: Callable[[], None] | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        self._server = server
        self._name = name
        self._names = names
        self._log = logger or log
        self._on_ready = on_ready  # called each time the service becomes ready
        self._serving: bool | None = None
        self._lock = asyncio.Lock()

    async def record(self, ok: bool, reason: str) -> None:
        """Sets SERVING or NOT_SERVING when the answer differs from the last one."""
        async with self._lock:
            if ok == self._serving:
                return
            was_ready, self._serving = self._serving, ok
            await self._server.set_serving(ok, names=self._names)
        if ok:
            self._log.info("%s ready", self._name)
            if self._on_ready is not None:
                self._on_ready()
        else:
            level = logging.WARNING if was_ready else logging.INFO
            self._log.log(level, "%s not ready", self._name, extra={"reason": reason})

    async def follow(self, ready: Callable[[], Awaitable[tuple[bool, str]]]) -> None:
        """Asks `ready()` (which records its answer) every HEALTH_POLL_S until cancelled; a
        check that fails is recorded as not ready."""
        while True:
            try:
                await ready()
            except Exception as err:
                await self.record(False, f"readiness check failed: {err!r}")
            await asyncio.sleep(HEALTH_POLL_S)
