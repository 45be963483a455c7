"""Argument parsing, help, usage errors and the service dispatch of `tpipe`."""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from nats.js.api import RawStreamMsg, StreamConfig, StreamInfo, StreamState

from tpipe import _cmd_dlq, _commands, cli, errors
from tpipe._args import Parser, add_filter_options, build_filter, url_list
from tpipe._events_file import parse_events
from tpipe.errors import UsageError

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def filter_args(*argv: str) -> argparse.Namespace:
    parser = Parser(prog="t")
    add_filter_options(parser)
    return parser.parse_args(list(argv))


def test_filter_options_fill_the_event_filter() -> None:
    args = filter_args(
        "--user", "u1", "--user", "u2", "--event", "open", "--app-version", "2.0",
        "--os", "iOS", "--country", "GB", "--app", "shop", "--session", "s1",
        "--since", "1h", "--until", "2026-03-01T11:30:00Z", "--text", "checkout",
    )  # fmt: skip

    flt = build_filter(args, now=NOW)

    assert list(flt.user_ids) == ["u1", "u2"]
    assert list(flt.event_names) == ["open"]
    assert list(flt.app_versions) == ["2.0"]
    assert list(flt.device_os) == ["iOS"]
    assert list(flt.country_codes) == ["GB"]
    assert list(flt.app_ids) == ["shop"]
    assert list(flt.session_ids) == ["s1"]
    assert flt.start_time.ToDatetime(tzinfo=UTC) == datetime(2026, 3, 1, 11, 0, tzinfo=UTC)
    assert flt.end_time.ToDatetime(tzinfo=UTC) == datetime(2026, 3, 1, 11, 30, tzinfo=UTC)
    assert flt.text == "checkout"


def test_no_options_is_an_empty_filter() -> None:
    flt = build_filter(filter_args(), now=NOW)
    assert not flt.HasField("start_time")
    assert not flt.user_ids
    assert flt.text == ""


def test_since_after_until_is_refused() -> None:
    with pytest.raises(UsageError, match=r"^--since must not be after --until$"):
        build_filter(filter_args("--since", "1h", "--until", "2h"), now=NOW)


def test_since_equal_to_until_is_the_empty_range_the_api_takes() -> None:
    at = "2026-11-27T00:00:00Z"

    flt = build_filter(filter_args("--since", at, "--until", at), now=NOW)

    assert flt.start_time == flt.end_time
    assert flt.start_time.ToJsonString() == at


def test_a_range_ending_at_a_leap_second_ends_where_the_gateway_puts_it() -> None:
    args = filter_args("--since", "2026-12-31T23:59:59.9999999Z", "--until", "2026-12-31T23:59:60Z")

    flt = build_filter(args, now=NOW)

    assert (flt.start_time.seconds, flt.start_time.nanos) == (1_798_761_599, 999_999_900)
    assert (flt.end_time.seconds, flt.end_time.nanos) == (1_798_761_599, 999_999_999)


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--user", "u1", "--user", ""], "--user"),
        (["--event", ""], "--event"),
        (["--since", ""], "--since"),
        (["--until", " "], "--until"),
        (["--text", "  "], "--text"),
    ],
)
def test_an_empty_value_is_refused_not_dropped(argv: list[str], option: str) -> None:
    # `--user "$U"` with U unset: dropped, the filter would match every user's events.
    with pytest.raises(UsageError, match=f"^{option} is empty: leave it out"):
        build_filter(filter_args(*argv), now=NOW)


