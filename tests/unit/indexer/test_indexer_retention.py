"""Retention picks only old daily indices of its own prefix."""

from __future__ import annotations

import asyncio
import logging
from datetime import date

import pytest

from indexer import retention
from indexer.errors import SearchUnavailableError
from indexer.metrics import Metrics

# Each index created on its own day (as its first timely event creates it), or long ago.
NAMES: dict[str, date | None] = {
    "t-2026-01-01": date(2026, 1, 1),
    "t-2026-01-30": date(2026, 1, 30),
    "t-2026-01-31": date(2026, 1, 31),
    "t-2026-02-01": date(2026, 2, 1),
    "t-undated": date(2020, 1, 1),
    "t-2026-02-30": date(2020, 1, 1),  # not a date
    "t-2026-01-01-copy": date(2020, 1, 1),
    "tx-2020-01-01": date(2020, 1, 1),
    "other-2020-01-01": date(2020, 1, 1),
}


def test_expired_keeps_the_last_n_days_and_foreign_names() -> None:
    today = date(2026, 2, 1)
    assert retention.expired(NAMES, prefix="t-", today=today, keep_days=2) == ["t-2026-01-01"]
    assert retention.expired(NAMES, prefix="t-", today=today, keep_days=1) == [
        "t-2026-01-01",
        "t-2026-01-30",
    ]


def test_an_index_is_kept_for_whole_days_after_its_day() -> None:
    # keep_days full days after its day ends: yesterday's index is not deleted at midnight
    # with events a minute old.
    days = {f"t-2026-11-{day:02d}": date(2026, 11, day) for day in (24, 25, 26, 27)}
    assert retention.expired(days, prefix="t-", today=date(2026, 11, 27), keep_days=1) == [
        "t-2026-11-24",
        "t-2026-11-25",
    ]
    october = {"t-2026-10-28": date(2026, 10, 28)}
    assert retention.expired(october, prefix="t-", today=date(2026, 11, 27), keep_days=30) == []
    assert retention.expired(october, prefix="t-", today=date(2026, 11, 28), keep_days=30) == [
        "t-2026-10-28"
    ]


def test_an_old_day_created_again_by_late_events_is_kept_for_the_retention() -> None:
    # A device whose clock runs weeks behind: its events re-create an index retention
    # deleted. Kept until both its day and its creation are past the retention.
    late = {"t-2026-01-01": date(2026, 2, 1), "t-2026-01-02": None}
    assert retention.expired(late, prefix="t-", today=date(2026, 2, 1), keep_days=2) == [
        "t-2026-01-02"  # no creation day known: by its name alone
    ]
    assert retention.expired(late, prefix="t-", today=date(2026, 2, 3), keep_days=2) == [
        "t-2026-01-02"
    ]
    assert retention.expired(late, prefix="t-", today=date(2026, 2, 4), keep_days=2) == [
        "t-2026-01-01",
        "t-2026-01-02",
    ]
    # Created early (a clock running ahead): its own day decides.
    ahead = {"t-2026-03-01": date(2026, 1, 1)}
    assert retention.expired(ahead, prefix="t-", today=date(2026, 3, 3), keep_days=2) == []
    assert retention.expired(ahead, prefix="t-", today=date(2026, 3, 4), keep_days=2) == [
        "t-2026-03-01"
    ]


def test_zero_keeps_forever() -> None:
    assert retention.expired(NAMES, prefix="t-", today=date(2030, 1, 1), keep_days=0) == []


class FakeAdmin:
    def __init__(
        self, names: dict[str, date | None], clock: date | Exception = date(2100, 1, 1)
    ) -> None:
        self.names = dict(names)
        self.deleted: list[str] = []
        self.clock = clock  # OpenSearch's day, or what asking for it raises
        self.arrivals: dict[str, list[date]] = {}  # an index's events, by arrival day

    async def cluster_day(self) -> date:
        if isinstance(self.clock, Exception):
            raise self.clock
        return self.clock

    async def index_creation_days(self) -> dict[str, date | None]:
        return dict(self.names)

    async def delete_index(self, name: str) -> bool:
        self.deleted.append(name)
        del self.names[name]
        return True

    async def delete_arrived_before(self, name: str, day: date) -> int:
        kept = [arrived for arrived in self.arrivals.get(name, []) if arrived >= day]
        deleted = len(self.arrivals.get(name, [])) - len(kept)
        self.arrivals[name] = kept
        return deleted


