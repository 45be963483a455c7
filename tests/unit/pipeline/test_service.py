"""The shared lifecycle: signals stop a service, even one still starting; ops routes answer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from pipeline import service as lifecycle
from pipeline.errors import ListenError
from pipeline.service import HttpServer, StopDeadline, ops_app, serve_until_signal
from pipeline.tasks import cancel_and_wait


class FakeService:
    def __init__(
        self, *, start_forever: bool = False, start_error: Exception | None = None
    ) -> None:
        self.start_forever = start_forever
        self.start_error = start_error
        self.calls: list[str] = []

    async def start(self) -> None:
        self.calls.append("start")
        if self.start_error is not None:
            raise self.start_error
        if self.start_forever:
            await asyncio.Event().wait()

    async def stop(self) -> None:
        self.calls.append("stop")

    async def ready(self) -> tuple[bool, str]:
        return ("start" in self.calls, "starting")


async def _terminate_soon() -> None:
    await asyncio.sleep(0.1)
    os.kill(os.getpid(), signal.SIGTERM)


async def test_sigterm_stops_a_started_service() -> None:
    service = FakeService()
    asyncio.get_running_loop().create_task(_terminate_soon())
    await asyncio.wait_for(serve_until_signal(service, name="fake"), 5)
    assert service.calls == ["start", "stop"]


async def test_sigterm_during_a_start_that_waits_forever_still_stops() -> None:
    service = FakeService(start_forever=True)
    asyncio.get_running_loop().create_task(_terminate_soon())
    await asyncio.wait_for(serve_until_signal(service, name="fake"), 5)
    assert service.calls == ["start", "stop"]


class SwallowsACancel(FakeService):
    """A start that takes its first cancel for the end of a wait of its own and goes on, as
    nats-py's connect may."""

    async def start(self) -> None:
        self.calls.append("start")
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        await asyncio.Event().wait()


async def test_sigterm_during_a_start_that_swallows_a_cancel_still_stops() -> None:
    service = SwallowsACancel()
    asyncio.get_running_loop().create_task(_terminate_soon())
    serving = asyncio.create_task(serve_until_signal(service, name="fake"))
    try:
        # Not wait_for: cancelling it at its timeout would cancel the start a second time.
        await asyncio.wait({serving}, timeout=5)
        assert serving.done(), "the start still runs: SIGTERM did not stop the service"
    finally:
        await cancel_and_wait(serving)
    assert service.calls == ["start", "stop"]


async def test_ops_routes_report_health_readiness_and_metrics() -> None:
    registry = CollectorRegistry()
    Counter("fake_things", "things done", registry=registry).inc(3)
    service = FakeService()
    server = HttpServer(ops_app(service, registry), host="127.0.0.1", port=0)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            assert (await client.get("/healthz")).status_code == 200
            not_ready = await client.get("/readyz")
            assert not_ready.status_code == 503
            assert not_ready.json() == {"status": "not ready", "reason": "starting"}
            await service.start()
            assert (await client.get("/readyz")).status_code == 200
            metrics = (await client.get("/metrics")).text
            assert "fake_things_total 3.0" in metrics
            assert "fake_things_created" not in metrics  # a timestamp read as a count
    finally:
        await server.stop()
        await server.stop()  # idempotent


async def test_a_grace_under_a_second_still_lets_a_request_finish() -> None:
    entered = asyncio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        entered.set()
        await asyncio.sleep(0.5)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    server = HttpServer(slow, host="127.0.0.1", port=0, graceful_stop_s=0.9)
    await server.start()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        pending = asyncio.create_task(client.get("/"))
        await entered.wait()
        await server.stop()
        response = await pending

    assert (response.status_code, response.text) == (200, "done")


_SLOW_STOP = """
import asyncio, logging, sys
from pipeline.service import serve_until_signal

class SlowStop:
    async def start(self): print("started", flush=True)
    async def stop(self): print("stopping", flush=True); await asyncio.sleep(60)
    async def ready(self): return True, "ok"

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
asyncio.run(serve_until_signal(SlowStop(), name="slow"))
"""


