"""EnrichedEvent <-> document mapping and the index rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st
from telemetry.v1 import event_pb2

from indexer import documents, template
from indexer.errors import DocumentError

MIN_S = -62135596800  # 0001-01-01
MAX_S = 253402300799  # 9999-12-31T23:59:59


def _stamp(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def sample(**changes: object) -> event_pb2.EnrichedEvent:
    event = event_pb2.EnrichedEvent(
        event=event_pb2.Event(
            event_id="e-1",
            session_id="s-1",
            user_id="user-123",
            event_name="item_purchased",
            client_timestamp=_stamp(datetime(2026, 3, 4, 23, 59, 59, tzinfo=UTC)),
            metadata={"sku": "A-1", "price": "9.99"},
            app_version="2.1.0",
            device_os="iOS 17.2",
        ),
        received_at=_stamp(datetime(2026, 3, 5, 0, 0, 3, tzinfo=UTC)),
        corrected_timestamp=_stamp(datetime(2026, 3, 5, 0, 0, 1, tzinfo=UTC)),
        clock_status=event_pb2.CLOCK_STATUS_CORRECTED,
        clock_skew_ms=-2000,
        os_name="iOS",
        os_version="17.2",
        geo=event_pb2.Geo(country_code="GB", city="London"),
        event_message="item_purchased sku A-1 price 9.99",
        app_id="shop",
        request_id="r-1",
    )
    if "event_id" in changes:
        event.event.event_id = str(changes["event_id"])
    return event


def test_document_keeps_the_original_field_names() -> None:
    doc = documents.to_document(sample())
    assert doc["user_id"] == "user-123"
    assert doc["event_name"] == "item_purchased"
    assert doc["client_timestamp"] == "2026-03-04T23:59:59Z"
    assert doc["ingestion_timestamp"] == "2026-03-05T00:00:03Z"
    assert doc["corrected_timestamp"] == "2026-03-05T00:00:01Z"
    assert doc["metadata"] == {"sku": "A-1", "price": "9.99"}
    assert doc["geo_country"] == "GB"
    assert doc["clock_status"] == "CLOCK_STATUS_CORRECTED"


def test_every_document_field_is_mapped() -> None:
    mapped = set(template.mappings()["properties"])
    assert set(documents.to_document(sample())) <= mapped


def test_index_comes_from_the_client_timestamp_not_the_server_times() -> None:
    first = sample()
    retry = sample()
    retry.received_at.CopyFrom(_stamp(datetime(2026, 3, 6, 10, tzinfo=UTC)))
    retry.corrected_timestamp.CopyFrom(_stamp(datetime(2026, 3, 6, 10, tzinfo=UTC)))
    retry.enriched_at.CopyFrom(_stamp(datetime(2026, 3, 6, 10, tzinfo=UTC)))
    assert documents.index_name(first, prefix="t-") == "t-2026-03-04"
    assert documents.index_name(retry, prefix="t-") == "t-2026-03-04"


@pytest.mark.parametrize(
    "when",
    [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime(2100, 1, 1, tzinfo=UTC),
        datetime(9999, 1, 1, tzinfo=UTC),
    ],
)
def test_absurd_client_time_goes_to_the_undated_index(when: datetime) -> None:
    event = sample()
    event.event.client_timestamp.CopyFrom(_stamp(when))
    assert documents.index_name(event, prefix="t-") == "t-undated"


def test_unset_client_time_goes_to_the_undated_index() -> None:
    event = sample()
    event.event.ClearField("client_timestamp")
    assert documents.index_name(event, prefix="t-") == "t-undated"
    assert "client_timestamp" not in documents.to_document(event)


def test_edges_of_the_dated_range() -> None:
    event = sample()
    for when, index in (
        (datetime(2000, 1, 1, tzinfo=UTC), "t-2000-01-01"),
        (datetime(2099, 12, 31, 23, 59, tzinfo=UTC), "t-2099-12-31"),
    ):
        event.event.client_timestamp.CopyFrom(_stamp(when))
        event.received_at.CopyFrom(_stamp(when))
        assert documents.index_name(event, prefix="t-") == index
        event.ClearField("received_at")  # an enricher's before received_at: the day alone
        assert documents.index_name(event, prefix="t-") == index


def _arrived(client: datetime, received: datetime) -> event_pb2.EnrichedEvent:
    event = sample()
    event.event.client_timestamp.CopyFrom(_stamp(client))
    event.received_at.CopyFrom(_stamp(received))
    return event


WINDOW = documents.DatedWindow(past_days=30, future_days=7)
ARRIVED = datetime(2026, 3, 31, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("client", "index"),
    [
        (datetime(2026, 3, 1, 0, 0, tzinfo=UTC), "t-2026-03-01"),  # 30 days before: dated
        (datetime(2026, 2, 28, 23, 59, 59, tzinfo=UTC), "t-undated"),  # 31 days before
        (datetime(2026, 4, 7, 23, 59, 59, tzinfo=UTC), "t-2026-04-07"),  # 7 days after: dated
        (datetime(2026, 4, 8, 0, 0, tzinfo=UTC), "t-undated"),  # 8 days after
        (datetime(2001, 1, 1, tzinfo=UTC), "t-undated"),  # a device clock reset long ago
        (datetime(2090, 6, 1, tzinfo=UTC), "t-undated"),  # far ahead
    ],
)
def test_only_client_days_near_the_arrival_get_a_daily_index(client: datetime, index: str) -> None:
    event = _arrived(client, ARRIVED)
    assert documents.index_name(event, prefix="t-", window=WINDOW) == index
    assert documents.placed_document(event, prefix="t-", window=WINDOW)[0] == index


def test_the_window_is_a_setting() -> None:
    event = _arrived(datetime(2026, 3, 20, tzinfo=UTC), ARRIVED)  # 11 days before
    assert documents.index_name(event, prefix="t-", window=WINDOW) == "t-2026-03-20"
    narrow = documents.DatedWindow(past_days=10, future_days=0)
    assert documents.index_name(event, prefix="t-", window=narrow) == "t-undated"
    ahead = _arrived(datetime(2026, 4, 1, tzinfo=UTC), ARRIVED)  # the next day
    assert documents.index_name(ahead, prefix="t-", window=narrow) == "t-undated"


def test_a_retry_on_either_side_of_the_window_keeps_its_index() -> None:
    # Dated when first sent, retried days later while still in the window: the same index.
    sent = datetime(2026, 3, 25, 8, tzinfo=UTC)
    first = _arrived(sent, sent)
    retry = _arrived(sent, datetime(2026, 4, 20, tzinfo=UTC))  # 26 days later
    assert documents.index_name(first, prefix="t-", window=WINDOW) == "t-2026-03-25"
    assert documents.index_name(retry, prefix="t-", window=WINDOW) == "t-2026-03-25"
    # Behind the window when first sent: later retries only fall further behind.
    reset = datetime(2001, 1, 1, tzinfo=UTC)
    for received in (ARRIVED, datetime(2027, 1, 1, tzinfo=UTC)):
        event = _arrived(reset, received)
        assert documents.index_name(event, prefix="t-", window=WINDOW) == "t-undated"


def test_many_distinct_client_days_make_few_indices() -> None:
    # A client stamping every day of a century: only the window's days get an index.
    indices = {
        documents.index_name(
            _arrived(datetime(2000, 1, 1, tzinfo=UTC) + timedelta(days=n), ARRIVED),
            prefix="t-",
            window=WINDOW,
        )
        for n in range(0, 36_500, 3)
    }
    assert len(indices) <= WINDOW.past_days + WINDOW.future_days + 2  # and undated
    assert "t-undated" in indices


def test_event_id_must_fit_an_opensearch_id() -> None:
    with pytest.raises(DocumentError, match="empty"):
        documents.to_document(sample(event_id=""))
    with pytest.raises(DocumentError, match="longer than 512"):
        documents.to_document(sample(event_id="x" * 513))
    documents.to_document(sample(event_id="x" * 512))


_text = st.text(max_size=20)
_stamps = st.builds(
    Timestamp,
    seconds=st.integers(min_value=MIN_S, max_value=MAX_S),
    nanos=st.integers(min_value=0, max_value=999_999_999),
)
_events = st.builds(
    event_pb2.EnrichedEvent,
    event=st.builds(
        event_pb2.Event,
        event_id=st.text(min_size=1, max_size=40),
        session_id=_text,
        user_id=_text,
        event_name=_text,
        client_timestamp=st.one_of(st.none(), _stamps),
        metadata=st.dictionaries(_text, _text, max_size=5),
        app_version=_text,
        device_os=_text,
    ),
    received_at=st.one_of(st.none(), _stamps),
    enriched_at=st.one_of(st.none(), _stamps),
    corrected_timestamp=st.one_of(st.none(), _stamps),
    clock_skew_ms=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    clock_status=st.sampled_from(list(event_pb2.ClockStatus.values())),
    geo=st.one_of(st.none(), st.builds(event_pb2.Geo, country_code=_text, city=_text)),
    os_name=_text,
    os_version=_text,
    event_message=_text,
    app_id=_text,
    request_id=_text,
)


def _normalised(event: event_pb2.EnrichedEvent) -> event_pb2.EnrichedEvent:
    # An empty Geo and an absent one index alike.
    copy = event_pb2.EnrichedEvent()
    copy.CopyFrom(event)
    if not copy.geo.country_code and not copy.geo.city:
        copy.ClearField("geo")
    return copy


@given(_events)
def test_round_trip_through_json_is_lossless(event: event_pb2.EnrichedEvent) -> None:
    source = orjson.loads(orjson.dumps(documents.to_document(event)))
    assert documents.from_document(source) == _normalised(event)


@given(_events)
def test_the_placed_document_goes_where_index_name_says(event: event_pb2.EnrichedEvent) -> None:
    index, doc = documents.placed_document(event, prefix="t-")
    assert index == documents.index_name(event, prefix="t-")
    assert doc == documents.to_document(event)


def test_a_clock_status_this_build_does_not_know_is_kept_as_its_number() -> None:
    event = sample()
    event.clock_status = 7  # type: ignore[assignment]  # from a newer enricher
    doc = documents.to_document(event)
    assert doc["clock_status"] == "7"
    assert documents.from_document(doc).clock_status == 7
