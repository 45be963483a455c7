"""Hostile input against a real gateway process: schemathesis from its OpenAPI document, then
hypothesis-made bodies, headers, encodings and query strings. Never a 5xx, never a crash."""

from __future__ import annotations

import collections
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from gateway._openapi import document
from gateway._query import AGGREGATE_PARAMS, EVENTS_PARAMS
from tests.procs import READ_KEY, WRITE_KEY, Pipeline
from tests.unit.gateway.strategies import requests as hostile_requests

pytestmark = pytest.mark.integration

SCHEMA_EXAMPLES = 250  # per operation and mode (the parameterless ones run far fewer)
BODY_EXAMPLES = 5500
QUERY_EXAMPLES = 4000
MIN_CASES = 10_000
READ_PATHS = ("/v1/events", "/v1/events/aggregate")

statuses: collections.Counter[int] = collections.Counter()
cases: collections.Counter[str] = collections.Counter()
query_statuses: collections.Counter[int] = collections.Counter()


def fuzz(examples: int) -> settings:
    """Hypothesis settings of one fuzz test: no deadline, no example database."""
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )


def _key_for(path: str) -> str:
    return READ_KEY if path in READ_PATHS else WRITE_KEY


@pytest.fixture(scope="module")
def client(secured: Pipeline) -> Iterator[httpx.Client]:
    """One keep-alive client for the hypothesis tests (a client per request is slow)."""
    with httpx.Client(base_url=secured.gateway.base_url, timeout=30) as shared:
        yield shared


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    """One keep-alive session for schemathesis's calls."""
    with requests.Session() as shared:
        yield shared


@pytest.fixture(scope="module")
def gateway_api(secured: Pipeline) -> schemathesis.BaseSchema:
    """The gateway's own OpenAPI document, as it serves it."""
    return schemathesis.openapi.from_url(f"{secured.gateway.base_url}/openapi.json")


OPERATIONS = [
    (method.upper(), path, mode)
    for path, methods in document()["paths"].items()
    for method in methods
    for mode in (
        (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        if path.startswith(("/v1/", "/telemetry."))
        else (GenerationMode.POSITIVE,)
    )
]


@pytest.mark.parametrize(("method", "path", "mode"), OPERATIONS)
def test_security_schemathesis_finds_no_5xx(
    gateway_api: schemathesis.BaseSchema,
    secured: Pipeline,
    session: requests.Session,
    method: str,
    path: str,
    mode: GenerationMode,
) -> None:
    operation = gateway_api[path][method]
    auth = {"Authorization": f"Bearer {_key_for(path)}"}

    @given(case=operation.as_strategy(generation_mode=mode))
    @fuzz(SCHEMA_EXAMPLES)
    def run(case: schemathesis.Case[Any]) -> None:
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "x-api-key"}
        response = case.call(
            base_url=secured.gateway.base_url,
            session=session,
            headers={**headers, **auth},
            timeout=30,
        )
        cases["schemathesis"] += 1
        statuses[response.status_code] += 1
        assert response.status_code < 500, (method, path, mode, response.text[:300])

    run()


@given(case=hostile_requests())
@fuzz(BODY_EXAMPLES)
def test_security_hostile_bodies_and_encodings(
    client: httpx.Client, case: tuple[str, bytes, dict[str, str]]
) -> None:
    path, body, headers = case
    response = client.post(
        path,
        content=body,
        headers={"X-Api-Key": WRITE_KEY, **headers},
        timeout=30,
    )
    cases["bodies"] += 1
    statuses[response.status_code] += 1
    assert response.status_code < 500, response.text[:300]


_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
# The read routes' own parameter names (so values reach their parsers), and a few others.
_names = sorted({*EVENTS_PARAMS, *AGGREGATE_PARAMS, "text", "from", "order"})
_params = st.lists(
    st.tuples(
        st.sampled_from(_names) | _text,
        _text
        | st.integers(-(2**70), 2**70).map(str)
        | st.sampled_from(
            ["", "now-1d", "🚀", "2024-01-01T00:00:00Z", "2024-02-30T25:61:00+99:99"]
        ),
    ),
    max_size=6,
)
# Mostly the read key, so that most cases get past authentication to the parameters.
_auth = st.sampled_from(
    [
        f"Bearer {READ_KEY}",
        f"Bearer {READ_KEY}",
        f"Bearer {READ_KEY}",
        f"Bearer {READ_KEY}",
        f"bearer {READ_KEY}",
        f"Bearer  {READ_KEY}",
        f"Basic {READ_KEY}",
        "Bearer",
        "",
        f"Bearer {WRITE_KEY}",
    ]
)


@given(path=st.sampled_from(READ_PATHS), params=_params, auth=_auth)
@fuzz(QUERY_EXAMPLES)
def test_security_hostile_queries_and_auth_headers(
    client: httpx.Client, path: str, params: list[tuple[str, str]], auth: str
) -> None:
    query = urllib.parse.urlencode(params)
    response = client.get(f"{path}?{query}", headers={"Authorization": auth}, timeout=30)
    cases["queries"] += 1
    query_statuses[response.status_code] += 1
    statuses[response.status_code] += 1
    assert response.status_code < 500, response.text[:300]


def test_security_fuzz_total_and_the_gateway_still_answers(secured: Pipeline) -> None:
    """Runs after the fuzz tests above (file order): counts them, then checks the gateway."""
    total = sum(cases.values())
    print(f"\nfuzz cases run: {total} {dict(cases)}; statuses: {dict(sorted(statuses.items()))}")
    assert total >= MIN_CASES, (
        f"{total} fuzz cases ran; run the whole module: this test counts the cases above it"
    )
    # Most query cases reached the parameters' parsing (past 401/403) and some were answered.
    past_auth = cases["queries"] - query_statuses[401] - query_statuses[403]
    assert past_auth * 2 > cases["queries"], dict(query_statuses)
    assert query_statuses[200] > 0, dict(query_statuses)
    assert httpx.get(f"{secured.gateway.base_url}/healthz", timeout=10).status_code == 200
    assert secured.gateway.pid is not None
    assert not any(status >= 500 for status in statuses)
