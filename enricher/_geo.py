"""GeoIP: the country (and city, with a MaxMind database) of a client IP address.

The default lookup is the offline table embedded in `iptocc` (country only, no
download). With a MaxMind-format database path, `maxminddb` answers country and
city. Addresses that are not public (private, loopback, reserved, link-local,
multicast) and strings that are no address get no geo at all.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from typing import Any, Protocol

import iptocc
import maxminddb
from telemetry.v1 import event_pb2

from enricher.errors import SetupError

_IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Bounds the cache of public_address: a client sends many batches from one address.
_CACHE_SIZE = 4096
# The longest text of an IP address ("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"): a
# longer client_ip is no address, and is neither parsed nor kept as a cache key.
MAX_IP_TEXT_CHARS = 45


class GeoLookup(Protocol):
    """Looks up a public IP address; None when the address is not known."""

    def lookup(self, ip: str) -> event_pb2.Geo | None: ...


@functools.lru_cache(maxsize=_CACHE_SIZE)
def public_address(text: str) -> str | None:
    """The normalised address when `text` is a public IP address, else None."""
    try:
        address: _IpAddress = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if (
        address.is_private
        or address.is_loopback
        or address.is_reserved
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or not address.is_global
    ):
        return None
    return str(address)


def geo_of(client_ip: str, lookup: GeoLookup) -> event_pb2.Geo | None:
    """The geo of a client IP address, or None (not an address, not public, not known)."""
    if len(client_ip) > MAX_IP_TEXT_CHARS:
        return None
    address = public_address(client_ip)
    if address is None:
        return None
    return lookup.lookup(address)


class OfflineGeo:
    """Country codes from the table embedded in `iptocc`."""

    def lookup(self, ip: str) -> event_pb2.Geo | None:
        """The country of `ip`, or None."""
        code = iptocc.country_code(ip)
        return event_pb2.Geo(country_code=code) if code else None


class MmdbReader(Protocol):
    """The part of `maxminddb.Reader` used here."""

    def get(self, ip_address: str) -> Any: ...

    def close(self) -> None: ...


class MaxMindGeo:
    """Country and city from a MaxMind-format database (GeoLite2/GeoIP2 City or Country)."""

    def __init__(self, reader: MmdbReader) -> None:
        self._reader = reader

    def lookup(self, ip: str) -> event_pb2.Geo | None:
        """The country and city of `ip`, or None."""
        try:
            record = self._reader.get(ip)
        except ValueError:
            return None
        if not isinstance(record, Mapping):
            return None
        code = _path(record, "country", "iso_code") or _path(
            record, "registered_country", "iso_code"
        )
        city = _path(record, "city", "names", "en")
        if not code and not city:
            return None
        return event_pb2.Geo(country_code=code, city=city)

    def close(self) -> None:
        """Closes the database."""
        self._reader.close()


def _path(record: Mapping[str, Any], *keys: str) -> str:
    node: Any = record
    for key in keys:
        if not isinstance(node, Mapping):
            return ""
        node = node.get(key)
    return node if isinstance(node, str) else ""


def open_geo(db_path: str) -> OfflineGeo | MaxMindGeo:
    """The lookup for the setting ENRICHER_GEOIP_DB: empty means the embedded table."""
    if not db_path:
        return OfflineGeo()
    try:
        reader = maxminddb.open_database(db_path)
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as err:
        raise SetupError(f"ENRICHER_GEOIP_DB={db_path!r}: cannot open: {err}") from err
    return MaxMindGeo(reader)