async def test_run_once_deletes_only_expired() -> None:
    admin = FakeAdmin(NAMES)
    deleted = await retention.run_once(admin, prefix="t-", keep_days=2, today=date(2026, 2, 2))
    assert deleted == admin.deleted == ["t-2026-01-01", "t-2026-01-30"]
    assert "t-undated" in admin.names
    assert "tx-2020-01-01" in admin.names


async def test_undated_events_are_kept_the_retention_days_after_they_arrived(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="indexer.retention")
    admin = FakeAdmin(NAMES)
    admin.arrivals["t-undated"] = [date(2026, 1, 30), date(2026, 1, 31), date(2026, 2, 2)]
    await retention.run_once(admin, prefix="t-", keep_days=2, today=date(2026, 2, 2))
    # Like the index of their arrival day: that of 30 January is deleted on 2 February.
    assert admin.arrivals["t-undated"] == [date(2026, 1, 31), date(2026, 2, 2)]
    assert "t-undated" in admin.names  # the index itself stays
    [line] = [r for r in caplog.records if "events of" in r.getMessage()]
    assert line.getMessage() == (
        "retention deleted events of t-undated that arrived before 2026-01-31"
    )
    assert line.events == 1

    await retention.run_once(admin, prefix="t-", keep_days=0, today=date(2030, 1, 1))
    assert len(admin.arrivals["t-undated"]) == 2  # 0 keeps everything


async def test_undated_events_not_deleted_leave_the_daily_indices_deleted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A disk past OpenSearch's flood stage refuses deleting documents, not whole indices.
    class Refusing(FakeAdmin):
        async def delete_arrived_before(self, name: str, day: date) -> int:
            raise SearchUnavailableError("429: cluster_block_exception", status=429)

    admin = Refusing(NAMES)
    deleted = await retention.run_once(admin, prefix="t-", keep_days=2, today=date(2026, 2, 2))
    assert deleted == admin.deleted == ["t-2026-01-01", "t-2026-01-30"]
    [line] = [r for r in caplog.records if "not deleted" in r.getMessage()]
    assert line.getMessage() == (
        "retention: events of t-undated not deleted: 429: cluster_block_exception"
    )
    assert line.levelno == logging.WARNING


async def test_an_index_gone_meanwhile_is_skipped_and_not_counted() -> None:
    class Raced(FakeAdmin):
        async def delete_index(self, name: str) -> bool:
            if name == "t-2026-01-01":  # another replica deleted it first
                del self.names[name]
                return False
            return await super().delete_index(name)

    admin = Raced(NAMES)
    metrics = Metrics()
    deleted = await retention.run_once(
        admin, prefix="t-", keep_days=2, today=date(2026, 2, 2), metrics=metrics
    )
    assert deleted == ["t-2026-01-30"]
    assert metrics.registry.get_sample_value("indexer_retention_deleted_indices_total") == 1.0


