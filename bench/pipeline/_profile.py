"""Reads a pyinstrument session of one service: where its busy time went.

Samples are wall-clock, so the event loop's waiting is separated out first: the self
time of the frames below is "idle" (the loop blocked in epoll with nothing to run).
The rest is grouped by the code it ran in (our packages, protobuf, the HTTP and NATS
clients, asyncio/uvloop glue) and by function.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

# Self time of these files' frames is the event loop itself: waiting in epoll, and the I/O
# uvloop does in C (no Python frame to charge it to).
IDLE_FILES = ("asyncio/runners.py", "asyncio/base_events.py", "selectors.py")
OURS = ("gateway", "enricher", "indexer", "pipeline", "tpipe", "telemetry")


def _area(path: str) -> str:
    """A short name for the code a file belongs to."""
    parts = Path(path).parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].split(".")[0]
    for part in parts:
        if part in OURS:
            return part
    if "python3" in path or path.startswith("<"):
        stem = Path(path).stem
        return f"stdlib:{stem}" if not path.startswith("<") else path
    return Path(path).name


def _walk(frame: Any) -> Any:
    yield frame
    for child in frame.children:
        yield from _walk(child)


def summarise(session_file: Path, top: int = 15) -> dict[str, Any]:
    """Busy seconds, and the busiest areas and functions by self time."""
    from pyinstrument.session import Session  # only where a profile was taken

    session = Session.load(str(session_file))
    root = session.root_frame()
    if root is None:
        return {"busy_s": 0.0, "idle_s": 0.0, "areas": [], "functions": []}
    areas: dict[str, float] = defaultdict(float)
    functions: dict[str, float] = defaultdict(float)
    idle = 0.0
    for frame in _walk(root):
        # total_self_time already holds the frame's synthetic [self]/[await] children.
        own = float(frame.total_self_time)
        if own <= 0 or frame.is_synthetic:
            continue
        path = frame.file_path or ""
        if path.endswith(IDLE_FILES) or "uvloop" in path:
            idle += own
            continue
        area = _area(frame.file_path or "")
        areas[area] += own
        functions[
            f"{frame.function} ({area}:{Path(frame.file_path or '?').name}:{frame.line_no})"
        ] += own
    busy = sum(areas.values())

    def ranked(table: dict[str, float]) -> list[dict[str, Any]]:
        rows = sorted(table.items(), key=lambda kv: kv[1], reverse=True)[:top]
        return [
            {"name": name, "self_s": round(s, 2), "share": round(s / busy, 3) if busy else 0.0}
            for name, s in rows
        ]

    return {
        "duration_s": round(session.duration, 2),
        "cpu_s": round(session.cpu_time, 2),
        "busy_s": round(busy, 2),
        "idle_s": round(idle, 2),
        "areas": ranked(areas),
        "functions": ranked(functions),
    }
