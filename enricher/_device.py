"""device_os parsing: "iOS 17.2" -> ("iOS", "17.2"), leniently."""

from __future__ import annotations

import functools
import re

# The longest device_os the gateway takes (GATEWAY_MAX_FIELD_CHARS's default). Only this
# much is read: a longer text (published to NATS by something else) would otherwise be
# parsed whole and kept whole as a cache key.
MAX_DEVICE_OS_CHARS = 256
MAX_NAME_CHARS = 64
MAX_VERSION_CHARS = 32
_CACHE_SIZE = 4096

# A version: digits, then groups of digits joined by "." or "_" ("10_15_7" is macOS's UA style).
# ASCII digits only: \d would also take other scripts' digits (Arabic-Indic, fullwidth).
_VERSION = re.compile(r"(?<![A-Za-z0-9_.])v?(\d+(?:[._]\d+)*)", re.ASCII)
_TRIM = " \t/-_:;,("

_CANONICAL = {
    "ios": "iOS",
    "iphone os": "iOS",
    "ipados": "iPadOS",
    "android": "Android",
    "macos": "macOS",
    "mac os x": "macOS",
    "os x": "macOS",
    "watchos": "watchOS",
    "tvos": "tvOS",
    "visionos": "visionOS",
    "xros": "visionOS",
    "windows": "Windows",
    "linux": "Linux",
}


def canonical_os_name(name: str) -> str:
    """The usual spelling of a known OS name ("ios" -> "iOS"); others unchanged."""
    return _CANONICAL.get(" ".join(name.lower().split()), name)


def parse_device_os(device_os: str) -> tuple[str, str]:
    """Splits a device_os text into (os name, os version); either may be empty.

    The version is the first number-like token ("17.2", "10_15_7" -> "10.15.7");
    the name is the text before it, or the whole text when there is no version. A
    number glued to letters ("x86_64", "iOS17") is part of the name, not a version.
    Only the first MAX_DEVICE_OS_CHARS characters are read. Never raises; both parts
    are bounded in length.
    """
    return _parse(device_os[:MAX_DEVICE_OS_CHARS])


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _parse(device_os: str) -> tuple[str, str]:
    text = " ".join(device_os.split())
    match = _VERSION.search(text)
    if match is None:
        name, version = text, ""
    else:
        name = text[: match.start()]
        version = match.group(1).replace("_", ".")
    name = name.strip(_TRIM)
    return canonical_os_name(name)[:MAX_NAME_CHARS].rstrip(), version[:MAX_VERSION_CHARS].rstrip(
        "."
    )