def test_a_second_signal_during_a_slow_stop_exits_at_once() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_STOP],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "started"
        process.send_signal(signal.SIGTERM)
        assert process.stdout.readline().strip() == "stopping"
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=20)  # the stop alone would take 60 s
    finally:
        process.kill()
    assert code == 128 + signal.SIGINT
    assert process.stderr is not None
    assert "slow: SIGINT again, exiting without finishing the stop" in process.stderr.read()


def test_a_stop_deadline_gives_each_step_what_is_left_and_closing_steps_their_least() -> None:
    now = [100.0]
    deadline = StopDeadline(20.0, clock=lambda: now[0])

    assert deadline.left() == 20.0
    now[0] += 15.5
    assert deadline.left() == 4.5
    now[0] += 10.0
    assert deadline.left() == 0.0
    assert deadline.left(at_least=1.0) == 1.0


async def test_a_grace_given_at_stop_cuts_a_request_that_would_outlast_it() -> None:
    entered = asyncio.Event()

    async def hangs(scope: Scope, receive: Receive, send: Send) -> None:
        entered.set()
        await asyncio.Event().wait()

    server = HttpServer(hangs, host="127.0.0.1", port=0, graceful_stop_s=30)
    await server.start()
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        pending = asyncio.create_task(client.get("/"))
        await entered.wait()
        started = loop.time()
        await asyncio.wait_for(server.stop(grace_s=0.5), 10)  # a whole second for uvicorn
        elapsed = loop.time() - started
        with contextlib.suppress(httpx.HTTPError):
            await pending

    assert elapsed < 1.0 + 2.0  # the second, uvicorn's polling, a loaded machine (not 30 s)


def _taken_error(port: int) -> str:
    return (
        f"HTTP cannot listen on 127.0.0.1:{port}: address already in use; another process"
        " listens there: stop it, or set X_HTTP_PORT to a free port"
    )


@pytest.mark.parametrize("reuse_port", [False, True])
async def test_an_http_port_taken_is_one_error_naming_it_and_its_setting(
    taken_port: int, reuse_port: bool, caplog: pytest.LogCaptureFixture
) -> None:
    server = HttpServer(
        PlainTextResponse("ok"),
        host="127.0.0.1",
        port=taken_port,
        reuse_port=reuse_port,
        port_setting="X_HTTP_PORT",
    )
    with caplog.at_level(logging.INFO), pytest.raises(ListenError) as caught:
        await server.start()
    assert str(caught.value) == _taken_error(taken_port)
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    await server.stop()  # nothing to stop


async def test_an_http_port_taken_after_the_check_is_a_listen_error_not_an_exit(
    taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn failing to bind calls sys.exit: that SystemExit must not end the event loop
    (the service would never be stopped, and a NATS connect left running kept the process
    from ever exiting)."""

    async def free(self: HttpServer) -> None:  # the port taken just after the check
        pass

    monkeypatch.setattr(HttpServer, "_check_bindable", free)
    server = HttpServer(
        PlainTextResponse("ok"), host="127.0.0.1", port=taken_port, port_setting="X_HTTP_PORT"
    )
    with pytest.raises(ListenError) as caught:
        await server.start()
    assert str(caught.value) == _taken_error(taken_port)
    await server.stop()  # nothing to stop


async def test_a_start_that_fails_is_stopped_its_error_raised_and_the_signals_let_go() -> None:
    service = FakeService(start_error=ListenError("HTTP cannot listen on 127.0.0.1:1"))
    with pytest.raises(ListenError):
        await asyncio.wait_for(serve_until_signal(service, name="fake"), 5)
    assert service.calls == ["start", "stop"]
    # A signal now ends the process, as no stop is waited for any more.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_run_exits_3_with_one_line_when_a_server_cannot_listen(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = FakeService(start_error=ListenError("HTTP cannot listen on 127.0.0.1:1: ..."))
    with caplog.at_level(logging.INFO, logger=lifecycle.log.name):
        code = lifecycle.run(lambda: service, name="fake")
    assert code == lifecycle.EXIT_CANNOT_START == 3
    assert [
        (r.levelno, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING
    ] == [(logging.ERROR, "fake cannot start: HTTP cannot listen on 127.0.0.1:1: ...")]
    assert service.calls == ["start", "stop"]
