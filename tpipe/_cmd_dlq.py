"""`tpipe dlq list|replay|delete`: the dead letters, sending them back after a fix, and
removing those no fix can help.

A stage that gives up on a message stores its original bytes in TELEMETRY_DLQ on
`telemetry.dlq.v1.<stage>`, with the stage, the reason, the subject it came from and
how often it was delivered in headers. A message too large to be stored with those headers
is stored without its bytes, with their size and its sequence in its source stream, and is
skipped by `replay`. `list` shows them; `replay` publishes each one's
original bytes to its source subject again (original headers without the DLQ ones,
and a new Nats-Msg-Id), then deletes it from the DLQ. `delete` removes the entries it is
given by sequence: one whose source subject is no pipeline subject (an invalid app id) is
never replayed, and would otherwise stay until the DLQ's age limit.

Replay is idempotent: the new message id is derived from the DLQ entry's sequence and
time, so an entry published again after an interruption (published, not yet deleted) is
dropped by JetStream's duplicate window, and an entry of a DLQ stream made anew (its
sequences start again) is not taken for one replayed before; the events themselves are
stored once in OpenSearch whatever happens, as their document id is their event id. A
replayed message carries `Telemetry-Dlq-Replay-Of: <DLQ sequence>`, kept if it fails
again at any stage (the enricher passes it on), so `replay --wait` can tell which
replayed entries came back.
"""

from __future__ import annotations

import argparse
import asyncio
import email.header
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

import nats
import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.js import JetStreamContext
from telemetry.v1 import event_pb2

from pipeline import subjects
from tpipe._args import add_format_option, non_negative_float, url_list
from tpipe.errors import UsageError, describe

NATS_URL_ENV = "NATS_URL"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
CONNECT_TIMEOUT_S = 2.0
CONNECT_ATTEMPTS = 3
RECONNECT_WAIT_S = 0.5
PUBLISH_TIMEOUT_S = 5.0
DEFAULT_LIMIT = 100
DEFAULT_WAIT_S = 5.0
PROGRESS_EVERY = 100  # entries between progress lines when stderr is not a terminal
REPLAY_OF_HEADER = subjects.DLQ_REPLAY_OF_HEADER
# JetStream's answer to deleting a sequence the stream does not hold (deleted meanwhile:
# "no message found"; past its end: "stream store EOF"): "message delete failed", a 500.
MSG_DELETE_FAILED = 10057
# The stages that dead-letter messages.
STAGES = ("enricher", "indexer")
# The payload of an indexer dead letter holding one rejected event (not a batch).
ENRICHED_EVENT_SCHEMA = "telemetry.v1.EnrichedEvent"
REPLAY_MSG_ID_PREFIX = "dlq-replay"
# Where a replayed message may go: the pipeline's own input subjects, nothing else.
REPLAYABLE_PREFIXES = ("telemetry.raw.v1.", "telemetry.enriched.v1.")
DLQ_HEADERS = frozenset(
    {
        subjects.DLQ_STAGE_HEADER,
        subjects.DLQ_REASON_HEADER,
        subjects.DLQ_SUBJECT_HEADER,
        subjects.DLQ_DELIVERIES_HEADER,
        subjects.DLQ_SOURCE_SEQ_HEADER,
        subjects.DLQ_OMITTED_BYTES_HEADER,
        subjects.MSG_ID_HEADER,
        REPLAY_OF_HEADER,
    }
)

# JetStream's own headers (Nats-Expected-Stream, ...) were meant for the DLQ publish.
NATS_HEADER_PREFIX = "nats-"

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130

EXAMPLES = """
  tpipe dlq list
  tpipe dlq list --stage enricher --limit 20
  tpipe dlq list --format jsonl | jq .reason
  tpipe dlq replay --stage indexer --dry-run
  tpipe dlq replay --stage indexer
  tpipe dlq delete 6 7
"""


class DlqError(Exception):
    """The DLQ could not be read or written (NATS away, stream missing)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One dead letter."""

    seq: int
    stage: str
    reason: str
    source_subject: str
    deliveries: int
    time: str
    size: int
    headers: Mapping[str, str]
    data: bytes

    def to_json(self) -> dict[str, Any]:
        """The entry as one JSON line (without the payload bytes)."""
        return {
            "seq": self.seq,
            "stage": self.stage,
            "reason": self.reason,
            "source_subject": self.source_subject,
            "deliveries": self.deliveries,
            "time": self.time,
            "size": self.size,
            "replay_of": self.headers.get(REPLAY_OF_HEADER, ""),
            "omitted_bytes": self.omitted_bytes,
        }

    @property
    def omitted_bytes(self) -> int:
        """The size of a payload too large to be stored with the DLQ headers; 0 when the
        entry holds its original bytes."""
        try:
            return int(self.headers.get(subjects.DLQ_OMITTED_BYTES_HEADER, "0"))
        except ValueError:
            return 0


