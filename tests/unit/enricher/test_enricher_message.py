"""event_message: event name and metadata as one searchable text."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from enricher._message import event_message, whole_event_message


def test_name_then_keys_and_values_in_key_order() -> None:
    text = event_message("item_purchased", {"sku": "A-1", "price": "9.99"})
    assert text == "item_purchased price 9.99 sku A-1"


def test_no_metadata_is_the_name() -> None:
    assert event_message("app_open", {}) == "app_open"


def test_empty_name_has_no_leading_space() -> None:
    assert event_message("", {"k": "v"}) == "k v"


def test_length_is_bounded() -> None:
    text = event_message("e", {"k": "v w " * 10_000}, max_chars=100)
    assert text == ("e k " + "v w " * 24).rstrip()
    assert len(text) == 99


def test_a_word_the_cut_falls_in_is_left_out() -> None:
    # "E4" of "E42" would be a word of its own: q=E4 would find this event.
    metadata = {"order": "E42 E43", "sku": "A-1"}
    assert event_message("buy", metadata) == "buy order E42 E43 sku A-1"
    assert event_message("buy", metadata, max_chars=12) == "buy order"
    assert event_message("buy", metadata, max_chars=11) == "buy order"


def test_a_cut_at_a_words_end_keeps_the_word() -> None:
    metadata = {"order": "E42 E43", "sku": "A-1"}
    assert event_message("buy", metadata, max_chars=13) == "buy order E42"
    assert event_message("buy", metadata, max_chars=14) == "buy order E42"  # at the E of E43


def test_a_text_without_whitespace_before_the_cut_is_cut_in_its_one_word() -> None:
    assert event_message("e" * 10_000, {}, max_chars=100) == "e" * 100
    assert event_message("open", {"k": "v"}, max_chars=3) == "ope"
    assert event_message("open", {"k": "v"}, max_chars=4) == "open"


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
    limit=st.integers(min_value=1, max_value=500),
)
def test_a_cut_text_holds_the_whole_words_before_the_cut_and_nothing_else(
    name: str, metadata: dict[str, str], limit: int
) -> None:
    full = whole_event_message(name, metadata)
    text = event_message(name, metadata, max_chars=limit)
    if len(full) <= limit:
        assert text == full
        return
    assert len(text) <= limit
    kept = full[:limit]
    whole = [word.group() for word in re.finditer(r"\S+", full) if word.end() <= limit]
    if not whole:  # the first word is longer than the limit: cut in it
        assert text.strip() == kept.strip()
        return
    assert text.split() == whole
    assert full.startswith(text)
    assert text == "" or not text[-1].isspace()


def test_a_first_word_after_whitespace_is_cut_in_not_left_out() -> None:
    # An event name may start with a space: its first word is still the first word.
    assert event_message(" " + "x" * 20, {}, max_chars=10) == " " + "x" * 9
    assert event_message("", {" k": "v" * 20}, max_chars=10) == " k"


def test_a_text_exactly_as_long_as_the_limit_is_not_cut() -> None:
    assert event_message("e", {"k": "v" * 96}, max_chars=100) == "e k " + "v" * 96
    assert event_message("e", {"k": "v" * 97}, max_chars=100) == "e k"
