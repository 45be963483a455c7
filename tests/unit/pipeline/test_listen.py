"""A server that cannot listen says so in one error naming its address and the setting to
change, before the server itself writes lines of its own."""

from __future__ import annotations

import errno
import socket

import grpc
import pytest

from pipeline.errors import ListenError
from pipeline.grpcserver import GrpcServer
from pipeline.listen import address, cannot_listen, check_bindable

NAMES = {"host_setting": "X_HOST", "port_setting": "X_PORT"}


def test_an_ipv6_host_is_written_in_brackets() -> None:
    assert address("127.0.0.1", 3000) == "127.0.0.1:3000"
    assert address("::", 3000) == "[::]:3000"


@pytest.mark.parametrize(
    ("err", "says"),
    [
        (
            OSError(errno.EADDRINUSE, "error while attempting to bind on address: ..."),
            "address already in use; another process listens there: stop it, or set X_PORT"
            " to a free port",
        ),
        (
            OSError(errno.EADDRNOTAVAIL, "..."),
            "cannot assign requested address; it is not an address of this host: set X_HOST",
        ),
        (
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            "name or service not known; it is not an address of this host: set X_HOST",
        ),
        (
            OSError(errno.EACCES, "..."),
            "permission denied; a port under 1024 needs privileges: set X_PORT",
        ),
        (OSError(errno.EMFILE, "..."), "too many open files; check X_HOST and X_PORT"),
    ],
)
def test_the_error_says_which_setting_to_change(err: OSError, says: str) -> None:
    error = cannot_listen("HTTP", "10.0.0.1", 80, err, **NAMES)
    assert str(error).startswith(f"HTTP cannot listen on 10.0.0.1:80: {says}")


def test_a_taken_port_cannot_be_bound_unless_shared(taken_port: int) -> None:
    with pytest.raises(OSError, match="in use") as caught:
        check_bindable("127.0.0.1", taken_port, reuse_port=False)
    assert caught.value.errno == errno.EADDRINUSE
    with pytest.raises(OSError, match="in use"):  # its holder does not share it
        check_bindable("127.0.0.1", taken_port, reuse_port=True)
    check_bindable("127.0.0.1", 0, reuse_port=False)  # any free one


def test_a_port_shared_with_so_reuseport_can_be_bound() -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        check_bindable("127.0.0.1", sock.getsockname()[1], reuse_port=True)


class EmptyServer(GrpcServer):
    def register(self, server: grpc.aio.Server) -> None:
        pass


async def test_a_grpc_port_taken_is_one_error_naming_it_and_no_line_of_grpcs(
    taken_port: int, capfd: pytest.CaptureFixture[str]
) -> None:
    server = EmptyServer(
        service_name="x.v1.X",
        host="127.0.0.1",
        port=taken_port,
        options=[("grpc.so_reuseport", 0)],
        **NAMES,
    )
    with pytest.raises(ListenError) as caught:
        await server.start()
    assert str(caught.value) == (
        f"gRPC cannot listen on 127.0.0.1:{taken_port}: address already in use; another"
        " process listens there: stop it, or set X_PORT to a free port"
    )
    assert "Failed to add port" not in capfd.readouterr().err  # gRPC's own error line
    await server.stop()  # nothing to stop


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this host has no IPv6 loopback")
async def test_a_grpc_server_listens_on_an_ipv6_host() -> None:
    server = EmptyServer(service_name="x.v1.X", host="::1", port=0, **NAMES)
    await server.start()  # gRPC takes [::1]:0, not ::1:0
    try:
        assert server.port > 0
    finally:
        await server.stop()
