"""The index template on a real OpenSearch: idempotent, versioned, bounded mapping."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from indexer_support import enriched
from opensearchpy import AsyncOpenSearch

from indexer import documents, retention, template
from indexer.bulk import render
from indexer.store import OpenSearchStore

pytestmark = pytest.mark.integration


def _store(client: AsyncOpenSearch, prefix: str) -> OpenSearchStore:
    return OpenSearchStore(client, prefix=prefix, shards=1, replicas=0, priority=200)


async def test_install_is_idempotent_and_versioned(os_client: AsyncOpenSearch, prefix: str) -> None:
    store = _store(os_client, prefix)
    assert await store.template_version() is None
    assert await store.install_template() is True
    assert await store.template_version() == template.TEMPLATE_VERSION
    assert await store.install_template() is False
    # An older version is replaced.
    body = template.template_body(prefix=prefix, shards=1, replicas=0, priority=200)
    body["version"] = template.TEMPLATE_VERSION - 1
    await os_client.indices.put_index_template(name=template.template_name(prefix), body=body)
    assert await store.install_template() is True
    assert await store.template_version() == template.TEMPLATE_VERSION
    # A later version (a newer indexer) is left alone.
    body["version"] = template.TEMPLATE_VERSION + 1
    await os_client.indices.put_index_template(name=template.template_name(prefix), body=body)
    assert await store.install_template() is False
    assert await store.template_version() == template.TEMPLATE_VERSION + 1


async def test_a_changed_refresh_interval_reaches_the_template_and_live_indices(
    os_client: AsyncOpenSearch, prefix: str
) -> None:
    first = OpenSearchStore(os_client, prefix=prefix, refresh_interval="1s")
    assert await first.install_template() is True
    event = enriched("r1", when=datetime(2026, 4, 2, tzinfo=UTC))
    index = documents.index_name(event, prefix=prefix)
    body = render(index=index, doc_id="r1", source=documents.to_document(event))
    assert [r.status for r in await first.bulk(body)] == [201]

    async def interval(name: str) -> str:
        found = await os_client.indices.get_settings(index=name, name="index.refresh_interval")
        return str(found[name]["settings"]["index"]["refresh_interval"])

    assert await interval(index) == "1s"
    restarted = OpenSearchStore(os_client, prefix=prefix, refresh_interval="200ms")
    assert await restarted.install_template() is True
    assert await interval(index) == "200ms"  # the live index follows
    assert await restarted.install_template() is False  # nothing changed since
    installed = await os_client.indices.get_index_template(name=template.template_name(prefix))
    settings = installed["index_templates"][0]["index_template"]["template"]["settings"]
    assert settings["index"]["refresh_interval"] == "200ms"  # and so will new ones


async def test_ten_thousand_metadata_keys_do_not_grow_the_mapping(
    os_client: AsyncOpenSearch, prefix: str
) -> None:
    store = _store(os_client, prefix)
    await store.install_template()
    when = datetime(2026, 4, 1, 12, tzinfo=UTC)
    body = b""
    for n in range(1000):
        meta = {f"key_{n}_{k}": f"value {k}" for k in range(10)}  # 10,000 distinct keys in all
        event = enriched(f"e{n}", when=when, metadata=meta)
        body += render(
            index=documents.index_name(event, prefix=prefix),
            doc_id=event.event.event_id,
            source=documents.to_document(event),
        )
    results = await store.bulk(body)
    assert {r.status for r in results} == {201}
    index = f"{prefix}2026-04-01"
    mapping = await os_client.indices.get_mapping(index=index)
    properties = mapping[index]["mappings"]["properties"]
    assert set(properties) == set(template.mappings()["properties"])
    assert properties["metadata"] == {"type": "flat_object"}
    await os_client.indices.refresh(index=index)
    hit = await os_client.count(
        index=index, body={"query": {"term": {"metadata.key_777_3": "value 3"}}}
    )
    assert hit["count"] == 1


async def test_the_original_query_works_unchanged(os_client: AsyncOpenSearch, prefix: str) -> None:
    store = _store(os_client, prefix)
    await store.install_template()
    now = datetime.now(UTC)
    events = [
        enriched("p1", when=now, user_id="user-123", event_name="item_purchased"),
        enriched("p2", when=now - timedelta(hours=1), user_id="user-123", event_name="app_opened"),
        enriched("p3", when=now, user_id="user-9", event_name="item_purchased"),
        enriched(
            "p4", when=now - timedelta(days=3), user_id="user-123", event_name="item_purchased"
        ),
    ]
    body = b"".join(
        render(
            index=documents.index_name(e, prefix=prefix),
            doc_id=e.event.event_id,
            source=documents.to_document(e),
        )
        for e in events
    )
    assert {r.status for r in await store.bulk(body)} == {201}
    await os_client.indices.refresh(index=f"{prefix}*")
    original = {
        "query": {
            "bool": {
                "must": [
                    {"term": {"user_id": {"value": "user-123"}}},
                    {"term": {"event_name": {"value": "item_purchased"}}},
                ],
                "filter": [{"range": {"client_timestamp": {"gte": "now-1d/d"}}}],
            }
        }
    }
    answer = await os_client.search(index=f"{prefix}*", body=original)
    assert [hit["_id"] for hit in answer["hits"]["hits"]] == ["p1"]


async def test_retention_deletes_only_old_daily_indices(
    os_client: AsyncOpenSearch, prefix: str
) -> None:
    store = _store(os_client, prefix)
    await store.install_template()
    # The indices are created today: retention runs as if it were 10 days later.
    today = datetime.now(UTC).date() + timedelta(days=10)
    names = [
        f"{prefix}{today - timedelta(days=9)}",
        f"{prefix}{today - timedelta(days=1)}",
        f"{prefix}{today}",
        f"{prefix}undated",
    ]
    for name in names:
        await os_client.indices.create(index=name)
    deleted = await retention.run_once(store, prefix=prefix, keep_days=2, today=today)
    assert deleted == names[:1]
    assert await store.index_names() == sorted(names[1:])


async def test_retention_deletes_undated_events_by_their_arrival(
    os_client: AsyncOpenSearch, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("indexer.store.DELETE_PAGE_SIZE", 1)  # a page per event
    monkeypatch.setattr("indexer.store.DELETE_PAGES_PER_CALL", 1)  # an event per run
    store = _store(os_client, prefix)
    await store.install_template()
    today = datetime.now(UTC).date() + timedelta(days=10)
    arrivals = {"u-old": 4, "u-edge": 3, "u-kept": 2, "u-new": 0}  # days before `today`
    body = b""
    for event_id, days in arrivals.items():
        received = datetime.combine(today - timedelta(days=days), datetime.min.time(), UTC)
        event = enriched(event_id, when=datetime(1990, 1, 1, tzinfo=UTC), received=received)
        index = documents.index_name(event, prefix=prefix)
        assert index == f"{prefix}undated"
        body += render(index=index, doc_id=event_id, source=documents.to_document(event))
    assert [r.status for r in await store.bulk(body)] == [201] * 4
    await os_client.indices.refresh(index=f"{prefix}undated")

    async def left() -> list[str]:
        await os_client.indices.refresh(index=f"{prefix}undated")
        found = await os_client.search(index=f"{prefix}undated", body={"size": 10})
        return sorted(hit["_id"] for hit in found["hits"]["hits"])

    assert await retention.run_once(store, prefix=prefix, keep_days=2, today=today) == []
    assert await left() == ["u-kept", "u-new", "u-old"]  # one page: u-edge, first by id
    assert await retention.run_once(store, prefix=prefix, keep_days=2, today=today) == []
    assert await left() == ["u-kept", "u-new"]
    assert await store.index_names() == [f"{prefix}undated"]  # the index itself stays
    assert await store.delete_arrived_before(f"{prefix}gone", today) == 0  # no such index


async def test_retention_reads_opensearch_day(os_client: AsyncOpenSearch, prefix: str) -> None:
    # The guard against a host clock set ahead: OpenSearch's own day (same machine here).
    store = _store(os_client, prefix)
    before = datetime.now(UTC).date()
    day = await store.cluster_day()
    assert before <= day <= datetime.now(UTC).date()
    ahead = before + timedelta(days=400)
    assert await retention.retention_day(store, ahead) == day


async def test_retention_keeps_an_old_day_created_again_by_late_events(
    os_client: AsyncOpenSearch, prefix: str
) -> None:
    # A device whose clock runs weeks behind sends events of a day retention deleted.
    store = _store(os_client, prefix)
    await store.install_template()
    today = datetime.now(UTC).date()
    late = f"{prefix}{today - timedelta(days=40)}"
    await os_client.indices.create(index=late)
    created = (await store.index_creation_days())[late]
    assert created in (today, today + timedelta(days=1))  # the run may cross midnight UTC
    today = created
    assert await retention.run_once(store, prefix=prefix, keep_days=2, today=today) == []
    assert await retention.run_once(store, prefix=prefix, keep_days=30, today=today) == []
    kept_through = today + timedelta(days=30)  # 30 full days after the day it was created
    assert await retention.run_once(store, prefix=prefix, keep_days=30, today=kept_through) == []
    later = kept_through + timedelta(days=1)
    assert await retention.run_once(store, prefix=prefix, keep_days=30, today=later) == [late]


async def test_retention_goes_on_past_an_index_another_replica_deleted(
    os_client: AsyncOpenSearch, prefix: str
) -> None:
    store = _store(os_client, prefix)
    await store.install_template()
    names = [f"{prefix}2026-06-01", f"{prefix}2026-06-02", f"{prefix}2026-06-03"]
    for name in names:
        await os_client.indices.create(index=name)

    class Racing:
        """Lists every index, but another replica deletes the first one meanwhile."""

        async def index_creation_days(self) -> dict[str, date | None]:
            listed = await store.index_creation_days()
            await os_client.indices.delete(index=names[0])
            return listed

        async def delete_index(self, name: str) -> bool:
            return await store.delete_index(name)

    today = datetime.now(UTC).date() + timedelta(days=10)  # the indices were created today
    deleted = await retention.run_once(Racing(), prefix=prefix, keep_days=2, today=today)
    assert deleted == names[1:]
    assert await store.index_names() == []
    assert await store.delete_index(names[1]) is False


async def test_a_changed_setting_leaves_other_indices_under_the_prefix_alone(
    os_client: AsyncOpenSearch, prefix: str
) -> None:
    first = OpenSearchStore(os_client, prefix=prefix, refresh_interval="1s")
    assert await first.install_template() is True
    own, undated, foreign = f"{prefix}2026-04-02", f"{prefix}undated", f"{prefix}metrics-foo"
    for name in (own, undated, foreign):
        await os_client.indices.create(index=name)

    async def interval(name: str) -> str:
        found = await os_client.indices.get_settings(index=name, name="index.refresh_interval")
        return str(found[name]["settings"]["index"]["refresh_interval"])

    assert await interval(foreign) == "1s"  # created from the template too
    restarted = OpenSearchStore(os_client, prefix=prefix, refresh_interval="200ms")
    assert await restarted.install_template() is True
    assert (await interval(own), await interval(undated)) == ("200ms", "200ms")
    assert await interval(foreign) == "1s"


async def test_a_new_template_version_adds_its_fields_to_existing_daily_indices(
    os_client: AsyncOpenSearch, prefix: str
) -> None:
    # An older indexer's template without clock_skew_ms; its daily index exists already.
    older = template.template_body(prefix=prefix, shards=1, replicas=0, priority=200)
    older["version"] = template.TEMPLATE_VERSION - 1
    del older["template"]["mappings"]["properties"]["clock_skew_ms"]
    await os_client.indices.put_index_template(name=template.template_name(prefix), body=older)
    event = enriched("m1", when=datetime(2026, 4, 3, tzinfo=UTC))
    index = documents.index_name(event, prefix=prefix)
    foreign = f"{prefix}metrics-foo"
    for name in (index, foreign):
        await os_client.indices.create(index=name)

    store = _store(os_client, prefix)
    assert await store.install_template() is True
    body = render(index=index, doc_id="m1", source=documents.to_document(event))
    assert [r.status for r in await store.bulk(body)] == [201]  # strict: refused without it
    found = await os_client.indices.get_mapping(index=foreign)
    assert "clock_skew_ms" not in found[foreign]["mappings"]["properties"]
