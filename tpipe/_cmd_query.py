"""`tpipe query` and `tpipe aggregate`: QueryService from a terminal."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

from telemetry.v1 import event_pb2, query_service_pb2

from pipeline.query_names import GROUP_BY, INTERVALS
from tpipe import _render, errors
from tpipe._args import (
    Subparsers,
    add_command,
    add_filter_options,
    add_format_option,
    build_filter,
    env_default,
    non_negative_int,
    positive_float,
    positive_int,
)
from tpipe._words import counted
from tpipe.client import DEFAULT_MAX_RETRIES, DEFAULT_QUERY_TARGET, ClientSettings, TelemetryClient
from tpipe.errors import EXIT_OK

QUERY_TARGET_ENV = "TPIPE_QUERY_TARGET"
DEFAULT_TABLE_PAGE = 50
MAX_PAGE_SIZE = 1000


QUERY_EXAMPLES = """
  tpipe query --user user-123 --since 1h
  tpipe query --event item_purchased --event screen_view --country GB --format jsonl
  tpipe query --text checkout --all --format jsonl > events.jsonl
  tpipe query --app ios-shop --since 2026-01-31T00:00:00Z --until 2026-02-01T00:00:00Z --limit 500
"""

AGGREGATE_EXAMPLES = """
  tpipe aggregate --by event_name --since 1d
  tpipe aggregate --by country --interval hour --since 12h --user user-123
  tpipe aggregate --interval day --since 7d --format json
"""


def _add_connection(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--target",
        default=env_default(QUERY_TARGET_ENV, DEFAULT_QUERY_TARGET),
        help=f"QueryService host:port (env {QUERY_TARGET_ENV}; default {DEFAULT_QUERY_TARGET})",
    )
    group.add_argument(
        "--deadline", type=positive_float, default=10.0, help="seconds per call (default 10)"
    )
    group.add_argument(
        "--retries",
        type=non_negative_int,
        default=DEFAULT_MAX_RETRIES,
        help="retries on UNAVAILABLE, RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED "
        f"(default {DEFAULT_MAX_RETRIES})",
    )


def _add_partial(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--partial",
        action="store_true",
        help="when part of the event store does not answer, show what the rest holds and name "
        "the missing daily indices on stderr (default: fail with UNAVAILABLE, so nothing is "
        "silently missing)",
    )


def _warn_unreachable(names: set[str] | list[str]) -> None:
    if names:
        print(
            f"warning: {counted(len(names), 'index', 'indices')} did not answer; "
            f"{'its' if len(names) == 1 else 'their'} events are missing: "
            + ", ".join(sorted(names)),
            file=sys.stderr,
        )


@contextlib.contextmanager
def _partial_hint() -> Iterator[None]:
    """A refused partial answer says how to get one from here."""
    try:
        yield
    except errors.PartialAnswer as err:
        raise errors.PartialAnswer(f"{err} (here: pass --partial)") from None


def _client(args: argparse.Namespace) -> TelemetryClient:
    return TelemetryClient(
        ClientSettings(query_target=args.target, deadline_s=args.deadline, max_retries=args.retries)
    )


def register(sub: Subparsers, name: str) -> None:
    """Adds `query` or `aggregate`."""
    if name == "query":
        parser = add_command(
            sub,
            "query",
            summary="list events matching a filter (QueryEvents), newest first",
            description="Lists indexed events matching a filter, newest first, "
            "as a table or as JSON lines. One page unless --all or --limit asks for more.",
            examples=QUERY_EXAMPLES,
            run=run_query,
        )
        add_filter_options(parser)
        out = parser.add_argument_group("output")
        out.add_argument(
            "--page-size",
            type=positive_int,
            default=DEFAULT_TABLE_PAGE,
            help=f"events per call (default {DEFAULT_TABLE_PAGE}, at most {MAX_PAGE_SIZE})",
        )
        out.add_argument("--all", action="store_true", help="fetch every page")
        out.add_argument(
            "--limit", type=positive_int, help="at most this many events (pages as needed)"
        )
        add_format_option(
            out, {"table": "columns to read", "jsonl": "one EnrichedEvent a line, as JSON"}
        )
        _add_partial(out)
        _add_connection(parser)
    else:
        parser = add_command(
            sub,
            "aggregate",
            summary="count events by a field and/or over time (AggregateEvents)",
            description="Counts events matching a filter, by the values of a field and/or "
            "per time bucket, with a text histogram.",
            examples=AGGREGATE_EXAMPLES,
            run=run_aggregate,
        )
        add_filter_options(parser)
        out = parser.add_argument_group("output")
        out.add_argument("--by", choices=tuple(GROUP_BY), help="count by this field")
        out.add_argument(
            "--interval",
            choices=tuple(INTERVALS),
            help="histogram bucket width: UTC minutes, hours or days, whatever the offset of "
            "--since/--until (a day bucket starts at 00:00 UTC)",
        )
        out.add_argument(
            "--limit", type=positive_int, default=10, help="most values of --by (default 10)"
        )
        add_format_option(
            out, {"text": "counts with bars", "json": "the AggregateEvents answer as JSON"}
        )
        _add_partial(out)
        _add_connection(parser)


async def run_query(args: argparse.Namespace) -> int:
    """Prints the events; the table's footer (on stderr) says how many matched."""
    flt = build_filter(args, now=datetime.now(UTC))
    page_size = min(args.page_size, MAX_PAGE_SIZE, args.limit or MAX_PAGE_SIZE)
    unreachable: set[str] | None = set() if args.partial else None
    with _partial_hint():
        events, total, more = await _fetch(args, flt, page_size, unreachable)
    _warn_unreachable(unreachable or set())
    if args.format == "jsonl":
        for event in events:
            sys.stdout.write(_render.event_json(event).decode() + "\n")
        sys.stdout.flush()
        return EXIT_OK
    _print_table(events, total=total, more=more)
    return EXIT_OK


