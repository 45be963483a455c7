"""`tpipe status` checks a production OpenSearch as the indexer reaches it: over https with a
private CA (OPENSEARCH_CA_CERTS), with basic auth, at any of the URLs of OPENSEARCH_URL; an
answer that refuses the credentials is said as such, not as "unreachable".

Stand-ins on loopback: one plain-HTTP server answers /readyz and /metrics for the three
services, another (TLS from a CA made here with the `openssl` CLI) /_cluster/health; the DLQ
line is a fixed answer, NATS being no part of this.
"""

from __future__ import annotations

import base64
import http.server
import json
import ssl
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.certificates import make_certificates
from tests.servers import free_port
from tpipe import _cmd_status, _commands

USER, PASSWORD = "monitor", "s3cret"
_HEALTH = {"status": "green", "number_of_nodes": 3, "active_shards": 12, "unassigned_shards": 0}


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A private CA, and a certificate it signed for 127.0.0.1: (ca, cert, key)."""
    return make_certificates(tmp_path_factory.mktemp("certs"))


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/readyz":
            self._answer(200, json.dumps({"status": "ready"}), "application/json")
        elif self.path == "/metrics":
            self._answer(200, "", "text/plain; version=0.0.4")
        elif self.path.startswith("/_cluster/health"):
            token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            if self.headers.get("Authorization") == f"Basic {token}":
                self._answer(200, json.dumps(_HEALTH), "application/json")
            else:
                error = {"error": {"type": "security_exception"}, "status": 401}
                self._answer(401, json.dumps(error), "application/json")
        else:
            self._answer(404, "{}", "application/json")

    def _answer(self, status: int, body: str, content_type: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Any]:
    """Starts stand-in servers (TLS when given a context); their base URLs."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(tls: ssl.SSLContext | None = None) -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        scheme = "https" if tls is not None else "http"
        return f"{scheme}://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def tls_opensearch(serve: Any, certificates: tuple[Path, Path, Path]) -> str:
    _, cert, key = certificates
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    url: str = serve(tls)
    return url


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENSEARCH_CA_CERTS", "OPENSEARCH_VERIFY_CERTS", "SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENSEARCH_USERNAME", USER)
    monkeypatch.setenv("OPENSEARCH_PASSWORD", PASSWORD)

    async def from_nats(*_: object) -> _cmd_status.NatsView:
        return _cmd_status.NatsView({"stream": "TELEMETRY_DLQ", "messages": 0, "bytes": 0})

    monkeypatch.setattr(_cmd_status, "nats_view", from_nats)


def _status_once(
    services: str, opensearch: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any]]:
    argv = ["status", "--once", "--format", "json", "--sample", "0.05"]
    for option in ("--gateway", "--enricher", "--indexer"):
        argv += [option, services]
    capsys.readouterr()
    code = _commands.run([*argv, "--opensearch", opensearch])
    out = capsys.readouterr().out
    doc: dict[str, Any] = json.loads(out)
    return code, doc


def test_https_with_a_private_ca_and_credentials(
    serve: Any,
    tls_opensearch: str,
    certificates: tuple[Path, Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    services = serve()
    code, doc = _status_once(services, tls_opensearch, capsys)
    assert code == 3
    assert "ClientConnectorCertificateError" in doc["opensearch"]["error"]
    assert "OPENSEARCH_CA_CERTS" in doc["opensearch"]["error"]

    monkeypatch.setenv("OPENSEARCH_CA_CERTS", str(certificates[0]))
    code, doc = _status_once(services, tls_opensearch, capsys)
    assert doc["opensearch"] == _HEALTH
    assert (code, doc["healthy"]) == (0, True)

    monkeypatch.delenv("OPENSEARCH_CA_CERTS")
    monkeypatch.setenv("OPENSEARCH_VERIFY_CERTS", "false")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the client's own word that this is insecure
        code, doc = _status_once(services, tls_opensearch, capsys)
    assert (code, doc["opensearch"]) == (0, _HEALTH)


def test_refused_credentials_are_said_as_such(
    serve: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    services = serve()
    monkeypatch.setenv("OPENSEARCH_PASSWORD", "wrong")
    code, doc = _status_once(services, services, capsys)
    assert doc["opensearch"] == {
        "error": "opensearch answered 401: check OPENSEARCH_USERNAME/PASSWORD",
        "http_status": 401,
    }
    assert code == 2  # a setting to fix: not "try again later"


def test_a_dead_node_is_passed_over_for_one_that_answers(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    services = serve()
    dead = f"http://127.0.0.1:{free_port()}"
    code, doc = _status_once(services, f"{dead},{services}", capsys)
    assert (code, doc["opensearch"]) == (0, _HEALTH)

    code, doc = _status_once(services, f"{dead}, http://127.0.0.1:{free_port()}", capsys)
    assert code == 3
    assert doc["opensearch"]["error"].startswith("opensearch unreachable at all 2 URLs (")


def test_settings_opensearch_cannot_use_are_a_usage_error(
    serve: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    services = serve()
    monkeypatch.setenv("OPENSEARCH_VERIFY_CERTS", "perhaps")
    assert _commands.run(["status", "--once", "--opensearch", services]) == 2
    assert "OPENSEARCH_VERIFY_CERTS" in capsys.readouterr().err
    monkeypatch.delenv("OPENSEARCH_VERIFY_CERTS")
    monkeypatch.setenv("OPENSEARCH_CA_CERTS", "/nonexistent/ca.pem")
    assert _commands.run(["status", "--once", "--opensearch", "https://127.0.0.1:9"]) == 2
    assert "OPENSEARCH_CA_CERTS" in capsys.readouterr().err
