"""Tables, JSON lines and bars as the commands print them."""

from __future__ import annotations

import orjson
from google.protobuf.timestamp_pb2 import Timestamp
from telemetry.v1 import event_pb2, query_service_pb2

from tpipe import _render
from tpipe._cmd_tail import EventMatch, line


def enriched(event_id: str, *, user: str = "u1", name: str = "screen_view", app: str = "shop"):
    return event_pb2.EnrichedEvent(
        event=event_pb2.Event(
            event_id=event_id, user_id=user, event_name=name, session_id="s1", device_os="iOS 17.2"
        ),
        corrected_timestamp=Timestamp(seconds=1_767_225_600, nanos=5_000_000),
        app_id=app,
    )


def test_table_aligns_columns_and_drops_empty_ones() -> None:
    lines = _render.table([enriched("e-1"), enriched("e-22", user="a-much-longer-user")])

    header, first, second = lines
    assert header.split() == ["TIME", "EVENT", "USER", "SESSION", "APP", "OS", "EVENT", "ID"]
    assert "VERSION" not in header
    assert "CC" not in header
    assert first.startswith("2026-01-01T00:00:00.005Z  screen_view")
    # Every column starts at the same offset in every line.
    assert header.index("USER") == first.index("u1") == second.index("a-much-longer-user")
    assert first.endswith("e-1")
    assert second.endswith("e-22")


def test_long_cells_are_clipped_but_event_ids_never() -> None:
    long_id = "x" * 60
    lines = _render.table([enriched(long_id, name="n" * 50)])
    assert lines[1].endswith(long_id)
    assert "n" * 31 + "…" in lines[1]
    assert "n" * 32 not in lines[1]


def test_wide_characters_take_two_columns_and_combining_marks_none() -> None:
    lines = _render.table(
        [
            enriched("e-1", user="ユーザー"),  # 4 characters, 8 columns
            enriched("e-2", user="\uff35\uff53\uff45\uff52"),  # "User" in fullwidth Latin
            enriched("e-3", user="cafe\u0301"),  # é as e and a combining acute: 4 columns
            enriched("e-4", user="plain-user-ten"),
        ]
    )

    # A column starts at the same terminal column in every line.
    starts = {_render.display_width(line[: line.index("s1")]) for line in lines[1:]}
    ends = {_render.display_width(line[: line.index("shop")]) for line in lines[1:]}
    assert len(starts) == 1
    assert len(ends) == 1
    assert _render.display_width(lines[0][: lines[0].index("SESSION")]) == starts.pop()


def test_a_wide_cell_is_clipped_to_the_columns_it_may_take() -> None:
    line = _render.table([enriched("e-1", name="イベント" * 10)])[1]

    shown = line.split("  ")[1]
    assert shown == "イベント" * 3 + "イベン…"  # 31 columns: one more character makes 33
    assert _render.display_width(shown) <= _render.MAX_CELL


def test_bars_align_wide_labels() -> None:
    lines = _render.bars([("ユーザー", 2), ("user", 1)], width=4)

    assert [_render.display_width(line[: line.index("█")]) for line in lines] == [13, 13]


def test_event_json_is_one_object_with_proto_field_names() -> None:
    data = orjson.loads(_render.event_json(enriched("e-1")))
    assert data["event"]["event_id"] == "e-1"
    assert data["corrected_timestamp"] == "2026-01-01T00:00:00.005Z"
    assert data["app_id"] == "shop"


def test_a_time_past_the_calendar_is_shown_raw_not_a_crash() -> None:
    # A producer that skipped the gateway's checks can get such a time into the streams.
    item = enriched("e-2")
    item.event.client_timestamp.seconds = 10**15

    data = orjson.loads(_render.event_json(item))

    assert data["event"]["client_timestamp"] == {"seconds": 10**15, "nanos": 0}
    assert data["event"]["event_id"] == "e-2"
    assert data["corrected_timestamp"] == "2026-01-01T00:00:00.005Z"
    item.ClearField("corrected_timestamp")
    assert line(item).split()[0] == "-"  # the line shows the corrected time only: unset
    assert "invalid(1000000000000000s,0ns)" in "\n".join(_render.table([item]))


def test_bars_scale_to_the_largest_count_and_show_small_ones() -> None:
    lines = _render.bars([("a", 100), ("bb", 50), ("c", 1), ("d", 0)], width=10)
    assert lines == [
        "a   100  " + "█" * 10,
        "bb   50  " + "█" * 5,
        "c     1  █",
        "d     0",
    ]


def test_aggregate_prints_total_counts_and_histogram() -> None:
    response = query_service_pb2.AggregateEventsResponse(
        total_count=3,
        counts=[query_service_pb2.TermCount(value="open", count=2)],
        histogram=[query_service_pb2.HistogramBucket(start_time=Timestamp(seconds=0), count=3)],
    )
    lines = _render.aggregate(response, by="event_name", interval="hour")
    assert lines[0] == "total: 3"
    assert "by event_name:" in lines
    assert "per hour:" in lines
    assert any(text.startswith("  open  2  ") and "█" in text for text in lines)
    assert any(text.startswith("  1970-01-01T00:00:00.000Z  3  ") for text in lines)
    assert not any("approximate" in text for text in lines)


def test_aggregate_says_when_the_counts_are_approximate() -> None:
    response = query_service_pb2.AggregateEventsResponse(
        total_count=30,
        counts=[query_service_pb2.TermCount(value="open", count=20)],
        count_error_upper_bound=3,
    )
    lines = _render.aggregate(response, by="event_name", interval="")
    assert "  (approximate: each count may be short by up to 3)" in lines


def test_tail_filter_and_line() -> None:
    match = EventMatch(users=["u1"], apps=["shop"])
    assert match(enriched("e", user="u1"))
    assert not match(enriched("e", user="u2"))
    assert not match(enriched("e", app="other"))
    assert EventMatch()(enriched("e", user="anyone"))
    assert line(enriched("e-9")).split() == [
        "2026-01-01T00:00:00.005Z",
        "shop",
        "screen_view",
        "u1",
        "e-9",
    ]
