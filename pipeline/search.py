"""OpenSearch client construction from settings (the one place that knows the options)."""

from __future__ import annotations

from typing import Any

from opensearchpy import AsyncOpenSearch

from pipeline.settings import OpenSearchSettings


def client_options(settings: OpenSearchSettings) -> dict[str, Any]:
    """Keyword options for an OpenSearch client: hosts, basic auth and TLS."""
    options: dict[str, Any] = {
        "hosts": list(settings.opensearch_url),
        "timeout": settings.opensearch_timeout_s,
        "retry_on_timeout": False,
        "max_retries": 0,
    }
    if settings.opensearch_username:
        options["http_auth"] = (settings.opensearch_username, settings.opensearch_password)
    if any(url.startswith("https://") for url in settings.opensearch_url):
        options["use_ssl"] = True
        options["verify_certs"] = settings.opensearch_verify_certs
        if settings.opensearch_ca_certs:
            options["ca_certs"] = settings.opensearch_ca_certs
    return options


def async_client(settings: OpenSearchSettings) -> AsyncOpenSearch:
    """An asyncio OpenSearch client; retries are the caller's business."""
    return AsyncOpenSearch(**client_options(settings))
