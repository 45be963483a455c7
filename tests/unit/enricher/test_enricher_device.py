"""device_os parsing: the usual spellings, and properties over any text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enricher._device import MAX_NAME_CHARS, MAX_VERSION_CHARS, parse_device_os


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("iOS 17.2", ("iOS", "17.2")),
        ("iPadOS 17.0.1", ("iPadOS", "17.0.1")),
        ("Android 14", ("Android", "14")),
        ("macOS 14.1", ("macOS", "14.1")),
        ("watchOS 10", ("watchOS", "10")),
        ("iOS", ("iOS", "")),
        ("", ("", "")),
        ("   ", ("", "")),
        ("ios 17.2", ("iOS", "17.2")),
        ("  iOS   17.2  ", ("iOS", "17.2")),
        ("iPhone OS 16.6", ("iOS", "16.6")),
        ("Mac OS X 10_15_7", ("macOS", "10.15.7")),
        ("iOS/17.2", ("iOS", "17.2")),
        ("Android v13", ("Android", "13")),
        ("visionOS 1.0 (21N305)", ("visionOS", "1.0")),
        ("17.2", ("", "17.2")),
        ("Linux x86_64", ("Linux x86_64", "")),
        ("SomeOS", ("SomeOS", "")),
        # Arabic-Indic digits are no version, nor are fullwidth ones.
        ("Android \u0661\u0664", ("Android \u0661\u0664", "")),
        ("iOS \uff11\uff17.\uff12 17.2", ("iOS \uff11\uff17.\uff12", "17.2")),
    ],
)
def test_examples(text: str, expected: tuple[str, str]) -> None:
    assert parse_device_os(text) == expected


names = st.sampled_from(["iOS", "iPadOS", "Android", "macOS", "watchOS", "tvOS", "visionOS"])
versions = st.lists(st.integers(min_value=0, max_value=999), min_size=1, max_size=4).map(
    lambda parts: ".".join(map(str, parts))
)


@given(name=names, version=versions, gap=st.sampled_from([" ", "  ", "\t", " / "]))
def test_name_and_version_come_back(name: str, version: str, gap: str) -> None:
    assert parse_device_os(f"{name}{gap}{version}") == (name, version)


@given(name=names)
def test_case_does_not_matter_for_known_names(name: str) -> None:
    assert parse_device_os(f"{name.upper()} 1.2")[0] == name


@given(text=st.text(max_size=300))
def test_any_text_parses_within_bounds(text: str) -> None:
    name, version = parse_device_os(text)
    assert len(name) <= MAX_NAME_CHARS
    assert len(version) <= MAX_VERSION_CHARS
    assert version == "" or all(part.isascii() and part.isdigit() for part in version.split("."))
    assert name == name.strip()


@given(text=st.text(max_size=100))
def test_parsing_a_parse_is_stable(text: str) -> None:
    name, version = parse_device_os(text)
    again = f"{name} {version}".strip()
    if version and name:
        assert parse_device_os(again) == (name, version)


def test_long_version_is_cut_on_a_number() -> None:
    name, version = parse_device_os("iOS " + ".".join(["1"] * 40))
    assert name == "iOS"
    assert len(version) <= MAX_VERSION_CHARS
    assert not version.endswith(".")
