"""Template installation decisions, against a fake OpenSearch client."""

from __future__ import annotations

import logging
from datetime import date, timedelta
from typing import Any

import pytest
from opensearchpy import exceptions as os_errors

from indexer import template
from indexer.errors import SearchUnavailableError
from indexer.store import OpenSearchStore


class _Indices:
    def __init__(self) -> None:
        self.installed: dict[str, Any] | None = None
        self.puts = 0
        self.live: list[dict[str, Any]] = []
        self.refuse_settings = False
        self.live_indices: list[str] = []
        self.mapped: list[str] = []
        self.mappings_down = False
        self.calls: list[str] = []

    async def get_index_template(self, *, name: str, ignore: list[int]) -> dict[str, Any]:
        if self.installed is None:
            return {}
        return {"index_templates": [{"name": name, "index_template": self.installed}]}

    async def put_index_template(self, *, name: str, body: dict[str, Any]) -> None:
        self.installed = body
        self.puts += 1
        self.calls.append("put_template")

    async def put_settings(self, *, index: str, body: dict[str, Any], **_: Any) -> None:
        if self.refuse_settings:
            raise os_errors.TransportError(400, "illegal_argument_exception", {})
        self.live.append(body["index"])
        self.live_indices.append(index)

    async def put_mapping(self, *, index: str, body: dict[str, Any], **_: Any) -> None:
        if self.mappings_down:
            raise os_errors.TransportError(503, "unavailable_shards_exception", {})
        self.mapped.append(index)
        self.calls.append("put_mapping")


class _Cat:
    def __init__(self) -> None:
        self.names = ["t-2026-01-01"]

    async def indices(self, *, index: str, **_: Any) -> list[dict[str, str]]:
        assert index == "t-*"
        return [{"index": name} for name in self.names]


class _Client:
    def __init__(self) -> None:
        self.indices = _Indices()
        self.cat = _Cat()


def _store(client: _Client, **settings: Any) -> OpenSearchStore:
    return OpenSearchStore(client, prefix="t-", **settings)  # type: ignore[arg-type]


async def test_only_a_changed_setting_rewrites_the_template_and_reaches_live_indices() -> None:
    client = _Client()
    assert await _store(client, refresh_interval="1s").install_template() is True
    # First install: the indices already there are brought to it too.
    assert client.indices.live == [{"number_of_replicas": 0, "refresh_interval": "1s"}]
    assert await _store(client, refresh_interval="1s").install_template() is False
    assert await _store(client, refresh_interval="200ms", replicas=1).install_template() is True
    assert client.indices.live[1:] == [{"number_of_replicas": 1, "refresh_interval": "200ms"}]
    assert client.indices.puts == 2


async def test_a_later_template_version_is_left_alone() -> None:
    client = _Client()
    newer = template.template_body(prefix="t-", shards=3, replicas=2, priority=200)
    newer["version"] = template.TEMPLATE_VERSION + 1
    client.indices.installed = newer
    assert await _store(client).install_template() is False
    assert client.indices.puts == 0


async def test_refused_live_settings_are_logged_and_the_template_stays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = _Client()
    await _store(client, refresh_interval="1s").install_template()
    client.indices.refuse_settings = True
    with caplog.at_level(logging.WARNING, logger="indexer.store"):
        assert await _store(client, refresh_interval="2s").install_template() is True
    assert "not applied to existing indices" in caplog.text
    assert client.indices.installed is not None
    assert client.indices.installed["template"]["settings"]["refresh_interval"] == "2s"


async def test_live_settings_reach_only_the_indexers_own_indices() -> None:
    # `t-*` matches someone else's `t-metrics-foo` too: it keeps its own settings.
    client = _Client()
    await _store(client, refresh_interval="1s").install_template()
    client.cat.names = [
        "t-2026-01-01",
        "t-2026-01-02",
        "t-undated",
        "t-metrics-foo",
        "t-2026-02-30",  # not a date
        "t-2026-01-01-copy",
    ]
    client.indices.live_indices = []
    assert await _store(client, refresh_interval="2s").install_template() is True
    assert client.indices.live_indices == ["t-2026-01-01,t-2026-01-02,t-undated"]


async def test_live_settings_go_in_requests_of_bounded_length() -> None:
    client = _Client()
    await _store(client, refresh_interval="1s").install_template()
    days = [date(2000, 1, 1) + timedelta(days=n) for n in range(3000)]
    client.cat.names = [f"t-{day.isoformat()}" for day in days]
    client.indices.live_indices = []
    assert await _store(client, refresh_interval="2s").install_template() is True
    assert len(client.indices.live_indices) > 1
    assert max(len(index) for index in client.indices.live_indices) <= 3000
    assert ",".join(client.indices.live_indices).split(",") == client.cat.names


async def test_a_new_template_version_puts_its_mappings_on_own_indices_only() -> None:
    client = _Client()
    client.cat.names = ["t-2026-01-01", "t-undated", "t-metrics-foo"]
    older = template.template_body(prefix="t-", shards=1, replicas=0, priority=200)
    older["version"] = template.TEMPLATE_VERSION - 1
    client.indices.installed = older
    assert await _store(client).install_template() is True
    assert client.indices.mapped == ["t-2026-01-01,t-undated"]
    # The same version with other settings: the mappings are the same, nothing to put.
    assert await _store(client, refresh_interval="2s").install_template() is True
    assert client.indices.mapped == ["t-2026-01-01,t-undated"]


def _older_installed(client: _Client) -> None:
    older = template.template_body(prefix="t-", shards=1, replicas=0, priority=200)
    older["version"] = template.TEMPLATE_VERSION - 1
    client.indices.installed = older


async def test_an_upgrade_whose_mappings_fail_is_done_again_on_the_next_try() -> None:
    client = _Client()
    _older_installed(client)
    client.indices.mappings_down = True  # a shard unavailable for a moment, say
    with pytest.raises(SearchUnavailableError):
        await _store(client).install_template()
    assert client.indices.installed is not None
    assert client.indices.installed["version"] == template.TEMPLATE_VERSION - 1  # not marked done
    client.indices.mappings_down = False
    assert await _store(client).install_template() is True  # the next try, or the next start
    assert client.indices.mapped == ["t-2026-01-01"]
    assert client.indices.installed["version"] == template.TEMPLATE_VERSION


async def test_existing_indices_get_the_mappings_before_the_template_is_written() -> None:
    client = _Client()
    _older_installed(client)
    assert await _store(client).install_template() is True
    assert client.indices.calls.index("put_mapping") < client.indices.calls.index("put_template")


async def test_existing_indices_get_the_mappings_when_the_template_is_missing() -> None:
    client = _Client()  # indices kept, template deleted (by hand, or a new cluster's restore)
    client.cat.names = ["t-2026-01-01", "t-undated", "t-metrics-foo"]
    assert await _store(client).install_template() is True
    assert client.indices.mapped == ["t-2026-01-01,t-undated"]
