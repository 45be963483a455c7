"""Who is calling: client IP (X-Forwarded-For only from trusted proxies) and request id."""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Iterable

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientIpResolver:
    """Finds the client's address, believing X-Forwarded-For only from trusted proxies."""

    def __init__(self, trusted: Iterable[str]) -> None:
        self._trusted: tuple[Network, ...] = tuple(
            ipaddress.ip_network(cidr, strict=False) for cidr in trusted
        )

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)

    def resolve(self, peer: str, forwarded_for: str | None) -> str:
        """The client IP: the peer, or the nearest untrusted hop of X-Forwarded-For."""
        if not self._trusted or not forwarded_for or not self._is_trusted(peer):
            return peer
        hops = [hop.strip() for hop in forwarded_for.split(",")]
        for hop in reversed(hops):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                # A malformed hop: stop believing the chain here.
                return peer
            if not self._is_trusted(hop):
                return hop
            peer = hop
        return peer


def request_id(offered: str | None) -> str:
    """The client's X-Request-Id when it is sane, else a new one."""
    if offered and REQUEST_ID.fullmatch(offered):
        return offered
    return uuid.uuid4().hex


def grpc_peer_ip(peer: str) -> str:
    """The IP of a grpc peer string such as 'ipv4:127.0.0.1:5000' or 'ipv6:[::1]:5000'."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        host = rest.rpartition(":")[0]
        return host.strip("[]")
    return ""
