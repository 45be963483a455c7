"""Retention picks only old daily indices of its own prefix."""

from __future__ import annotations

from datetime import date

from indexer import retention
from indexer.metrics import Metrics

NAMES = [
    "t-2026-01-01",
    "t-2026-01-30",
    "t-2026-01-31",
    "t-2026-02-01",
    "t-undated",
    "t-2026-02-30",  # not a date
    "t-2026-01-01-copy",
    "tx-2020-01-01",
    "other-2020-01-01",
]


def test_expired_keeps_the_last_n_days_and_foreign_names() -> None:
    today = date(2026, 2, 1)
    assert retention.expired(NAMES, prefix="t-", today=today, keep_days=2) == [
        "t-2026-01-01",
        "t-2026-01-30",
    ]
    assert retention.expired(NAMES, prefix="t-", today=today, keep_days=1) == [
        "t-2026-01-01",
        "t-2026-01-30",
        "t-2026-01-31",
    ]


def test_zero_keeps_forever() -> None:
    assert retention.expired(NAMES, prefix="t-", today=date(2030, 1, 1), keep_days=0) == []


class FakeAdmin:
    def __init__(self, names: list[str]) -> None:
        self.names = list(names)
        self.deleted: list[str] = []

    async def index_names(self) -> list[str]:
        return list(self.names)

    async def delete_index(self, name: str) -> bool:
        self.deleted.append(name)
        self.names.remove(name)
        return True


async def test_run_once_deletes_only_expired() -> None:
    admin = FakeAdmin(NAMES)
    deleted = await retention.run_once(admin, prefix="t-", keep_days=2, today=date(2026, 2, 1))
    assert deleted == admin.deleted == ["t-2026-01-01", "t-2026-01-30"]
    assert "t-undated" in admin.names
    assert "tx-2020-01-01" in admin.names


async def test_an_index_gone_meanwhile_is_skipped_and_not_counted() -> None:
    class Raced(FakeAdmin):
        async def delete_index(self, name: str) -> bool:
            if name == "t-2026-01-01":  # another replica deleted it first
                self.names.remove(name)
                return False
            return await super().delete_index(name)

    admin = Raced(NAMES)
    metrics = Metrics()
    deleted = await retention.run_once(
        admin, prefix="t-", keep_days=2, today=date(2026, 2, 1), metrics=metrics
    )
    assert deleted == ["t-2026-01-30"]
    assert metrics.registry.get_sample_value("indexer_retention_deleted_indices_total") == 1.0


def test_a_name_with_other_digits_than_ascii_is_not_a_day() -> None:
    # int() reads Arabic-Indic digits as numbers; such a name is no daily index of ours.
    assert retention.index_day("t-٢٠٢٦-01-01", prefix="t-") is None
    assert (
        retention.expired(["t-٢٠٢٦-01-01"], prefix="t-", today=date(2030, 1, 1), keep_days=1) == []
    )
    assert retention.index_day("t-2026-01-01", prefix="t-") == date(2026, 1, 1)
