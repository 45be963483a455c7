"""OpenSearch client options from settings: several hosts, basic auth, TLS."""

from __future__ import annotations

import certifi

from pipeline.config import load
from pipeline.search import client_options
from pipeline.settings import OpenSearchSettings


def test_plain_http_has_no_auth_and_no_tls() -> None:
    options = client_options(load(OpenSearchSettings, {}))
    assert options["hosts"] == ["http://127.0.0.1:9200"]
    assert "http_auth" not in options
    assert "use_ssl" not in options


def test_cluster_with_basic_auth_and_tls() -> None:
    env = {
        "OPENSEARCH_URL": "https://os1:9200,https://os2:9200",
        "OPENSEARCH_USERNAME": "admin",
        "OPENSEARCH_PASSWORD": "s3cret",
        "OPENSEARCH_CA_CERTS": certifi.where(),  # a CA bundle that is there (read at start)
    }
    options = client_options(load(OpenSearchSettings, env))
    assert options["hosts"] == ["https://os1:9200", "https://os2:9200"]
    assert options["http_auth"] == ("admin", "s3cret")
    assert options["use_ssl"] is True
    assert options["verify_certs"] is True
    assert options["ca_certs"] == certifi.where()


def test_certificate_checks_can_be_turned_off_explicitly() -> None:
    env = {"OPENSEARCH_URL": "https://os:9200", "OPENSEARCH_VERIFY_CERTS": "false"}
    assert client_options(load(OpenSearchSettings, env))["verify_certs"] is False
