"""What the `tpipe send` and `loadgen` tests share: a fake gateway's server, the parsed
arguments of a send or a loadgen, and an input file."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.servers import free_port


@asynccontextmanager
async def track_server(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """Serves `handler` as POST /v1/track on loopback; yields the base URL."""
    app = web.Application()
    app.router.add_post("/v1/track", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def ndjson_file(path: Path, count: int) -> Path:
    """`count` events e-0, e-1, ... one per line."""
    path.write_text("".join(f'{{"event_id": "e-{n}"}}\n' for n in range(count)))
    return path


def send_args(url: str, file: Path, **options: Any) -> argparse.Namespace:
    """`tpipe send <file> --gateway <url> --key wk --retries 0` with `options` changed."""
    values: dict[str, Any] = {
        "gateway": url,
        "key": "wk",
        "file": str(file),
        "batch_size": 100,
        "retries": 0,
        "timeout": 30.0,
        "progress": False,
        "allow_remote": False,
        **options,
    }
    return argparse.Namespace(**values)


def loadgen_args(url: str, **options: Any) -> argparse.Namespace:
    """`tpipe loadgen --gateway <url> --key wk` with 2 devices recording 100 events a second
    for 60 s into batches of up to 1,000, flushed every 60 s, with `options` changed."""
    values: dict[str, Any] = {
        "gateway": url,
        "key": "wk",
        "retries": 5,
        "timeout": 30.0,
        "allow_remote": False,
        "devices": 2,
        "rate": 100.0,
        "duration": 60.0,
        "events": None,
        "batch_size": 1000,
        "flush_interval": 60.0,
        **options,
    }
    return argparse.Namespace(**values)