@pytest.mark.parametrize(
    "argv",
    [
        ["query", "--page-size", "0"],
        ["query", "--format", "xml"],
        ["query", "--nope"],
        ["aggregate", "--by", "color"],
        ["tail", "--count", "-1"],
        ["tail", "--user", ""],
        ["query", "--since", ""],
        ["aggregate", "--by", "event", "--event", ""],
        ["send"],
        ["loadgen", "--duration", "0"],
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"tpipe {argv[0]}: ")


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["query", "--deadline", "inf"], "--deadline"),
        (["send", "f.json", "--timeout", "inf"], "--timeout"),
        (["loadgen", "--rate", "inf"], "--rate"),
        (["loadgen", "--duration", "nan"], "--duration"),
        (["status", "--interval", "inf"], "--interval"),
        (["dlq", "replay", "--wait", "inf"], "--wait"),
        (["dlq", "replay", "--wait", "-1"], "--wait"),
        (["dlq", "replay", "--wait", "nan"], "--wait"),
    ],
)
def test_seconds_and_rates_must_be_finite_and_not_negative(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:  # refused while parsing: nothing runs
        _commands._parse(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"argument {option}: " in err


@pytest.mark.parametrize(
    "argv",
    [
        ["query", "--retries", "-1"],
        ["aggregate", "--retries", "-1"],
        ["send", "f.json", "--retries", "-1"],
        ["loadgen", "--retries", "-1"],
        ["query", "--retries", "two"],
    ],
)
def test_retries_must_be_a_whole_number_not_below_0(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:  # refused while parsing, not taken as 0
        _commands._parse(argv)
    assert done.value.code == 2
    assert "argument --retries: " in capsys.readouterr().err


def test_no_retries_is_allowed() -> None:
    assert _commands._parse(["query", "--retries", "0"]).retries == 0
    assert _commands._parse(["send", "f.json", "--retries", "0"]).retries == 0


def test_dlq_list_help_shows_the_limit_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _commands._parse(["dlq", "list", "--help"])
    assert "at most this many (default 100)" in capsys.readouterr().out
    assert _commands._parse(["dlq", "list"]).limit == 100


# Variables the options' defaults are read from: unset, the help shows the built-in ones.
DEFAULT_SOURCES = (
    "NATS_URL",
    "OPENSEARCH_URL",
    "TPIPE_QUERY_TARGET",
    "TPIPE_GATEWAY_URL",
    "TPIPE_WRITE_KEY",
    "TPIPE_ENRICHER_URL",
    "TPIPE_INDEXER_URL",
)


def _command_parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every `tpipe` command's parser and those of its subcommands (`dlq list`)."""
    for command in sorted(_commands.COMMANDS):
        _, sub = _commands.parser_of(command)
        found = [(f"tpipe {command}", sub.choices[command])]
        while found:
            name, parser = found.pop()
            yield name, parser
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    found += [(f"{name} {n}", p) for n, p in action.choices.items()]


def test_every_option_with_a_default_says_it_in_its_help(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in DEFAULT_SOURCES:
        monkeypatch.delenv(name, raising=False)
    checked = []
    for command, parser in _command_parsers():
        for action in parser._actions:
            default = action.default
            # By identity: 0 == False, and a default of 0 must say so too.
            if not action.option_strings or any(
                default is nothing for nothing in (None, argparse.SUPPRESS, False)
            ):
                continue
            if default in ([], ""):
                continue
            shown = f"{default:g}" if isinstance(default, float) else str(default)
            assert f"(default {shown}" in (action.help or "") or f"; default {shown})" in (
                action.help or ""
            ), (command, action.option_strings, action.help)
            checked.append((command, action.option_strings[0]))
    assert ("tpipe query", "--format") in checked
    assert ("tpipe dlq list", "--format") in checked
    assert ("tpipe status", "--interval") in checked
    assert ("tpipe tail", "--nats") in checked


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["query"], ["(default table)", "(default 50, at most 1000)", "(default 10)"]),
        (["aggregate"], ["(default text)", "(default 10)", "default 127.0.0.1:50053)"]),
        (["tail"], ["(default table)", "default nats://127.0.0.1:4222)"]),
        (["status"], ["(default table)", "(default 2)", "(default 1)"]),
        (["dlq", "list"], ["(default table)", "(default 100)"]),
        (["send", "x.json"], ["(default 100)", "(default 5)", "(default 30)"]),
    ],
)
def test_help_shows_real_defaults_only(
    argv: list[str],
    shown: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in DEFAULT_SOURCES:
        monkeypatch.delenv(name, raising=False)

    assert cli.main([*argv, "--help"]) == 0

    out = " ".join(capsys.readouterr().out.split())  # as if never wrapped
    for text in shown:
        assert text in out
    assert "default: None" not in out
    assert "default None" not in out


def test_help_never_shows_a_default_taken_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TPIPE_WRITE_KEY", "wk-secret-from-env")
    monkeypatch.setenv("NATS_URL", "nats://user:secret@nats:4222")

    for command in ("send", "loadgen", "tail", "dlq", "status"):
        assert cli.main([command, "--help"]) == 0
        assert "secret" not in capsys.readouterr().out


def test_dlq_replay_may_not_wait() -> None:
    assert _commands._parse(["dlq", "replay", "--wait", "0"]).wait == 0.0


def test_bad_input_found_while_running_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["query", "--since", "last tuesday"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "last tuesday" in err


def test_loadgen_refuses_remote_targets_unless_allowed(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["loadgen", "--target-url", "http://10.1.2.3:3000", "--key", "k"]) == 2
    assert "--allow-remote" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(_commands.COMMANDS))
def test_every_command_has_help_with_examples(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"usage: tpipe {command}" in out
    assert "examples:\n" in out
    assert f"  tpipe {command}" in out.split("examples:\n", 1)[1]


def test_top_level_help_lists_services_commands_and_exit_codes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("gateway", "enricher", "indexer", "query", "aggregate", "tail", "send", "loadgen"):
        assert f"\n  {name} " in out
    assert "exit codes:" in out
    assert "  3  a server" in out


def test_unknown_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_services_are_still_dispatched_to_their_own_main(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[str, list[str] | None]] = []

    def fake(name: str):  # type: ignore[no-untyped-def]
        return lambda argv: seen.append((name, argv)) or 7

    monkeypatch.setattr(cli, "_service_main", fake)
    assert cli.main(["indexer", "--x"]) == 7
    assert seen == [("indexer", ["--x"])]


def test_gateway_help_is_the_services_own(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["gateway", "--help"]) == 0
    assert "GATEWAY_HTTP_PORT" in capsys.readouterr().out


@pytest.mark.parametrize(
    "data",
    [
        b'[{"event_id": "a"}, {"event_id": "b"}]',
        b'{"sent_at": "2026-01-01T00:00:00Z", "events": [{"event_id": "a"}, {"event_id": "b"}]}',
        b'{"event_id": "a"}\n\n{"event_id": "b"}\n',
        b'  \n[{"event_id": "a"},\n {"event_id": "b"}]\n',
        b'\xef\xbb\xbf[{"event_id": "a"}, {"event_id": "b"}]',
        b'\xef\xbb\xbf{"event_id": "a"}\n{"event_id": "b"}\n',
    ],
)
def test_events_files_in_every_accepted_shape(data: bytes) -> None:
    assert [e["event_id"] for e in parse_events(data, source="f")] == ["a", "b"]


@pytest.mark.parametrize(
    "data", [b'{"event_id": "a"}', b'{\n  "event_id": "a",\n  "metadata": {"k": "v"}\n}\n']
)
def test_a_single_event_object_is_one_event(data: bytes) -> None:
    assert [e["event_id"] for e in parse_events(data, source="f")] == ["a"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"  \n", "empty"),
        (b'{"event_id": "a"}\n{oops\n', "f:2: not JSON"),
        # A pretty-printed array with a trailing comma: orjson's own line and column.
        (
            b'\n[\n  {"event_id": "a"},\n  {"event_id": "b"},\n]\n',
            r"f:4: not JSON \(trailing comma is not allowed at column 20\)",
        ),
        (
            b'{\n  "event_id": "a",\n  "metadata": {"k": "v"\n}\n',
            r"f:5: not JSON \(unexpected end of data at column 1\)",
        ),
        # NDJSON whose first line is broken: that line is named, its position told once.
        (b'{"event_id": "x"\n{"event_id": "y"}\n', r"f:1: not JSON \([^)]* at column 17\);"),
    ],
)
def test_bad_events_files_name_the_problem(data: bytes, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_events(data, source="f")


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"42", "number"),
        (b"  -1.5e3 \n\n", "number"),
        (b'"an event"\n', "string"),
        (b"true", "boolean"),
        (b"\xef\xbb\xbfnull\n", "null"),
    ],
)
def test_an_input_that_is_one_scalar_is_refused(data: bytes, kind: str) -> None:
    """It can never be a batch: sent, it came back NOT_AN_OBJECT with exit 1."""
    with pytest.raises(UsageError, match=f"^f: the input is one JSON {kind}, not an event; "):
        parse_events(data, source="f")


