"""The machine and the processes, read from /proc (Linux): memory, CPU, load."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, Any]:
    """nproc, memory, load average and CPU model, for the report's header."""
    meminfo = _status_fields(Path("/proc/meminfo"))
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "mem_total_mb": meminfo.get("MemTotal", 0) // 1024,
        "mem_available_mb": meminfo.get("MemAvailable", 0) // 1024,
        "loadavg": list(os.getloadavg()),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def _status_fields(path: Path) -> dict[str, int]:
    """`Name:   123 kB` lines as {Name: 123}."""
    out: dict[str, int] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        value = rest.split()
        if value and value[0].isdigit():
            out[name] = int(value[0])
    return out


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return out


def tree(pid: int) -> list[int]:
    """`pid` and its descendants (a gateway with workers is a supervisor and N children)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(_children(current))
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of `pid` and its descendants, MB."""
    kb = sum(_status_fields(Path(f"/proc/{p}/status")).get("VmRSS", 0) for p in tree(pid))
    return kb / 1024


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` and its descendants so far."""
    total = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def local_process(pid: int, word: str) -> int | None:
    """`pid` when a process of that id runs here with `word` in its command line."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if word.encode() in cmdline else None


def find_process(*words: str) -> int | None:
    """The first process whose command line has every one of `words` as an argument (or as
    the file name of a path argument)."""
    wanted = [w.encode() for w in words]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if all(any(arg == w or arg.endswith(b"/" + w) for arg in argv) for w in wanted):
            return int(entry.name)
    return None


def self_cpu_s() -> float:
    """CPU seconds of this process (the load generator and the pollers)."""
    times = os.times()
    return times.user + times.system


@dataclass(frozen=True)
class MachineCpu:
    """Busy and total jiffies of all CPUs, from /proc/stat."""

    busy: int
    total: int

    @classmethod
    def now(cls) -> MachineCpu:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return cls(busy=sum(values) - idle, total=sum(values))

    def busy_since(self, before: MachineCpu) -> float:
        """Fraction of all CPUs busy between `before` and this sample (1.0 = every core)."""
        total = self.total - before.total
        return (self.busy - before.busy) / total if total else 0.0
