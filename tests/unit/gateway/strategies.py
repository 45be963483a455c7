"""Hypothesis strategies for hostile bodies, headers and encodings."""

from __future__ import annotations

import gzip
from typing import Any

import orjson
from hypothesis import strategies as st

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
timestamps = st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.sampled_from(["2023-10-26T10:00:00Z", "2023-10-26T10:00:05.250Z", "2023-02-30T00:00:00Z"]),
    st.text(max_size=30),
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "event_id": st.one_of(st.uuids().map(str), st.text(max_size=140), json_scalars),
        "session_id": st.one_of(st.text(max_size=20), json_scalars),
        "user_id": st.one_of(st.text(max_size=20), json_scalars),
        "event_name": st.one_of(st.sampled_from(["tap", "screen_view"]), json_values),
        "client_timestamp": st.one_of(timestamps, json_scalars),
        "app_version": st.text(max_size=10),
        "device_os": st.text(max_size=10),
        "metadata": st.one_of(
            st.dictionaries(st.text(max_size=12), json_scalars, max_size=5), json_values
        ),
    },
)
batch_docs = st.one_of(
    st.lists(event_like, max_size=8),
    st.fixed_dictionaries(
        {"events": st.lists(event_like, max_size=8)}, optional={"sent_at": timestamps}
    ),
    json_values,
)
# What an HTTP client can send as a header value: visible ASCII, no surrounding spaces.
header_text = (
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=40)
    .map(str.strip)
    .filter(bool)
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers) of a possibly hostile ingest request."""
    path = draw(st.sampled_from(["/v1/track", "/telemetry.v1.IngestService/IngestEvents"]))
    kind = draw(st.sampled_from(["json", "raw"]))
    body: bytes
    if kind == "json":
        doc: Any = draw(batch_docs)
        body = orjson.dumps(doc)
    else:
        body = draw(st.binary(max_size=300))
    headers: dict[str, str] = {}
    content_type = draw(
        st.sampled_from(
            [
                "application/json",
                "application/proto",
                "text/plain",
                "",
                "application/json; charset=utf-16",
            ]
        )
        | header_text
    )
    if content_type:
        headers["Content-Type"] = content_type
    encoding = draw(st.sampled_from(["", "gzip", "identity", "br"]) | header_text)
    if encoding:
        headers["Content-Encoding"] = encoding
    if encoding == "gzip" and draw(st.booleans()):
        body = gzip.compress(body)
    for name in ("Idempotency-Key", "X-Request-Id", "X-Forwarded-For", "Connect-Protocol-Version"):
        if draw(st.booleans()):
            headers[name] = draw(header_text)
    return path, body, headers
