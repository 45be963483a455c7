"""GeoIP: the embedded table, the MaxMind path, and addresses that get no geo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from enricher._geo import (
    _CACHE_SIZE,
    MaxMindGeo,
    OfflineGeo,
    geo_of,
    open_geo,
    public_address,
)
from enricher.errors import SetupError
from tests.unit.enricher.mmdb_writer import write_mmdb


def test_public_ip_gets_its_country() -> None:
    geo = geo_of("81.2.69.142", OfflineGeo())
    assert geo is not None
    assert geo.country_code == "GB"
    assert geo.city == ""


def test_ipv4_mapped_ipv6_is_looked_up_as_ipv4() -> None:
    geo = geo_of("::ffff:81.2.69.142", OfflineGeo())
    assert geo is not None
    assert geo.country_code == "GB"


@pytest.mark.parametrize(
    "ip",
    [
        "127.0.0.1",  # loopback
        "10.1.2.3",  # private
        "192.168.0.10",  # private
        "172.16.5.4",  # private
        "100.64.0.1",  # shared address space (carrier NAT)
        "169.254.1.1",  # link-local
        "224.0.0.1",  # multicast
        "240.0.0.1",  # reserved
        "0.0.0.0",  # unspecified
        "::1",  # loopback
        "fe80::1",  # link-local
        "fd00::1",  # unique local
        "ff02::1",  # multicast
        "",
        "not an ip",
        "81.2.69.999",
        "81.2.69.142, 10.0.0.1",
    ],
)
def test_addresses_that_are_not_public_get_no_geo(ip: str) -> None:
    assert public_address(ip) is None
    assert geo_of(ip, OfflineGeo()) is None


def test_whitespace_around_an_address_is_ignored() -> None:
    assert public_address(" 81.2.69.142 ") == "81.2.69.142"


class _FakeReader:
    def __init__(self, records: dict[str, Any]) -> None:
        self.records = records
        self.closed = False

    def get(self, ip_address: str) -> Any:
        return self.records.get(ip_address)

    def close(self) -> None:
        self.closed = True


def test_maxmind_record_gives_country_and_city() -> None:
    reader = _FakeReader(
        {
            "81.2.69.142": {
                "country": {"iso_code": "GB", "names": {"en": "United Kingdom"}},
                "city": {"names": {"en": "London", "de": "London"}},
            },
            "2.125.160.216": {"registered_country": {"iso_code": "GB"}},
            "1.1.1.1": {"continent": {"code": "OC"}},
        }
    )
    geo = MaxMindGeo(reader)
    london = geo_of("81.2.69.142", geo)
    assert london is not None
    assert (london.country_code, london.city) == ("GB", "London")
    registered = geo.lookup("2.125.160.216")
    assert registered is not None
    assert (registered.country_code, registered.city) == ("GB", "")
    assert geo.lookup("1.1.1.1") is None
    assert geo.lookup("8.8.8.8") is None
    geo.close()
    assert reader.closed


def test_maxmind_record_of_an_odd_shape_gives_no_geo() -> None:
    geo = MaxMindGeo(_FakeReader({"1.1.1.1": {"country": "GB"}, "8.8.8.8": ["x"]}))
    assert geo.lookup("1.1.1.1") is None
    assert geo.lookup("8.8.8.8") is None


def test_empty_path_is_the_embedded_table() -> None:
    assert isinstance(open_geo(""), OfflineGeo)


def test_missing_database_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match="ENRICHER_GEOIP_DB"):
        open_geo(str(tmp_path / "missing.mmdb"))


def test_file_that_is_no_database_names_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "garbage.mmdb"
    path.write_bytes(b"this is not a maxmind database" * 10)
    with pytest.raises(SetupError, match="ENRICHER_GEOIP_DB"):
        open_geo(str(path))


def test_maxmind_database_file_gives_country_and_city(tmp_path: Path) -> None:
    path = tmp_path / "city.mmdb"
    write_mmdb(
        path,
        {
            "81.2.69.0/24": {
                "country": {"iso_code": "GB", "names": {"en": "United Kingdom"}},
                "city": {"names": {"en": "London"}},
            },
            "8.8.8.0/24": {"country": {"iso_code": "US"}},
        },
    )
    geo = open_geo(str(path))
    assert isinstance(geo, MaxMindGeo)
    try:
        london = geo_of("81.2.69.142", geo)
        assert london is not None
        assert (london.country_code, london.city) == ("GB", "London")
        us = geo_of("8.8.8.8", geo)
        assert us is not None
        assert (us.country_code, us.city) == ("US", "")
        assert geo_of("1.1.1.1", geo) is None  # not in the database
        assert geo_of("10.0.0.1", geo) is None  # private: never looked up
        assert geo_of("2a00:1450:4009:81f::200e", geo) is None  # IPv6 in an IPv4 database
    finally:
        geo.close()


def test_public_address_cache_is_bounded_and_answers_alike() -> None:
    assert public_address.cache_info().maxsize == _CACHE_SIZE
    for n in range(_CACHE_SIZE + 10):
        public_address(f"10.{n // 256 % 256}.{n % 256}.1")
    assert public_address.cache_info().currsize == _CACHE_SIZE
    # A cached answer is the one computed afresh.
    for text in ("81.2.69.142", "10.0.0.1", "::ffff:81.2.69.142", "bogus"):
        assert public_address(text) == public_address.__wrapped__(text)


def test_a_client_ip_longer_than_any_address_is_neither_parsed_nor_cached() -> None:
    public_address.cache_clear()
    assert geo_of("81.2.69.142" + " " * 1_000_000, OfflineGeo()) is None
    assert geo_of("1" * 100_000, OfflineGeo()) is None
    assert public_address.cache_info().currsize == 0
    # The longest address texts are still looked up.
    geo = geo_of("0000:0000:0000:0000:0000:ffff:81.2.69.142", OfflineGeo())
    assert geo is not None
    assert geo.country_code == "GB"