@pytest.mark.parametrize(
    ("data", "events"),
    [(b"[42]", [42]), (b'{"event_id": "a"}\n42\n', [{"event_id": "a"}, 42]), (b"1\n2\n", [1, 2])],
)
def test_scalars_among_events_are_left_to_the_gateway(data: bytes, events: list[object]) -> None:
    assert parse_events(data, source="f") == events


def test_send_of_one_scalar_is_a_usage_error_before_anything_is_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "f.json"
    path.write_text("42\n")
    closed = "http://127.0.0.1:9"  # discard port: a send would fail with exit 3

    assert cli.main(["send", str(path), "--gateway", closed, "--key", "k"]) == 2
    assert capsys.readouterr().err == (
        f"tpipe send: {path}: the input is one JSON number, not an event; "
        "expected a JSON array or one event per line\n"
    )


async def _interrupted(*_: object) -> int:
    raise KeyboardInterrupt


def test_an_interrupted_dlq_command_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_cmd_dlq, "_replay", _interrupted)
    args = argparse.Namespace(dlq_command="replay", nats="nats://x", dry_run=False, wait=0.0)

    assert _cmd_dlq.run(args) == 130
    assert capsys.readouterr().err == (
        "tpipe dlq replay: interrupted (run replay again to finish)\n"
    )


