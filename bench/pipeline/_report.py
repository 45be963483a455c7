"""The run's results as one table: each figure, its baseline, the ratio and the target."""

from __future__ import annotations

from typing import Any

SERVICES = ("gateway", "enricher", "indexer")
RSS_TARGET_MB = 200


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None or value == {}:
        return "-"
    if isinstance(value, dict):
        lo, mid, hi = value.get("min"), value.get("median"), value.get("max")
        if mid is None:
            return "-"
        if lo == hi:
            return _fmt(mid, digits)
        return f"{_fmt(mid, digits)} ({_fmt(lo, digits)}..{_fmt(hi, digits)})"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}"
    return str(value)


def _row(name: str, value: str, baseline: str = "", ratio: str = "", target: str = "") -> str:
    return f"{name:<44} {value:>28} {baseline:>28} {ratio:>16} {target:>10}"


def _header(results: dict[str, Any]) -> list[str]:
    m0, m1 = results["machine_start"], results["machine_end"]
    load0 = " ".join(f"{x:.2f}" for x in m0["loadavg"])
    load1 = " ".join(f"{x:.2f}" for x in m1["loadavg"])
    opts = results["options"]
    variant = ""
    if opts.get("set") not in (None, "[]"):
        variant += f"; settings {opts['set']}"
    if opts.get("profile"):
        variant += f"; profiled: {opts['profile']} (figures carry the profiler's cost)"
    return [
        f"pipeline bench {results['started']}: {m0['nproc']} cpus ({m0['cpu']}), "
        f"{m0['mem_total_mb']:,} MB RAM, Python {m0['python']}, kernel {m0['kernel']}",
        f"load average at start {load0}, at end {load1}; rounds {opts['rounds']}, "
        f"{opts['events']} events/flood, batch {opts['batch']}, "
        f"{opts['connections']} connections, refresh interval "
        f"{opts.get('refresh_interval') or 'default'}, warm-up {opts.get('warmup', '0')} events"
        f"{variant}",
        f"code: {results['code']['head']} with "
        f"{len(results['code']['service_files_changed'])} service files changed in the tree; "
        "figures are median (min..max) over the rounds",
        "",
    ]


