"""The composable index template every `<prefix>*` index is created from.

Field names are the original pipeline's, so its queries work unchanged; the enriched
fields are added beside them. `metadata` is a `flat_object`: any number of distinct
keys share one mapping entry. `dynamic: strict` rejects a document with a field the
template does not name, so nothing grows the mapping behind our back.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

# Bump when the shape of the body below changes. start() leaves a template of a higher
# version alone (a newer indexer owns it) and replaces one of a lower version, or of the
# same version whose settings differ (a changed shard, replica or refresh setting).
TEMPLATE_VERSION = 2
DEFAULT_REFRESH_INTERVAL = "500ms"

_KEYWORDS = (
    "event_id",
    "session_id",
    "user_id",
    "event_name",
    "app_version",
    "device_os",
    "geo_country",
    "geo_city",
    "os_name",
    "os_version",
    "clock_status",
    "app_id",
    "request_id",
)
_DATES = ("client_timestamp", "ingestion_timestamp", "corrected_timestamp", "enriched_at")


def template_name(prefix: str) -> str:
    """The template's name for an index prefix."""
    return f"{prefix}events"


def index_pattern(prefix: str) -> str:
    """The index pattern the template applies to (queries search only the indexer's own
    indices under it: `store.OpenSearchStore.searched`)."""
    return f"{prefix}*"


def mappings() -> dict[str, Any]:
    """The document mapping."""
    properties: dict[str, Any] = {name: {"type": "keyword"} for name in _KEYWORDS}
    properties.update({name: {"type": "date"} for name in _DATES})
    properties["event_message"] = {"type": "text"}
    properties["metadata"] = {"type": "flat_object"}
    properties["clock_skew_ms"] = {"type": "long"}
    return {"dynamic": "strict", "properties": properties}


def template_body(
    *,
    prefix: str,
    shards: int,
    replicas: int,
    priority: int,
    refresh_interval: str = DEFAULT_REFRESH_INTERVAL,
) -> dict[str, Any]:
    """The `_index_template` body for indices named `<prefix>*`.

    `_meta.digest` fingerprints everything else, so an installed template can be
    compared with the one the current settings call for.
    """
    body: dict[str, Any] = {
        "index_patterns": [index_pattern(prefix)],
        "priority": priority,
        "version": TEMPLATE_VERSION,
        "template": {
            "settings": {
                "number_of_shards": shards,
                "number_of_replicas": replicas,
                "refresh_interval": refresh_interval,
            },
            "mappings": mappings(),
        },
    }
    digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    body["_meta"] = {"owner": "indexer", "digest": digest}
    return body
