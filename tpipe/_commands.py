"""The people commands: one argparse parser, one place that turns errors into exit codes."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Callable

from tpipe._args import Parser, Subparsers
from tpipe.errors import EXIT_USAGE, TpipeError

# command -> (module that adds it, one-line summary for `tpipe --help`). A module either
# has `register(subparsers, name)` and sets an async `run` default, or (like `dlq`) has
# `add_parser(subparsers)` and a synchronous module-level `run(args) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "query": ("tpipe._cmd_query", "list events matching a filter (gRPC QueryEvents)"),
    "aggregate": ("tpipe._cmd_query", "count events by a field and over time, with bars"),
    "tail": ("tpipe._cmd_tail", "follow enriched events live from NATS"),
    "send": ("tpipe._cmd_send", "post events from a JSON/NDJSON file through the gateway"),
    "loadgen": ("tpipe._cmd_loadgen", "simulated devices batching like the Swift client"),
    "dlq": ("tpipe._cmd_dlq", "list dead letters, replay them after a fix, delete them"),
    "status": ("tpipe._cmd_status", "live one-screen pipeline status: rates, lag, DLQ, health"),
}

EXIT_CODES = """exit codes:
  0  success
  1  the command ran but something failed (events rejected, batches failed)
  2  bad arguments or bad input (also: refused key, invalid filter)
  3  a server is not reachable or stayed unavailable
  130  interrupted"""


def parser_of(command: str) -> tuple[Parser, Subparsers]:
    """`tpipe`'s parser with `command` added, and its subparsers (`sub.choices[command]`)."""
    parser = Parser(prog="tpipe", description="The telemetry pipeline's command line.")
    sub: Subparsers = parser.add_subparsers(dest="command", required=True)
    module = importlib.import_module(COMMANDS[command][0])
    if hasattr(module, "register"):
        register: Callable[[Subparsers, str], None] = module.register
        register(sub, command)
    else:
        module.add_parser(sub)
        sync_run: Callable[[argparse.Namespace], int] = module.run
        sub.choices[command].set_defaults(sync_run=sync_run)
    return parser, sub


def _parse(argv: list[str]) -> argparse.Namespace:
    command = argv[0]
    parser, sub = parser_of(command)
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the command's parser, so the message names the command
        _chosen(sub.choices[command], args).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _chosen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the subcommand `args` chose under `parser` (`dlq replay`'s under
    `dlq`'s), or `parser` itself when it has none."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            name = getattr(args, action.dest, None)
            if name in action.choices:
                return _chosen(action.choices[name], args)
    return parser


def run(argv: list[str]) -> int:
    """Parses `argv` (starting with the command), runs it, returns the exit code."""
    command = argv[0]
    try:
        args = _parse(argv)
    except SystemExit as done:  # --help (0) or a usage error (2, already printed)
        return done.code if isinstance(done.code, int) else EXIT_USAGE
    sync_run: Callable[[argparse.Namespace], int] | None = getattr(args, "sync_run", None)
    try:
        if sync_run is not None:  # the command handles its own errors and event loop
            return sync_run(args)
        code: int = asyncio.run(args.run(args))
    except TpipeError as err:
        print(f"tpipe {command}: {err}", file=sys.stderr)
        return err.exit_code
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or a second one (loadgen)
        print(f"tpipe {command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader (head, less) went away: not an error of ours
        sys.stderr.close()
        return 0
    return code
