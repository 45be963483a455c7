"""Retention picks only old daily indices of its own prefix."""

from __future__ import annotations

from datetime import date

from indexer import retention
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
    def __init__(self, names: dict[str, date | None]) -> None:
        self.names = dict(names)
        self.deleted: list[str] = []

    async def index_creation_days(self) -> dict[str, date | None]:
        return dict(self.names)

    async def delete_index(self, name: str) -> bool:
        self.deleted.append(name)
        del self.names[name]
        return True


async def test_run_once_deletes_only_expired() -> None:
    admin = FakeAdmin(NAMES)
    deleted = await retention.run_once(admin, prefix="t-", keep_days=2, today=date(2026, 2, 2))
    assert deleted == admin.deleted == ["t-2026-01-01", "t-2026-01-30"]
    assert "t-undated" in admin.names
    assert "tx-2020-01-01" in admin.names


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


def test_a_name_with_other_digits_than_ascii_is_not_a_day() -> None:
    # int() reads Arabic-Indic digits as numbers; such a name is no daily index of ours.
    assert retention.index_day("t-٢٠٢٦-01-01", prefix="t-") is None
    assert (
        retention.expired({"t-٢٠٢٦-01-01": None}, prefix="t-", today=date(2030, 1, 1), keep_days=1)
        == []
    )
    assert retention.index_day("t-2026-01-01", prefix="t-") == date(2026, 1, 1)
