"""Start/stop lifecycle shared by the services, and their observability HTTP routes.

A service implements `Service`. `run()` starts it under uvloop, serves
`/healthz`, `/readyz` and `/metrics` (or the service's own ASGI app, which
should include `ops_routes()`), and on SIGTERM/SIGINT stops it: stop intake,
drain, flush, ack, close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Protocol

import uvicorn
import uvloop
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    disable_created_metrics,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from pipeline import natsconn, tracing
from pipeline.errors import ListenError
from pipeline.listen import address, bind_shared, cannot_listen
from pipeline.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# No `<counter>_created` series (a start timestamp per counter and label set, which reads like
# a count: `indexer_documents_created` next to `indexer_documents_total{outcome="created"}`).
disable_created_metrics()  # type: ignore[no-untyped-call]

DEFAULT_GRACEFUL_STOP_S = 20.0
# However little of a service's graceful stop is left, each step that closes it (draining the
# NATS connection, the servers' grace for calls in flight) gets at least this long.
STOP_STEP_MIN_S = 1.0


class StopDeadline:
    """The one deadline of a service's whole stop, `graceful_stop_s` after it began: each
    step gets what is left of it, so that steps bounded one by one do not add up to more
    than the process manager waits before SIGKILL."""

    def __init__(
        self, graceful_stop_s: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._at = clock() + graceful_stop_s

    def left(self, *, at_least: float = 0.0) -> float:
        """Seconds left before the deadline, and never less than `at_least`."""
        return max(self._at - self._clock(), at_least)


# The most a stop run by a StopDeadline may end past it: the least of its two closing steps
# (the servers' grace, the NATS drain), closing NATS without the drain, exporting spans when
# tracing is on, and a second for the rest (uvicorn's whole seconds and polling, cancels).
STOP_OVERRUN_S = 2 * STOP_STEP_MIN_S + natsconn.CLOSE_TIMEOUT_S + tracing.SHUTDOWN_TIMEOUT_S + 1.0


class Service(Protocol):
    """What `run()` drives. `start()` and `stop()` are idempotent."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def ready(self) -> tuple[bool, str]:
        """(ready, reason): ready to do its work, or why not."""
        ...


def ops_routes(
    ready: Callable[[], Awaitable[tuple[bool, str]]], registry: CollectorRegistry
) -> list[BaseRoute]:
    """The routes every service serves: liveness, readiness and Prometheus metrics."""

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        ok, reason = await ready()
        body = {"status": "ready" if ok else "not ready", "reason": reason}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


def ops_app(service: Service, registry: CollectorRegistry) -> Starlette:
    """A small app with only the observability routes (for services without their own HTTP API)."""
    return Starlette(routes=ops_routes(service.ready, registry))


class _StartFailed(Exception):
    """uvicorn's start failed: it logged why and called sys.exit (the bind's OSError is the
    exit's context)."""


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling (`run()` owns the signals), whose failed start
    raises an error in its task rather than SystemExit: that would end the event loop at once,
    the service never stopped, its tasks left to asyncio, which cancels them once and waits."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        except SystemExit as exit_:
            raise _StartFailed(f"uvicorn exited with {exit_.code}") from exit_.__context__


def _whole_seconds(seconds: float) -> int:
    """Whole seconds for uvicorn's grace, rounded up: 0.9 s must not become no grace at all."""
    return math.ceil(seconds)