def table(results: dict[str, Any]) -> str:
    lines = _header(results)
    lines.append(_row("figure", "pipeline", "baseline", "ratio", "target"))
    lines.append("-" * 130)
    flood = results.get("flood", {})
    if flood:
        lines.append(
            _row(
                "gateway accepted events/s (flood)",
                _fmt(flood["gateway_events_per_s"]),
            )
        )
        lines.append(
            _row(
                "gateway request p50 / p99 ms (flood)",
                f"{_fmt(flood['gateway_p50_ms']['median'], 1)} / "
                f"{_fmt(flood['gateway_p99_ms']['median'], 1)}",
            )
        )
        lines.append(
            _row(
                "end to end events/s (POST -> searchable)",
                _fmt(flood["e2e_events_per_s"]),
                _fmt(flood["raw_bulk_docs_per_s"]) + " raw",
                _fmt(flood["ratio_e2e_raw"], 2),
                ">= 0.90",
            )
        )
        lines.append(
            _row(
                "docs per _bulk request (mean)",
                _fmt(flood.get("indexer_docs_per_bulk")),
                "1,000",
            )
        )
        lines.append(
            _row(
                "raw _bulk docs/s until acked (no refresh)",
                "",
                _fmt(flood["raw_bulk_acked_docs_per_s"]),
            )
        )
    half = results.get("half_load", {})
    if half:
        rate = half["rounds"][0]["offered_events_per_s"]
        lines.append(
            _row(
                f"accept -> searchable p50 s @ {rate:,} ev/s",
                _fmt(half["searchable_p50_s"], 3),
            )
        )
        lines.append(
            _row(
                f"accept -> searchable p99 s @ {rate:,} ev/s",
                _fmt(half["searchable_p99_s"], 3),
                "",
                "",
                "<= 1.5",
            )
        )
        lines.append(
            _row(
                "accept -> indexed (real-time get) p50 / p99 s",
                f"{_fmt(half['indexed_p50_s']['median'], 3)} / "
                f"{_fmt(half['indexed_p99_s']['median'], 3)}",
            )
        )
    query = results.get("query", {})
    for label, q in query.get("kinds", {}).items():
        lines.append(
            _row(
                f"QueryEvents p50/p99 ms: {label}",
                f"{q['grpc_p50_ms']:.2f} / {q['grpc_p99_ms']:.2f}",
                f"{q['raw_p50_ms']:.2f} / {q['raw_p99_ms']:.2f} raw",
                f"{q['ratio_p50']:.2f} (p50)",
                "<= 1.10",
            )
        )
    if query:
        lines.append(
            f"  (queries over {query['indexed_events']:,} indexed events; an empty gRPC call "
            f"to the indexer, grpc.health Check, takes {query.get('grpc_floor_p50_ms', '-')} ms "
            "p50)"
        )
    steady = [r["rss_mb_median"] for r in half.get("rounds", [])]
    peak = [r["rss_mb_end_of_flood"] for r in flood.get("rounds", [])]
    for name in SERVICES:
        steady_mb = max((s[name] for s in steady), default=None)
        peak_mb = max((p[name] for p in peak), default=None)
        lines.append(
            _row(
                f"RSS MB {name}: half load / end of flood",
                f"{_fmt(steady_mb, 1)} / {_fmt(peak_mb, 1)}",
                "",
                "",
                f"<= {RSS_TARGET_MB}",
            )
        )
    lines.append("")
    lines.extend(_cores(results))
    for name, prof in results.get("profiles", {}).items():
        lines.append("")
        lines.append(
            f"profile of {name}: {prof.get('duration_s')} s sampled, process CPU "
            f"{prof.get('cpu_s')} s; busy {prof['busy_s']} s, event loop idle/C I/O "
            f"{prof['idle_s']} s (wall clock, shares below are of busy)"
        )
        for area in prof["areas"][:8]:
            lines.append(f"  {area['share'] * 100:5.1f}%  {area['name']}")
        lines.append("  top functions by self time:")
        for fn in prof["functions"][:12]:
            lines.append(f"  {fn['share'] * 100:5.1f}%  {fn['name']}")
    return "\n".join(lines)


def _cores(results: dict[str, Any]) -> list[str]:
    """CPU cores used per process in each phase (first round), to show what saturates."""
    names = (*SERVICES, "opensearch", "nats", "bench", "other", "machine_busy")
    out = ["cores used (round 1):   " + " ".join(f"{n[:9]:>9}" for n in names)]
    rows = []
    flood = results.get("flood", {}).get("rounds", [])
    if flood:
        rows.append(("flood (gateway busy)", flood[0]["cores_during_flood"]))
        rows.append(("drain (after last 202)", flood[0]["cores_during_drain"]))
        rows.append(("raw _bulk baseline", flood[0]["cores_raw_bulk"]))
    half = results.get("half_load", {}).get("rounds", [])
    if half:
        rows.append(("half load", half[0]["cores"]))
    for label, cores in rows:
        out.append(f"  {label:<22}" + " ".join(f"{cores.get(n, 0.0):>9.2f}" for n in names))
    per_event = [r["cpu_us_per_event"] for r in flood]
    raw = [r["raw_cpu_us_per_doc"] for r in flood]
    if per_event:
        out.append("CPU us per event, flood round median (first POST -> all searchable):")
        out.append(
            "  pipeline              "
            + " ".join(f"{_median([p[n] for p in per_event]):>9.1f}" for n in names[:-2])
        )
        out.append(
            "  raw _bulk baseline    "
            + " ".join(f"{_median([p[n] for p in raw]):>9.1f}" for n in names[:-2])
        )
    return out


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
