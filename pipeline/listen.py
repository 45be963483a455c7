"""What a service says when one of its servers cannot listen where its settings say: one line
naming the address, what is wrong and the setting to change, and never a server's own
traceback or error lines (`python -m <service>` logs it and exits 3)."""

from __future__ import annotations

import errno
import os
import socket

from pipeline.errors import ListenError


def address(host: str, port: int) -> str:
    """`host:port`, an IPv6 host in brackets (`[::]:3000`), as gRPC takes it and people read it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def cannot_listen(
    what: str, host: str, port: int, err: OSError, *, host_setting: str, port_setting: str
) -> ListenError:
    """The error of a server (`what`: HTTP, gRPC) that could not bind `host:port`, saying
    which of its two settings to change: the port when it is taken or needs privileges, the
    host when it is no address of this one."""
    if isinstance(err, socket.gaierror) or err.errno == errno.EADDRNOTAVAIL:
        hint = f"it is not an address of this host: set {host_setting} to one"
    elif err.errno == errno.EADDRINUSE:
        hint = f"another process listens there: stop it, or set {port_setting} to a free port"
    elif err.errno == errno.EACCES:
        hint = f"a port under 1024 needs privileges: set {port_setting} to a higher one"
    else:
        hint = f"check {host_setting} and {port_setting}"
    # OSError's own text may repeat the address ("error while attempting to bind on ...").
    reason = os.strerror(err.errno) if err.errno and err.errno > 0 else err.strerror or str(err)
    reason = reason[:1].lower() + reason[1:]
    return ListenError(f"{what} cannot listen on {address(host, port)}: {reason}; {hint}")


def bind_shared(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host:port` with SO_REUSEADDR and SO_REUSEPORT, not listening
    yet, as each of several processes sharing a port binds it; raises the bind's OSError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def check_bindable(host: str, port: int, *, reuse_port: bool) -> None:
    """Raises the OSError of binding `host:port` when none of the host's addresses can be
    bound, as a gRPC server binds them (SO_REUSEADDR, and SO_REUSEPORT when it shares its
    port); returns when one can, or the port is 0. gRPC would fail too, but it writes an
    error line of its own on stderr and says only `Failed to bind`. A port taken between this
    check and the server's bind is still refused by the server."""
    if port == 0:
        return
    first: OSError | None = None
    for family, kind, proto, _, sockaddr in socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind(sockaddr)
            except OSError as err:
                first = first or err
                continue
            return
    if first is not None:
        raise first