async def _fetch(
    args: argparse.Namespace,
    flt: query_service_pb2.EventFilter,
    page_size: int,
    unreachable: set[str] | None,
) -> tuple[list[event_pb2.EnrichedEvent], int, bool]:
    """One page, or (--all, --limit) every page with JSON lines written as they come."""
    out = sys.stdout
    async with _client(args) as client:
        if not args.all and args.limit is None:
            page = await client.query_page(flt, page_size=page_size, partial=args.partial)
            events = list(page.events)
            total, more = page.total_size, bool(page.next_page_token)
            if unreachable is not None:
                unreachable.update(page.unreachable)
        else:
            events = []
            async for event in client.query_events(
                flt, page_size=page_size, limit=args.limit, unreachable=unreachable
            ):
                if args.format == "jsonl":
                    out.write(_render.event_json(event).decode() + "\n")
                else:
                    events.append(event)
            total, more = -1, False
    return events, total, more


def _print_table(events: list[event_pb2.EnrichedEvent], *, total: int, more: bool) -> None:
    if events:
        print("\n".join(_render.table(events)))
    shown = counted(len(events), "event")
    if total >= 0 and more:
        shown += f" of {total} (more with --all or --limit)"
    print(shown, file=sys.stderr)


async def run_aggregate(args: argparse.Namespace) -> int:
    """Prints the total, the counts by field and the histogram."""
    flt = build_filter(args, now=datetime.now(UTC))
    group_by = GROUP_BY.get(args.by or "", query_service_pb2.AGGREGATION_FIELD_UNSPECIFIED)
    interval = INTERVALS.get(args.interval or "", query_service_pb2.HISTOGRAM_INTERVAL_UNSPECIFIED)
    with _partial_hint():
        async with _client(args) as client:
            response = await client.aggregate(
                flt, group_by=group_by, interval=interval, limit=args.limit, partial=args.partial
            )
    _warn_unreachable(list(response.unreachable))
    if args.format == "json":
        print(_render.aggregate_json(response).decode())
    else:
        lines = _render.aggregate(response, by=args.by or "", interval=args.interval or "")
        print("\n".join(lines))
    return EXIT_OK
