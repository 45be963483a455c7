"""Who is calling: client IP (X-Forwarded-For only from trusted proxies) and request id."""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
import uuid
from collections.abc import Iterable

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def address(text: str) -> Address | None:
    """The IP of an address as peers and proxies write it: `1.2.3.4`, `1.2.3.4:5555`,
    `2001:db8::1`, `[2001:db8::1]:443`; an IPv4-mapped IPv6 address (`::ffff:10.0.0.5`, a
    dual-stack socket's IPv4 peer) as its IPv4 address. None when it is not one."""
    text = text.strip()
    if text.startswith("["):
        host, closed, port = text[1:].partition("]")
        if not closed or (port and not _PORT.fullmatch(port)):
            return None
        text = host
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        if not _PORT.fullmatch(":" + port):
            return None
        text = host
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


_PORT = re.compile(r":[0-9]{1,5}")


class ClientIpResolver:
    """Finds the client's address, believing X-Forwarded-For only from trusted proxies."""

    def __init__(self, trusted: Iterable[str]) -> None:
        self._trusted: tuple[Network, ...] = tuple(
            ipaddress.ip_network(cidr, strict=False) for cidr in trusted
        )

    def _is_trusted(self, ip: Address) -> bool:
        return any(ip in network for network in self._trusted)

    def resolve(self, peer: str, forwarded_for: str | None) -> str:
        """The client IP: the peer, or the nearest untrusted hop of X-Forwarded-For; written
        without port or brackets, an IPv4-mapped address as IPv4."""
        ip = address(peer)
        if ip is None:
            return peer
        if not self._trusted or not forwarded_for or not self._is_trusted(ip):
            return str(ip)
        for hop in reversed(forwarded_for.split(",")):
            hop_ip = address(hop)
            if hop_ip is None:
                # A malformed hop: stop believing the chain here.
                return str(ip)
            if not self._is_trusted(hop_ip):
                return str(hop_ip)
            ip = hop_ip
        return str(ip)


def request_id(offered: str | None) -> str:
    """The client's X-Request-Id when it is sane, else a new one."""
    if offered and REQUEST_ID.fullmatch(offered):
        return offered
    return uuid.uuid4().hex


def grpc_peer_ip(peer: str) -> str:
    """The IP of a grpc peer string such as 'ipv4:127.0.0.1:5000' or 'ipv6:%5B::1%5D:5000'
    (grpcio percent-encodes the brackets); '' for any other kind of peer."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return ""
    ip = address(urllib.parse.unquote(rest))
    return "" if ip is None else str(ip)