class HttpServer:
    """An ASGI app served by uvicorn inside the running event loop.

    With `reuse_port`, the socket is bound with SO_REUSEPORT so several processes can
    share the port and the kernel spreads connections over them.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str,
        port: int,
        graceful_stop_s: float = DEFAULT_GRACEFUL_STOP_S,
        reuse_port: bool = False,
        host_setting: str = "the host",
        port_setting: str = "the port",
    ) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=_whole_seconds(graceful_stop_s),
            server_header=False,
            # The gateway resolves X-Forwarded-For itself, against GATEWAY_TRUSTED_PROXIES;
            # uvicorn's own rewriting would believe any loopback peer.
            proxy_headers=False,
        )
        self._server = _Server(config)
        self._host, self._port, self._reuse_port = host, port, reuse_port
        self._host_setting, self._port_setting = host_setting, port_setting  # named in errors
        self._socket: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    async def _check_bindable(self) -> None:
        """Binds the address as uvicorn will, and lets it go: uvicorn, failing to, would log
        an error line of its own before ours."""
        if self._port == 0:
            return
        probe = await asyncio.get_running_loop().create_server(
            asyncio.Protocol, host=self._host, port=self._port, start_serving=False
        )
        probe.close()
        await probe.wait_closed()

    def _cannot_listen(self, err: OSError) -> ListenError:
        return cannot_listen(
            "HTTP",
            self._host,
            self._port,
            err,
            host_setting=self._host_setting,
            port_setting=self._port_setting,
        )

    async def start(self) -> None:
        """Starts serving; returns once the socket listens. Raises ListenError, naming the
        setting to change, when it cannot bind."""
        if self._task is not None:
            return
        try:
            if self._reuse_port:
                self._socket = bind_shared(self._host, self._port)
            else:
                await self._check_bindable()
        except OSError as err:
            raise self._cannot_listen(err) from err
        sockets = None if self._socket is None else [self._socket]
        self._task = task = asyncio.create_task(self._server.serve(sockets=sockets))
        while not self._server.started:
            if task.done():
                self._task = None
                if self._socket is not None:
                    self._socket.close()
                    self._socket = None
                raise self._start_failure(task)
            await asyncio.sleep(0.02)

    def _start_failure(self, task: asyncio.Task[None]) -> Exception:
        """The error of a server task that ended before it listened (its address taken
        since the check, say)."""
        error = None if task.cancelled() else task.exception()
        if isinstance(error, _StartFailed):
            error = error.__cause__
        if isinstance(error, OSError):
            return self._cannot_listen(error)
        if isinstance(error, Exception):
            return error
        return ListenError(
            f"HTTP cannot listen on {address(self._host, self._port)}: check "
            f"{self._host_setting} and {self._port_setting}"
        )

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        if self._socket is not None:
            return int(self._socket.getsockname()[1])
        for server in self._server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        raise RuntimeError("not started")

    async def stop(self, *, grace_s: float | None = None) -> None:
        """Stops accepting, lets in-flight requests finish, then returns. They get `grace_s`
        (rounded up to whole seconds) when given, else the `graceful_stop_s` the server was
        made with; those still running then are cancelled."""
        if self._task is None:
            return
        if grace_s is not None:
            self._server.config.timeout_graceful_shutdown = _whole_seconds(grace_s)
        self._server.should_exit = True
        await self._task
        self._task = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None


async def serve_until_signal(service: Service, *, name: str) -> None:
    """Starts `service`, waits for SIGTERM/SIGINT, then stops it gracefully; a second signal
    during the stop exits at once (128 + its number), as an operator asking twice means.
    What was not settled then comes back from JetStream (at-least-once on every hop).

    A start that fails is stopped too (what it began in the background, a connect waiting
    for NATS, would otherwise outlive it), and its error raised: ListenError when a server
    cannot listen where its settings say. Once this returns, a signal has its default effect.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("%s: %s again, exiting without finishing the stop", name, sig.name)
            os._exit(128 + sig.value)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await _serve(service, name=name, stop=stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _serve(service: Service, *, name: str, stop: asyncio.Event) -> None:
    # A signal during the start cancels it: one that hangs (an address slow to resolve, say)
    # must not hold the stop.
    starting = asyncio.create_task(service.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if starting.done():
        if starting.exception() is not None:
            await cancel_and_wait(stopping)
            try:
                await service.stop()
            finally:
                starting.result()  # its error, the stop's (if any) as its context
        log.info("%s started", name)
        await stopping
    else:
        await cancel_and_wait(starting)
    log.info("%s stopping", name)
    await service.stop()
    log.info("%s stopped", name)


# The exit code of a service that cannot start where its settings say (a port taken, a host
# that is no address of this one); uvicorn's own for a failed start.
EXIT_CANNOT_START = 3


def cannot_start(name: str, err: ListenError) -> int:
    """Logs the one line of a service `name` that cannot start where its settings say (`err`
    names the address and the setting to change); returns its exit code, EXIT_CANNOT_START."""
    log.error("%s cannot start: %s", name, err)
    return EXIT_CANNOT_START


def run(make_service: Callable[[], Service], *, name: str) -> int:
    """Runs a service in a fresh uvloop event loop until a signal stops it; returns its exit
    code: 0, or EXIT_CANNOT_START when one of its servers cannot listen, after one line
    saying why and which setting to change."""
    try:
        uvloop.run(serve_until_signal(make_service(), name=name))
    except ListenError as err:
        return cannot_start(name, err)
    return 0
