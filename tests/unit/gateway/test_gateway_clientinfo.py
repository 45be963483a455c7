"""Client IP behind trusted proxies, request ids, gRPC peers."""

from __future__ import annotations

import pytest

from gateway._clientinfo import ClientIpResolver, grpc_peer_ip, request_id

RESOLVER = ClientIpResolver(["10.0.0.0/8", "::1/128"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("203.0.113.9", "198.51.100.1", "203.0.113.9"),  # untrusted peer: header ignored
        ("10.1.2.3", "198.51.100.1", "198.51.100.1"),
        ("10.1.2.3", "198.51.100.1, 10.9.9.9", "198.51.100.1"),  # two trusted hops
        ("10.1.2.3", "6.6.6.6, 198.51.100.1", "198.51.100.1"),  # spoofed left part ignored
        ("10.1.2.3", "10.2.2.2", "10.2.2.2"),  # all trusted: leftmost
        ("10.1.2.3", "garbage", "10.1.2.3"),
        ("10.1.2.3", None, "10.1.2.3"),
        ("::1", "2001:db8::1", "2001:db8::1"),
        # A dual-stack socket's IPv4 peer, and hops written with ports or brackets.
        ("::ffff:10.0.0.5", "203.0.113.9", "203.0.113.9"),
        ("::ffff:203.0.113.9", "198.51.100.1", "203.0.113.9"),
        ("10.1.2.3", "::ffff:10.2.2.2, 81.2.69.142:5555", "81.2.69.142"),
        ("10.1.2.3", "[2001:db8::1]:443", "2001:db8::1"),
        ("10.1.2.3", "198.51.100.1, [::ffff:10.9.9.9]:80", "198.51.100.1"),
        ("10.1.2.3", "81.2.69.142:port", "10.1.2.3"),
        ("10.1.2.3", "[2001:db8::1", "10.1.2.3"),
    ],
)
def test_forwarded_for_only_from_trusted_proxies(
    peer: str, forwarded: str | None, expected: str
) -> None:
    assert RESOLVER.resolve(peer, forwarded) == expected


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert ClientIpResolver([]).resolve("10.1.2.3", "198.51.100.1") == "10.1.2.3"


def test_request_id_kept_when_sane_else_generated() -> None:
    assert request_id("abc-123:x.y_z") == "abc-123:x.y_z"
    generated = {request_id(bad) for bad in (None, "", "a b", "x" * 129, "é")}
    assert len(generated) == 5
    assert all(len(rid) == 32 for rid in generated)


@pytest.mark.parametrize(
    ("peer", "ip"),
    [
        ("ipv4:127.0.0.1:5000", "127.0.0.1"),
        ("ipv6:[::1]:5000", "::1"),
        ("ipv6:%5B::1%5D:53776", "::1"),  # as grpcio writes it
        ("ipv6:%5B2001:db8::7%5D:443", "2001:db8::7"),
        ("ipv6:%5B::ffff:10.0.0.5%5D:443", "10.0.0.5"),
        ("ipv6:%5Bnot-an-ip%5D:443", ""),
        ("unix:/tmp/s", ""),
    ],
)
def test_grpc_peer_ip(peer: str, ip: str) -> None:
    assert grpc_peer_ip(peer) == ip
