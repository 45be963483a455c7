"""event_message: event name and metadata as one searchable text."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from enricher._message import event_message, event_message_chars


def test_name_then_keys_and_values_in_key_order() -> None:
    text = event_message("item_purchased", {"sku": "A-1", "price": "9.99"})
    assert text == "item_purchased price 9.99 sku A-1"


def test_no_metadata_is_the_name() -> None:
    assert event_message("app_open", {}) == "app_open"


def test_empty_name_has_no_leading_space() -> None:
    assert event_message("", {"k": "v"}) == "k v"


def test_length_is_bounded() -> None:
    text = event_message("e", {"k": "v" * 10_000}, max_chars=100)
    assert len(text) == 100
    assert text.startswith("e k vvv")


@given(
    name=st.text(max_size=50),
    metadata=st.dictionaries(st.text(max_size=20), st.text(max_size=50), max_size=10),
    limit=st.integers(min_value=1, max_value=500),
)
def test_every_value_is_findable_when_it_fits(
    name: str, metadata: dict[str, str], limit: int
) -> None:
    text = event_message(name, metadata, max_chars=limit)
    assert len(text) <= limit
    full = event_message(name, metadata, max_chars=10**9)
    assert full.startswith(text)
    for key, value in metadata.items():
        assert f"{key} {value}" in full


@given(
    name=st.text(max_size=50),
    metadata=st.dictionaries(st.text(max_size=20), st.text(max_size=50), max_size=10),
)
def test_the_length_before_the_cut_is_that_of_the_whole_text(
    name: str, metadata: dict[str, str]
) -> None:
    assert event_message_chars(name, metadata) == len(
        event_message(name, metadata, max_chars=10**9)
    )


def test_a_text_exactly_as_long_as_the_limit_is_not_cut() -> None:
    text = event_message("e", {"k": "v" * 96}, max_chars=100)
    assert len(text) == 100
    assert event_message_chars("e", {"k": "v" * 96}) == 100
    assert event_message_chars("e", {"k": "v" * 97}) == 101
