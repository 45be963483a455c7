"""Retention: which daily indices are past their age (pure), and the periodic deleter.

Only names of the exact form `<prefix>YYYY-MM-DD` with a real date are ever
candidates; anything else matching `<prefix>*` is left alone. In `<prefix>undated` (events
whose client day is absurd or far from their arrival), the events that arrived before the
retention's days are deleted, as their arrival day's index would be.

A daily index is kept for the retention's full days after its day ends (with 30, the
index of 1 March is kept through 31 March and deleted on 1 April), and deleted once both
its day and the day it was created are past that. The second keeps what a device whose
clock runs behind sends late: its events go to the index of their own (old) day, which a
first late event creates again after retention deleted it; that index is then kept for the
retention's days, not deleted within the hour with the events just accepted.

The periodic deleter goes by the earlier of this host's day and OpenSearch's (the node it
asks): a clock set ahead on one side (a bad RTC, a VM restored with a wrong time) would
otherwise make every daily index look expired and delete them all in one run. A clock set
behind only delays deletion. When OpenSearch's time cannot be read for want of permission
(`cluster:monitor/nodes/stats`), this host's day alone decides, and each run says so.

So that retention leaves evidence without a line an hour: the indexer says at start whether it
is on; a run that deletes nothing says so at INFO on the first such run of each day (DEBUG on
the others); and an index kept only for having been created recently is named once.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Protocol

from indexer.documents import UNDATED
from indexer.errors import IndexerError, SearchUnavailableError
from indexer.metrics import Metrics
from pipeline import tasks

log = logging.getLogger(__name__)


def index_day(name: str, *, prefix: str) -> date | None:
    """The day of a daily index name, None for any other name."""
    match = re.fullmatch(re.escape(prefix) + r"([0-9]{4})-([0-9]{2})-([0-9]{2})", name)
    if match is None:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


def expired(
    created: Mapping[str, date | None], *, prefix: str, today: date, keep_days: int
) -> list[str]:
    """The daily indices of `created` (name -> the UTC day it was created, None when not
    known) kept `keep_days` full days after both their day and their creation day, and past
    that on `today`; none when keep_days is 0.

    An index of day D is kept through D + keep_days and deleted from D + keep_days + 1 on:
    with keep_days = 1, yesterday's index is kept all of today.
    """
    if keep_days <= 0:
        return []
    oldest_kept = today - timedelta(days=keep_days)
    out = []
    for name, created_on in created.items():
        day = index_day(name, prefix=prefix)
        if day is None or day >= oldest_kept:
            continue
        if created_on is not None and created_on >= oldest_kept:
            continue  # created again by late events: kept for the retention's days
        out.append(name)
    return sorted(out)


def kept_for_creation(
    created: Mapping[str, date | None], *, prefix: str, today: date, keep_days: int
) -> dict[str, date]:
    """The daily indices of `created` that `expired` keeps only for the day they were created
    (their own day is past the retention's days), each with the day it is deleted on."""
    if keep_days <= 0:
        return {}
    oldest_kept = today - timedelta(days=keep_days)
    out = {}
    for name, created_on in sorted(created.items()):
        day = index_day(name, prefix=prefix)
        if day is None or day >= oldest_kept or created_on is None or created_on < oldest_kept:
            continue  # kept by its name's day, or expired
        out[name] = created_on + timedelta(days=keep_days + 1)
    return out


def announce(*, prefix: str, keep_days: int, interval_s: float) -> None:
    """Logs, at start, whether retention runs and how: otherwise nothing would show it does
    until it first deletes an index, days later."""
    if keep_days <= 0:
        log.info("retention off: daily indices are kept for ever", extra={"keep_days": 0})
        return
    log.info(
        "retention on: daily indices %s* kept %d full days, checked every %g s",
        prefix,
        keep_days,
        interval_s,
        extra={"keep_days": keep_days, "interval_s": interval_s},
    )


@dataclass
class RunNotes:
    """What runs have said already, so that the next one says only what is new: the day one
    last said it deleted nothing, and the indices named as kept for their creation day."""

    quiet_day: date | None = None
    kept_named: set[str] = field(default_factory=set)


class IndexAdmin(Protocol):
    """What retention needs from OpenSearch."""

    async def index_creation_days(self) -> dict[str, date | None]:
        """Each index of the prefix, and the UTC day it was created (None: not known)."""
        ...

    async def delete_index(self, name: str) -> bool:
        """Deletes one index; False when it was gone already."""
        ...

    async def delete_arrived_before(self, name: str, day: date) -> int:
        """Deletes the documents of `name` that arrived before `day`; returns how many."""
        ...

    async def cluster_day(self) -> date:
        """The UTC day by OpenSearch's own clock."""
        ...


async def run_once(
    admin: IndexAdmin,
    *,
    prefix: str,
    keep_days: int,
    today: date,
    metrics: Metrics | None = None,
    notes: RunNotes | None = None,
) -> list[str]:
    """Deletes the expired daily indices, and the events of `<prefix>undated` that arrived
    before the retention's days (kept as long as they would be in their arrival day's index);
    returns the names of the indices it deleted.

    An index gone meanwhile (another replica's retention deleted it) is skipped, not an error.
    A run that deletes nothing says so at INFO once a day, at DEBUG otherwise; an index kept
    only for its creation day is named once. `notes` carries what was said from run to run.
    """
    if keep_days <= 0:
        return []
    notes = notes if notes is not None else RunNotes()
    created = await admin.index_creation_days()
    _name_kept_for_creation(created, prefix=prefix, today=today, keep_days=keep_days, notes=notes)
    names = expired(created, prefix=prefix, today=today, keep_days=keep_days)
    deleted = []
    for name in names:
        if not await admin.delete_index(name):
            log.info("retention: index already deleted", extra={"index": name})
            continue
        deleted.append(name)
        log.info("retention deleted index", extra={"index": name, "keep_days": keep_days})
        if metrics is not None:
            metrics.retention_deleted.inc()
    # After the daily indices: deleting documents is refused where deleting indices is not (a
    # disk past OpenSearch's flood stage, a role allowed one and not the other), and whole
    # indices are what frees the disk.
    undated = prefix + UNDATED
    events: int | None = 0
    if undated in created:
        before = today - timedelta(days=keep_days)
        try:
            events = await admin.delete_arrived_before(undated, before)
        except IndexerError as err:
            events = None  # not known: the warning says what happened
            log.warning("retention: events of %s not deleted: %s", undated, err)
        else:
            if events:
                log.info(
                    "retention deleted events of %s that arrived before %s",
                    undated,
                    before,
                    extra={"index": undated, "events": events, "keep_days": keep_days},
                )
    if not names and events == 0:  # none expired (not: expired, and gone meanwhile)
        daily = sum(index_day(name, prefix=prefix) is not None for name in created)
        level = logging.DEBUG if notes.quiet_day == today else logging.INFO
        notes.quiet_day = today
        log.log(
            level,
            "retention ran and deleted nothing: %d daily indices, none expired",
            daily,
            extra={"daily_indices": daily, "keep_days": keep_days},
        )
    return deleted


def _name_kept_for_creation(
    created: Mapping[str, date | None],
    *,
    prefix: str,
    today: date,
    keep_days: int,
    notes: RunNotes,
) -> None:
    """Logs each index kept only for its creation day, once (an index deleted meanwhile, and
    created again, is named again)."""
    kept = kept_for_creation(created, prefix=prefix, today=today, keep_days=keep_days)
    notes.kept_named.intersection_update(kept)
    for name, deleted_on in kept.items():
        if name in notes.kept_named:
            continue
        notes.kept_named.add(name)
        log.info(
            "retention keeps %s, past %d days by its name: created on %s, it is deleted on %s",
            name,
            keep_days,
            created[name],
            deleted_on,
            extra={"index": name, "keep_days": keep_days, "deleted_on": deleted_on.isoformat()},
        )


def _utc_today() -> date:
    return datetime.now(UTC).date()


# Answers that say OpenSearch's time is not ours to read (a role without cluster monitoring,
# a proxy passing only index paths), as opposed to OpenSearch being away.
_NOT_READABLE = frozenset({401, 403, 404, 405})


async def retention_day(admin: IndexAdmin, local: date) -> date:
    """The day retention goes by: the earlier of `local` (this host's) and OpenSearch's.

    Raises SearchUnavailableError when OpenSearch is away (the run is made again later).
    """
    try:
        remote = await admin.cluster_day()
    except SearchUnavailableError as err:
        if err.status not in _NOT_READABLE:
            raise
        log.warning(
            "retention: OpenSearch's time cannot be read (%s); going by this host's clock alone",
            err,
        )
        return local
    if remote < local:
        if local - remote > timedelta(days=1):  # not seconds of skew around midnight
            log.warning(
                "retention: this host's clock is ahead of OpenSearch's (%s against %s); going"
                " by OpenSearch's day",
                local,
                remote,
                extra={"local_day": local.isoformat(), "opensearch_day": remote.isoformat()},
            )
        return remote
    return local


async def run_forever(
    admin: IndexAdmin,
    *,
    prefix: str,
    keep_days: int,
    interval_s: float,
    metrics: Metrics | None = None,
    today: Callable[[], date] = _utc_today,
) -> None:
    """Runs retention now and then every `interval_s` seconds, until cancelled; each run
    goes by `retention_day` of `today()`.

    A run OpenSearch does not answer, or refuses, is logged and made again at the next
    interval. One that ends on any other error (a bug, an answer not understood) is logged with
    its stack and made again sooner: after pipeline.tasks.RESTART_S, doubling while it keeps
    failing, up to the interval (a lasting failure is then logged once an interval).
    """
    retry_s = tasks.RESTART_S
    notes = RunNotes()
    while True:
        pause_s = interval_s
        try:
            day = await retention_day(admin, today())
            await run_once(
                admin, prefix=prefix, keep_days=keep_days, today=day, metrics=metrics, notes=notes
            )
        except IndexerError as err:  # OpenSearch away or refusing: try again next round
            log.warning("retention run failed: %s", err)
        except Exception as err:
            pause_s = min(retry_s, interval_s)
            log.error(
                "retention run ended on an error: %r; trying again in %g s",
                err,
                pause_s,
                exc_info=err,
            )
            retry_s = min(retry_s * 2, interval_s)
        else:
            retry_s = tasks.RESTART_S
        await asyncio.sleep(pause_s)