@dataclass(slots=True)
class Summary:
    """What a replay did."""

    replayed: int = 0
    skipped: int = 0
    failed: int = 0
    failed_again: int = 0

    def line(self, *, dry_run: bool) -> str:
        """One line for stderr."""
        verb = "would replay" if dry_run else "replayed"
        return (
            f"{verb} {self.replayed}, skipped {self.skipped}, "
            f"failed to publish {self.failed}, failed again {self.failed_again}"
        )


def add_parser(subparsers: Any) -> None:
    """Adds `dlq` with its `list` and `replay` subcommands to `tpipe`'s subparsers."""
    parser = subparsers.add_parser(
        "dlq",
        help="list, replay and delete dead letters",
        description="Lists the messages a stage gave up on, with their reasons, replays "
        "them to their source subjects after a fix, and deletes those no fix can help.",
        epilog="examples:\n" + EXAMPLES.strip("\n"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    nats_help = f"NATS URLs, comma-separated (env {NATS_URL_ENV}; default {DEFAULT_NATS_URL})"
    parser.add_argument(
        "--nats",
        default=os.environ.get(NATS_URL_ENV, "").strip() or DEFAULT_NATS_URL,
        help=nats_help,
    )
    commands = parser.add_subparsers(dest="dlq_command", metavar="{list,replay,delete}")
    commands.required = True
    listing = commands.add_parser("list", help="show dead letters, oldest first")
    listing.add_argument("--stage", help="only this stage's (enricher, indexer)")
    listing.add_argument(
        "--limit",
        type=_positive_int,
        default=DEFAULT_LIMIT,
        help=f"at most this many (default {DEFAULT_LIMIT})",
    )
    add_format_option(
        listing, {"table": "columns to read", "jsonl": "one dead letter a line, as JSON"}
    )
    listing.add_argument("--nats", default=argparse.SUPPRESS, help=nats_help)
    replay = commands.add_parser("replay", help="send dead letters back to their subjects")
    replay.add_argument("--stage", help="only this stage's (enricher, indexer)")
    replay.add_argument(
        "--dry-run", action="store_true", help="show what would be replayed, change nothing"
    )
    replay.add_argument(
        "--wait",
        type=non_negative_float,
        default=DEFAULT_WAIT_S,
        help="seconds to watch the DLQ afterwards for replayed entries failing again "
        f"(default {DEFAULT_WAIT_S:g}; 0 to not wait)",
    )
    replay.add_argument("--nats", default=argparse.SUPPRESS, help=nats_help)
    delete = commands.add_parser(
        "delete", help="delete dead letters by sequence (the SEQ column of list)"
    )
    delete.add_argument(
        "seqs", metavar="SEQ", type=_positive_int, nargs="+", help="a dead letter's sequence"
    )
    delete.add_argument("--nats", default=argparse.SUPPRESS, help=nats_help)


def run(args: argparse.Namespace) -> int:
    """Runs `dlq list`, `dlq replay` or `dlq delete`; returns the exit code. Its errors are
    said as `tpipe dlq list: ...` and so on, as other commands name themselves."""
    said = f"tpipe dlq {args.dlq_command}:"
    stage = getattr(args, "stage", None)
    if stage is not None and stage not in STAGES:
        print(
            f"{said} --stage {stage!r} is not a stage with a DLQ ({', '.join(STAGES)})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        if args.dlq_command == "list":
            return asyncio.run(
                _list(args.nats, stage, args.limit, args.format, sys.stdout, sys.stderr)
            )
        if args.dlq_command == "delete":
            return asyncio.run(_delete(args.nats, args.seqs, sys.stdout, sys.stderr))
        return asyncio.run(_replay(args.nats, stage, args.dry_run, args.wait, sys.stderr))
    except DlqError as err:
        print(f"{said} {err}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except UsageError as err:
        print(f"{said} {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        unfinished = args.dlq_command == "delete" or (
            args.dlq_command == "replay" and not args.dry_run
        )
        hint = f" (run {args.dlq_command} again to finish)" if unfinished else ""
        print(f"{said} interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


async def _connect(url: str) -> Client:

    async def quiet(_: Exception) -> None:
        return None  # the failure is reported once, below

    try:
        return await nats.connect(
            servers=url_list(url),
            name="tpipe-dlq",
            connect_timeout=CONNECT_TIMEOUT_S,
            max_reconnect_attempts=CONNECT_ATTEMPTS,
            reconnect_time_wait=RECONNECT_WAIT_S,
            error_cb=quiet,
        )
    except (OSError, TimeoutError, nats.errors.Error) as err:
        raise DlqError(f"NATS not reachable at {url}: {describe(err)}") from err


def _filter_subject(stage: str | None) -> str:
    return subjects.dlq_subject(stage) if stage else subjects.DLQ_SUBJECTS


async def survey(js: JetStreamContext, stage: str | None) -> tuple[int, int]:
    """How many dead letters there are (of `stage`, or all) and the DLQ's last sequence.

    Raises DlqError when the server has no DLQ stream or cannot be asked.
    """
    try:
        info = await js.stream_info(subjects.DLQ_STREAM, subjects_filter=_filter_subject(stage))
    except nats.js.errors.NotFoundError:
        raise DlqError(f"there is no {subjects.DLQ_STREAM} stream on this server") from None
    except (TimeoutError, nats.errors.Error) as err:
        raise DlqError(f"reading {subjects.DLQ_STREAM}: {err!r}") from err
    counts = info.state.subjects or {}
    return sum(counts.values()), info.state.last_seq


async def scan(
    js: JetStreamContext, stage: str | None, *, first_seq: int = 1, last_seq: int | None = None
) -> AsyncIterator[Entry]:
    """The dead letters (of `stage`, or all) from `first_seq` to `last_seq`, oldest first,
    read one at a time so that a DLQ of any size takes the memory of one message."""
    seq = max(first_seq, 1)
    subject = _filter_subject(stage)
    while last_seq is None or seq <= last_seq:
        try:
            raw = await js.get_msg(subjects.DLQ_STREAM, seq=seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            return
        except nats.js.errors.Error as err:
            raise DlqError(f"reading {subjects.DLQ_STREAM}: {err}") from err
        except (TimeoutError, nats.errors.Error) as err:
            raise DlqError(f"reading {subjects.DLQ_STREAM}: {err!r}") from err
        if raw.seq is None or (last_seq is not None and raw.seq > last_seq):
            return
        yield _entry(raw.seq, raw.subject or "", raw.headers or {}, raw.data, raw.time)
        seq = raw.seq + 1


async def entries(
    js: JetStreamContext, stage: str | None, *, limit: int | None = None, first_seq: int = 1
) -> list[Entry]:
    """The dead letters (of `stage`, or all) from `first_seq`, oldest first; the first
    `limit` only."""
    # get_msg answers "not found" for a missing stream as for the end of one.
    await survey(js, stage)
    found: list[Entry] = []
    async for entry in scan(js, stage, first_seq=first_seq):
        found.append(entry)
        if limit is not None and len(found) >= limit:
            break
    return found


def header_text(value: object) -> str:
    """A header value as its text. nats-py's stream reads hand a value with non-ASCII bytes
    (an OpenSearch reason quoting a field's value, an app id) over as an email.header.Header,
    whose str() makes each such byte a replacement character: its bytes are read as UTF-8."""
    if not isinstance(value, email.header.Header):
        return str(value)
    return "".join(
        part.decode("utf-8", "replace") if isinstance(part, bytes) else part
        for part, _ in email.header.decode_header(value)
    )


def _entry(
    seq: int, subject: str, raw_headers: Mapping[str, object], data: bytes | None, stamp: object
) -> Entry:
    headers = {str(key): header_text(value) for key, value in raw_headers.items()}
    try:
        deliveries = int(headers.get(subjects.DLQ_DELIVERIES_HEADER, "0"))
    except ValueError:
        deliveries = 0
    if isinstance(stamp, datetime):
        when = stamp.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    else:
        when = str(stamp or "")[:20]
    return Entry(
        seq=seq,
        stage=headers.get(subjects.DLQ_STAGE_HEADER, subject.rsplit(".", 1)[-1]),
        reason=headers.get(subjects.DLQ_REASON_HEADER, ""),
        source_subject=headers.get(subjects.DLQ_SUBJECT_HEADER, ""),
        deliveries=deliveries,
        time=when,
        size=len(data or b""),
        headers=dict(headers),
        data=data or b"",
    )


async def _list(url: str, stage: str | None, limit: int, fmt: str, out: TextIO, err: TextIO) -> int:
    nc = await _connect(url)
    try:
        js = nc.jetstream()
        total, _ = await survey(js, stage)
        found = await entries(js, stage, limit=limit)
    finally:
        await nc.close()
    if total > len(found):
        err.write(f"the first {len(found)} of {total} dead letters (--limit for more)\n")
    if fmt == "jsonl":
        for entry in found:
            out.write(json.dumps(entry.to_json(), ensure_ascii=False) + "\n")
        return EXIT_OK
    out.write(_table(found))
    return EXIT_OK


def _table(found: Sequence[Entry]) -> str:
    if not found:
        return "no dead letters\n"
    rows = [("SEQ", "TIME", "STAGE", "SOURCE SUBJECT", "DELIV", "BYTES", "REASON")]
    rows += [
        (
            str(e.seq),
            e.time,
            e.stage,
            e.source_subject,
            str(e.deliveries),
            str(e.size),
            e.reason[:100],
        )
        for e in found
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def replay_headers(entry: Entry) -> dict[str, str]:
    """The headers a replayed message carries: the original ones (without the DLQ's and
    JetStream's own), a new message id, and the DLQ entry it comes from."""
    out = {
        k: v
        for k, v in entry.headers.items()
        if k not in DLQ_HEADERS and not k.lower().startswith(NATS_HEADER_PREFIX)
    }
    # The time as well as the sequence: a DLQ stream made anew numbers its entries from 1
    # again, and an id seen within the duplicate window would be dropped, then deleted.
    out[subjects.MSG_ID_HEADER] = f"{REPLAY_MSG_ID_PREFIX}:{entry.stage}:{entry.seq}:{entry.time}"
    out[REPLAY_OF_HEADER] = str(entry.seq)
    if out.get(subjects.SCHEMA_HEADER) == ENRICHED_EVENT_SCHEMA:
        out[subjects.SCHEMA_HEADER] = subjects.ENRICHED_SCHEMA
    return out


def replay_payload(entry: Entry) -> bytes:
    """The bytes to publish: the original ones, except that one event the indexer
    rejected (stored alone) goes back as a batch of one, the enriched subject's schema.

    Raises DecodeError when such an event's bytes are not an EnrichedEvent.
    """
    if entry.headers.get(subjects.SCHEMA_HEADER) != ENRICHED_EVENT_SCHEMA:
        return entry.data
    event = event_pb2.EnrichedEvent.FromString(entry.data)
    return event_pb2.EnrichedBatch(events=[event]).SerializeToString()


def replayable(entry: Entry) -> bool:
    """True when the entry knows a pipeline subject to go back to."""
    return entry.source_subject.startswith(REPLAYABLE_PREFIXES) and subjects.valid_token(
        subjects.app_of(entry.source_subject)
    )


async def _replay(url: str, stage: str | None, dry_run: bool, wait_s: float, err: TextIO) -> int:
    nc = await _connect(url)
    summary = Summary()
    replayed: set[str] = set()
    try:
        js = nc.jetstream()
        # The entries there now, no later ones: a replayed message that fails again
        # comes back after `last_seq` and is left for the next run.
        total, last_seq = await survey(js, stage)
        number = 0
        async for entry in scan(js, stage, last_seq=last_seq):
            number += 1
            if not replayable(entry):
                summary.skipped += 1
                err.write(
                    f"skip seq {entry.seq}: source subject {entry.source_subject!r} "
                    "is not a pipeline subject\n"
                )
            elif entry.omitted_bytes:
                summary.skipped += 1
                source_seq = entry.headers.get(subjects.DLQ_SOURCE_SEQ_HEADER, "?")
                err.write(
                    f"skip seq {entry.seq}: its {entry.omitted_bytes} bytes were too large to "
                    f"store; the original is sequence {source_seq} of the stream of "
                    f"{entry.source_subject!r}\n"
                )
            elif dry_run:
                if _payload(entry, err) is None:
                    summary.failed += 1
                else:
                    summary.replayed += 1
            elif await _replay_one(js, entry, err):
                summary.replayed += 1
                replayed.add(str(entry.seq))
            else:
                summary.failed += 1
            _progress(err, number, max(total, number), summary.line(dry_run=dry_run))
        if number and err.isatty():
            err.write("\n")
        if replayed and wait_s > 0:
            # Every stage's: a replayed raw message may fail again at the indexer.
            summary.failed_again = await _watch_again(js, None, last_seq, replayed, wait_s)
    except DlqError:
        err.write(summary.line(dry_run=dry_run) + " before stopping\n")
        raise
    finally:
        await nc.close()
    err.write(summary.line(dry_run=dry_run) + "\n")
    return EXIT_OK if summary.failed == 0 and summary.failed_again == 0 else EXIT_FAILURE


def _progress(err: TextIO, number: int, total: int, line: str) -> None:
    """Redraws one line on a terminal; elsewhere a line every PROGRESS_EVERY."""
    if err.isatty():
        err.write(f"\r{number}/{total} {line}")
        err.flush()
    elif number % PROGRESS_EVERY == 0:
        err.write(f"{number}/{total} {line}\n")
        err.flush()


def _payload(entry: Entry, err: TextIO) -> bytes | None:
    """`replay_payload(entry)`, or None (said on `err`) when its bytes cannot be replayed."""
    try:
        return replay_payload(entry)
    except DecodeError as error:
        err.write(f"\nseq {entry.seq}: not an EnrichedEvent: {error}\n")
        return None


async def _replay_one(js: JetStreamContext, entry: Entry, err: TextIO) -> bool:
    payload = _payload(entry, err)
    if payload is None:
        return False
    try:
        await js.publish(
            entry.source_subject,
            payload,
            timeout=PUBLISH_TIMEOUT_S,
            headers=replay_headers(entry),
        )
    except (TimeoutError, nats.errors.Error) as error:
        err.write(f"\nseq {entry.seq}: publish to {entry.source_subject} failed: {error!r}\n")
        return False
    try:
        await js.delete_msg(subjects.DLQ_STREAM, entry.seq)
    except (TimeoutError, nats.errors.Error) as error:
        if _not_held(error):
            return True  # gone already: a concurrent replay deleted it
        # Published but still listed: a later replay republishes it under the same id,
        # which JetStream drops as a duplicate.
        err.write(f"\nseq {entry.seq}: replayed, but not deleted from the DLQ: {error!r}\n")
    return True


async def _watch_again(
    js: JetStreamContext, stage: str | None, after_seq: int, replayed: set[str], wait_s: float
) -> int:
    """Counts replayed entries that came back to the DLQ within `wait_s` seconds."""
    deadline = time.monotonic() + wait_s
    again: set[str] = set()
    seen = after_seq
    while True:
        async for entry in scan(js, stage, first_seq=seen + 1):
            seen = entry.seq
            origin = entry.headers.get(REPLAY_OF_HEADER, "")
            if origin in replayed:
                again.add(origin)
        if time.monotonic() >= deadline or again == replayed:
            return len(again)
        await asyncio.sleep(0.5)


async def _delete(url: str, seqs: Sequence[int], out: TextIO, err: TextIO) -> int:
    """Deletes the dead letters at `seqs`, saying each one deleted on `out` and each one not
    there on `err`; 0 when all were there, 1 otherwise."""
    nc = await _connect(url)
    deleted = missing = 0
    try:
        js = nc.jetstream()
        await survey(js, None)  # no DLQ stream is said as such, not as each entry missing
        for seq in dict.fromkeys(seqs):
            found = [entry async for entry in scan(js, None, first_seq=seq, last_seq=seq)]
            if found and await _delete_one(js, seq):
                entry = found[0]
                deleted += 1
                out.write(
                    f"deleted seq {seq}: {entry.stage}, {entry.source_subject or '-'}, "
                    f"{entry.reason[:100]}\n"
                )
            else:
                missing += 1
                err.write(f"seq {seq}: no such dead letter in {subjects.DLQ_STREAM}\n")
    except DlqError:
        err.write(f"deleted {deleted}, not found {missing} before stopping\n")
        raise
    finally:
        await nc.close()
    err.write(f"deleted {deleted}, not found {missing}\n")
    return EXIT_OK if missing == 0 else EXIT_FAILURE


async def _delete_one(js: JetStreamContext, seq: int) -> bool:
    """Deletes one DLQ entry; False when it is gone already (deleted meanwhile)."""
    try:
        await js.delete_msg(subjects.DLQ_STREAM, seq)
    except (TimeoutError, nats.errors.Error) as error:
        if _not_held(error):
            return False
        raise DlqError(f"deleting seq {seq} from {subjects.DLQ_STREAM}: {error!r}") from error
    return True


def _not_held(error: Exception) -> bool:
    """True when JetStream refused a delete because the DLQ does not hold the sequence."""
    return isinstance(error, nats.js.errors.APIError) and error.err_code == MSG_DELETE_FAILED
