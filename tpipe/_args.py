"""argparse pieces the people commands share: one-line errors, typed options, filter options."""

from __future__ import annotations

import argparse
import math
import os
import sys
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import NoReturn, TypeAlias

from telemetry.v1 import query_service_pb2

from pipeline.settings import NATS_SCHEMES
from tpipe._timeparse import parse_time
from tpipe.errors import EXIT_USAGE, UsageError

Runner = Callable[[argparse.Namespace], Awaitable[int]]
# argparse's type for add_subparsers() (unexported, generic only for type checkers)
Subparsers: TypeAlias = "argparse._SubParsersAction[Parser]"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


def add_command(
    sub: Subparsers, name: str, *, summary: str, description: str, examples: str, run: Runner
) -> Parser:
    """Adds one subcommand whose --help ends with its examples."""
    parser = sub.add_parser(
        name,
        help=summary,
        description=description,
        epilog="examples:\n" + examples.strip("\n"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)
    assert isinstance(parser, Parser)
    return parser


def positive_int(text: str) -> int:
    """An argparse type: an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or greater")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 ("inf" would mean waiting forever)."""
    value = _finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def non_negative_float(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or greater")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def add_format_option(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, formats: dict[str, str]
) -> None:
    """--format, one of `formats` (name -> what it prints); the first is the default.

    Help texts say an option's default as "(default X)", written in the text rather than
    added by a formatter: argparse's would show "None" for options without one, and an
    environment variable's value (a key, a URL with credentials) for those read from it.
    """
    names = tuple(formats)
    described = "; ".join(f"{name}: {what}" for name, what in formats.items())
    parser.add_argument(
        "--format", choices=names, default=names[0], help=f"{described} (default {names[0]})"
    )


def env_default(name: str, default: str) -> str:
    """The environment variable's value, or `default` when it is unset or empty."""
    return os.environ.get(name, "").strip() or default


# option -> (EventFilter field, help)
FILTER_OPTIONS: dict[str, tuple[str, str]] = {
    "--user": ("user_ids", "user_id"),
    "--session": ("session_ids", "session_id"),
    "--event": ("event_names", "event_name"),
    "--app-version": ("app_versions", "app_version"),
    "--os": ("device_os", 'device_os or OS name ("iOS 17.2" or "iOS")'),
    "--country": ("country_codes", "ISO country code of the client (GB)"),
    "--app": ("app_ids", "app id (the write key's app)"),
}


def http_url(url: str) -> str:
    """`url` without a trailing slash; UsageError unless it is an http(s) URL with a host
    (`127.0.0.1:3000`, without its scheme, is not)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is not a number in 0-65535
    except ValueError:
        raise UsageError(f"{url!r} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{url!r} is not an http(s) URL with a host")
    return url.rstrip("/")


# The paths the commands add to a service's base URL: send's and loadgen's route, status's.
_ADDED_PATHS = ("/v1/track", "/readyz", "/metrics")


def base_url(url: str) -> str:
    """`http_url(url)` for a base URL, to which a command adds its paths (`/v1/track`,
    `/readyz`): UsageError for one ending with such a path (`http://127.0.0.1:3000/v1/track`
    would post to `.../v1/track/v1/track`, a 404), or with a query or a fragment. Any other
    path is a prefix a reverse proxy serves the service under, kept."""
    base = http_url(url)
    parts = urllib.parse.urlsplit(base)
    route = next((path for path in _ADDED_PATHS if parts.path.endswith(path)), "")
    if route or parts.query or parts.fragment or base.endswith(("?", "#")):
        root = f"{parts.scheme}://{parts.netloc}{parts.path.removesuffix(route).rstrip('/')}"
        what = f"ends with {route}, which the command adds" if route else "has a query or fragment"
        raise UsageError(f"{url!r} {what}: give the base URL alone, {root}")
    return base


def url_list(text: str) -> list[str]:
    """The NATS URLs of a comma-separated list (as NATS_URL holds them), blanks dropped;
    UsageError for one that is not a NATS URL (another scheme, a port that is no number),
    and for a list of none (`--nats ''`): nats-py would try its own default instead, and
    the mistake would read as NATS being down."""
    urls = [part.strip() for part in text.split(",") if part.strip()]
    if not urls:
        raise UsageError(f"--nats (or NATS_URL) {text!r} names no NATS URL (nats://host:port)")
    for url in urls:
        parts = urllib.parse.urlsplit(url if "://" in url else f"nats://{url}")
        try:
            port_ok = parts.port is None or parts.port > 0
        except ValueError:
            port_ok = False
        if parts.scheme not in NATS_SCHEMES or not parts.hostname or not port_ok:
            raise UsageError(
                f"{url!r} is not a NATS URL (nats://host:port, or tls://, ws://, wss://)"
            )
    return urls


def add_filter_options(parser: argparse.ArgumentParser) -> None:
    """The EventFilter options: repeatable field matches, a time range and free text."""
    group = parser.add_argument_group("filter (an option given twice matches either value)")
    for option, (field, text) in FILTER_OPTIONS.items():
        group.add_argument(
            option,
            dest=field,
            metavar=option[2:].upper().replace("-", "_"),
            action="append",
            default=[],
            help=f"match {text}",
        )
    group.add_argument(
        "--since",
        help="events at or after: RFC 3339 with its offset (2026-01-31T12:00:00Z), now, or an"
        " age (15m, 2d)",
    )
    group.add_argument("--until", help="events before: RFC 3339 with its offset, now, or an age")
    group.add_argument("--text", help="free text: all words must match")


def build_filter(args: argparse.Namespace, *, now: datetime) -> query_service_pb2.EventFilter:
    """The EventFilter the options describe; UsageError for a bad time or range, or an empty
    value: dropped, it would match every event (`--user "$U"` with U unset reading all)."""
    for option, value in (("--since", args.since), ("--until", args.until), ("--text", args.text)):
        if value is not None and not value.strip():
            raise UsageError(f"{option} is empty: leave it out to match any event")
    flt = query_service_pb2.EventFilter(text=args.text or "")
    for option, (field, _) in FILTER_OPTIONS.items():
        values = getattr(args, field)
        if not all(values):
            raise UsageError(f"{option} is empty: leave it out to match any value")
        getattr(flt, field).extend(values)
    since = parse_time(args.since, now=now) if args.since is not None else None
    until = parse_time(args.until, now=now) if args.until is not None else None
    # Equal bounds are an empty range, [since, until), answered with no events as the API does.
    if since is not None and until is not None and since.ToNanoseconds() > until.ToNanoseconds():
        raise UsageError("--since must not be after --until")
    if since is not None:
        flt.start_time.CopyFrom(since)
    if until is not None:
        flt.end_time.CopyFrom(until)
    return flt