def test_an_interrupted_dlq_list_does_not_ask_for_a_replay(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_cmd_dlq, "_list", _interrupted)

    assert _commands.run(["dlq", "list"]) == 130
    assert capsys.readouterr().err == "tpipe dlq list: interrupted\n"


def test_dlq_list_into_a_pipe_closed_early_exits_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    async def reader_gone(*_: object) -> int:
        raise BrokenPipeError(32, "Broken pipe")  # `tpipe dlq list | head -1`

    monkeypatch.setattr(_cmd_dlq, "_list", reader_gone)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # closed by the handler

    assert _commands.run(["dlq", "list"]) == 0


async def test_dlq_entries_stop_reading_at_the_limit() -> None:
    class Stream:
        def __init__(self) -> None:
            self.reads = 0

        async def stream_info(self, name: str, subjects_filter: str) -> StreamInfo:
            state = StreamState(
                messages=5, bytes=5, first_seq=1, last_seq=5, consumer_count=0, subjects={}
            )
            return StreamInfo(config=StreamConfig(name=name), state=state)

        async def get_msg(self, stream: str, *, seq: int, subject: str, next: bool) -> object:
            self.reads += 1
            return RawStreamMsg(subject="telemetry.dlq.v1.indexer", seq=seq, data=b"x", headers={})

    js = Stream()
    found = await _cmd_dlq.entries(js, None, limit=2)  # type: ignore[arg-type]

    assert [entry.seq for entry in found] == [1, 2]
    assert js.reads == 2


def test_nats_urls_are_checked() -> None:
    assert url_list(" nats://a:4222, tls://b:4223,,localhost:4222 ") == [
        "nats://a:4222",
        "tls://b:4223",
        "localhost:4222",
    ]
    for wrong in ("http://h:4222", "nats://h:abc", "nats://:4222", "nats://h:0"):
        with pytest.raises(errors.UsageError, match="is not a NATS URL"):
            url_list(wrong)


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["replay", "--stage", "x"], "--stage 'x' is not a stage with a DLQ (enricher, indexer)"),
        (["list", "--stage", "x"], "--stage 'x' is not a stage with a DLQ (enricher, indexer)"),
        (["replay", "--nats", "http://h:4222"], "'http://h:4222' is not a NATS URL"),
        (["list", "--bogus"], "unrecognized arguments: --bogus (see tpipe dlq list --help)"),
        (["replay", "--bogus"], "unrecognized arguments: --bogus (see tpipe dlq replay --help)"),
    ],
)
def test_dlq_errors_name_the_subcommand(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tpipe <command>: <what went wrong>`, the command being `dlq list` or `dlq replay`."""
    assert cli.main(["dlq", *argv]) == errors.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"tpipe dlq {argv[0]}: {said}")
    assert err.count("\n") == 1


def test_an_unreachable_nats_is_said_by_the_dlq_subcommand(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def unreachable(*_: object) -> int:
        raise _cmd_dlq.DlqError("NATS not reachable at nats://127.0.0.1:9: refused")

    monkeypatch.setattr(_cmd_dlq, "_replay", unreachable)

    assert cli.main(["dlq", "replay", "--nats", "nats://127.0.0.1:9"]) == errors.EXIT_UNAVAILABLE
    assert capsys.readouterr().err == (
        "tpipe dlq replay: NATS not reachable at nats://127.0.0.1:9: refused\n"
    )


def test_dlq_with_a_wrong_nats_url_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(dlq_command="list", stage=None, nats="http://h:4222", limit=10)
    args.format = "table"

    assert _cmd_dlq.run(args) == errors.EXIT_USAGE
    assert "'http://h:4222' is not a NATS URL" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["tail", "--nats", ""],
        ["tail", "--nats", " , "],
        ["dlq", "list", "--nats", ""],
        ["dlq", "replay", "--nats", " , "],
        ["status", "--once", "--nats", ""],
    ],
)
def test_a_nats_option_naming_no_url_is_a_usage_error_not_an_outage(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == errors.EXIT_USAGE
    err = capsys.readouterr().err
    assert "names no NATS URL" in err
    assert err.count("\n") == 1


def test_a_nats_url_variable_naming_no_url_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NATS_URL", " , ")

    assert cli.main(["dlq", "list"]) == errors.EXIT_USAGE
    assert "--nats (or NATS_URL) ',' names no NATS URL" in capsys.readouterr().err