async def test_expired_indices_all_gone_meanwhile_are_not_said_to_be_none_expired(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Raced(FakeAdmin):
        async def delete_index(self, name: str) -> bool:
            del self.names[name]  # another replica deleted each first
            return False

    caplog.set_level(logging.DEBUG, logger="indexer.retention")
    deleted = await retention.run_once(
        Raced(NAMES), prefix="t-", keep_days=2, today=date(2026, 2, 2)
    )
    assert deleted == []
    assert "none expired" not in caplog.text


def test_a_name_with_other_digits_than_ascii_is_not_a_day() -> None:
    # int() reads Arabic-Indic digits as numbers; such a name is no daily index of ours.
    assert retention.index_day("t-٢٠٢٦-01-01", prefix="t-") is None
    assert (
        retention.expired({"t-٢٠٢٦-01-01": None}, prefix="t-", today=date(2030, 1, 1), keep_days=1)
        == []
    )
    assert retention.index_day("t-2026-01-01", prefix="t-") == date(2026, 1, 1)


async def _one_run(admin: FakeAdmin, local: date) -> None:
    """run_forever's first run, with this host's day `local`."""
    task = asyncio.create_task(
        retention.run_forever(admin, prefix="t-", keep_days=2, interval_s=3600, today=lambda: local)
    )
    for _ in range(20):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_host_clock_ahead_of_opensearch_deletes_only_by_opensearch_day(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A host whose clock jumped years ahead would find every daily index expired.
    admin = FakeAdmin(NAMES, clock=date(2026, 2, 2))
    with caplog.at_level(logging.WARNING, logger="indexer.retention"):
        await _one_run(admin, local=date(2031, 6, 1))
    assert admin.deleted == ["t-2026-01-01", "t-2026-01-30"]  # what 2026-02-02 expires
    assert "clock is ahead of OpenSearch's (2031-06-01 against 2026-02-02)" in caplog.text


async def test_a_day_of_difference_goes_by_the_earlier_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Seconds of skew around midnight: a day apart, not worth a warning every run.
    admin = FakeAdmin(NAMES, clock=date(2026, 2, 1))
    with caplog.at_level(logging.WARNING, logger="indexer.retention"):
        await _one_run(admin, local=date(2026, 2, 2))
    assert admin.deleted == ["t-2026-01-01"]  # what 2026-02-01 expires
    assert caplog.text == ""


async def test_an_opensearch_clock_ahead_of_the_host_deletes_by_the_host_day() -> None:
    admin = FakeAdmin(NAMES, clock=date(2031, 6, 1))
    await _one_run(admin, local=date(2026, 2, 2))
    assert admin.deleted == ["t-2026-01-01", "t-2026-01-30"]


async def test_opensearch_time_not_readable_goes_by_the_host_day(
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin = FakeAdmin(NAMES, clock=SearchUnavailableError("forbidden", status=403))
    with caplog.at_level(logging.WARNING, logger="indexer.retention"):
        await _one_run(admin, local=date(2026, 2, 2))
    assert admin.deleted == ["t-2026-01-01", "t-2026-01-30"]
    assert "OpenSearch's time cannot be read" in caplog.text


async def test_opensearch_away_deletes_nothing_this_run() -> None:
    for status in (None, 503):
        admin = FakeAdmin(NAMES, clock=SearchUnavailableError("away", status=status))
        await _one_run(admin, local=date(2031, 6, 1))
        assert admin.deleted == []


async def test_a_run_ending_on_an_unexpected_error_is_logged_and_made_again_soon(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A bug, not OpenSearch away: logged with its stack, and the run made again after a short
    # pause, not only after the interval (an hour here).
    monkeypatch.setattr("pipeline.tasks.RESTART_S", 0.01)

    class Broken(FakeAdmin):
        calls = 0
        ran = asyncio.Event()

        async def index_creation_days(self) -> dict[str, date | None]:
            self.calls += 1
            if self.calls <= 2:
                raise KeyError("creation.date")
            return await super().index_creation_days()

        async def delete_index(self, name: str) -> bool:
            self.ran.set()
            return await super().delete_index(name)

    admin = Broken(NAMES)
    task = asyncio.create_task(
        retention.run_forever(
            admin, prefix="t-", keep_days=2, interval_s=3600, today=lambda: date(2026, 2, 2)
        )
    )
    try:
        with caplog.at_level(logging.ERROR, logger="indexer.retention"):
            await asyncio.wait_for(admin.ran.wait(), 5)
            for _ in range(5):
                await asyncio.sleep(0)  # the rest of the run
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert admin.deleted == ["t-2026-01-01", "t-2026-01-30"]
    failures = [r for r in caplog.records if r.name == "indexer.retention"]
    assert [r.getMessage() for r in failures] == [
        "retention run ended on an error: KeyError('creation.date'); trying again in 0.01 s",
        "retention run ended on an error: KeyError('creation.date'); trying again in 0.02 s",
    ]
    assert all(r.levelno == logging.ERROR and r.exc_info for r in failures)


async def test_opensearch_away_is_a_warning_and_waits_for_the_next_run(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("pipeline.tasks.RESTART_S", 0.001)
    admin = FakeAdmin(NAMES, clock=SearchUnavailableError("away", status=503))
    task = asyncio.create_task(
        retention.run_forever(
            admin, prefix="t-", keep_days=2, interval_s=3600, today=lambda: date(2026, 2, 2)
        )
    )
    with caplog.at_level(logging.WARNING, logger="indexer.retention"):
        await asyncio.sleep(0.05)  # room for runs made again, were it taken for a bug
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "retention run failed: away")
    ]


async def test_quick_retries_after_unexpected_errors_grow_to_the_interval_and_start_over(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A lasting failure is retried at most once an interval (not every few seconds for ever),
    # and one a good run came between starts from the short pause again.
    monkeypatch.setattr("pipeline.tasks.RESTART_S", 0.01)
    outcomes = iter(["bug", "bug", "bug", "bug", "ok", "bug", "stop"])
    done = asyncio.Event()

    class Flaky(FakeAdmin):
        async def index_creation_days(self) -> dict[str, date | None]:
            outcome = next(outcomes)
            if outcome == "stop":
                done.set()
                await asyncio.Event().wait()
            if outcome == "bug":
                raise KeyError("creation.date")
            return await super().index_creation_days()

    task = asyncio.create_task(
        retention.run_forever(
            Flaky(NAMES), prefix="t-", keep_days=2, interval_s=0.03, today=lambda: date(2026, 2, 2)
        )
    )
    try:
        with caplog.at_level(logging.ERROR, logger="indexer.retention"):
            await asyncio.wait_for(done.wait(), 5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    pauses = [
        r.getMessage().rpartition("trying again in ")[2]
        for r in caplog.records
        if r.name == "indexer.retention"
    ]
    assert pauses == ["0.01 s", "0.02 s", "0.03 s", "0.03 s", "0.01 s"]


def test_start_says_whether_retention_is_on_and_how(caplog: pytest.LogCaptureFixture) -> None:
    # With INDEXER_RETENTION_DAYS set, nothing showed retention ran until it deleted an index.
    caplog.set_level(logging.INFO, logger="indexer.retention")
    retention.announce(prefix="t-", keep_days=7, interval_s=3600.0)
    retention.announce(prefix="t-", keep_days=0, interval_s=3600.0)
    assert caplog.messages == [
        "retention on: daily indices t-* kept 7 full days, checked every 3600 s",
        "retention off: daily indices are kept for ever",
    ]
    assert caplog.records[0].levelno == logging.INFO


async def test_a_run_that_deletes_nothing_says_so_once_a_day_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Not once an hour for ever: the first such run of a day at INFO, the others at DEBUG.
    caplog.set_level(logging.DEBUG, logger="indexer.retention")
    admin = FakeAdmin(NAMES)
    notes = retention.RunNotes()
    for today in (date(2026, 1, 31), date(2026, 1, 31), date(2026, 2, 1)):
        await retention.run_once(admin, prefix="t-", keep_days=31, today=today, notes=notes)
    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    line = "retention ran and deleted nothing: 4 daily indices, none expired"
    assert said == [(logging.INFO, line), (logging.DEBUG, line), (logging.INFO, line)]
    assert caplog.records[0].daily_indices == 4

    caplog.clear()
    await retention.run_once(admin, prefix="t-", keep_days=1, today=date(2026, 2, 2), notes=notes)
    assert "deleted nothing" not in caplog.text  # it deleted indices: their lines say so


async def test_an_index_kept_for_its_creation_day_alone_is_named_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Its name's day is past the retention: without a word, it looked like retention missed it.
    caplog.set_level(logging.INFO, logger="indexer.retention")
    admin = FakeAdmin({"t-2026-01-01": date(2026, 2, 1), "t-2026-02-02": date(2026, 2, 2)})
    notes = retention.RunNotes()
    for today in (date(2026, 2, 2), date(2026, 2, 2), date(2026, 2, 3)):
        await retention.run_once(admin, prefix="t-", keep_days=2, today=today, notes=notes)
    kept = [r for r in caplog.records if "retention keeps" in r.getMessage()]
    assert [r.getMessage() for r in kept] == [
        "retention keeps t-2026-01-01, past 2 days by its name: created on 2026-02-01, it is"
        " deleted on 2026-02-04"
    ]
    assert kept[0].index == "t-2026-01-01"

    await retention.run_once(admin, prefix="t-", keep_days=2, today=date(2026, 2, 4), notes=notes)
    assert admin.deleted == ["t-2026-01-01"]  # on the day the line said
