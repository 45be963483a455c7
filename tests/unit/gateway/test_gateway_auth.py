"""Keys: lookup by kind, the keys file, and constant-time comparison against every key."""

from __future__ import annotations

import hmac
from pathlib import Path

import orjson
import pytest

from gateway._auth import KeyStore, Kind, Principal, presented_key
from gateway.config import GatewayConfig
from gateway.errors import PermissionDenied, Unauthenticated
from pipeline.config import load
from pipeline.errors import ConfigError

STORE = KeyStore(write={"w1": "app-a", "w2": "app-b"}, read={"r1": "ops"})


def test_keys_map_to_their_principal() -> None:
    assert STORE.lookup("w2") == Principal(Kind.WRITE, "app-b")
    assert STORE.lookup("r1") == Principal(Kind.READ, "ops")
    assert STORE.lookup("w") is None
    assert STORE.lookup("") is None
    assert STORE.lookup(None) is None


def test_require_distinguishes_unknown_from_wrong_kind() -> None:
    assert STORE.require("w1", Kind.WRITE).name == "app-a"
    with pytest.raises(Unauthenticated, match="Authorization: Bearer <key>` or `X-Api-Key"):
        STORE.require("nope", Kind.WRITE)
    with pytest.raises(PermissionDenied):
        STORE.require("r1", Kind.WRITE)
    with pytest.raises(PermissionDenied):
        STORE.require("w1", Kind.READ)


def test_every_key_is_compared_even_after_a_match(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return real(a, b)

    monkeypatch.setattr("gateway._auth.hmac.compare_digest", spy)

    STORE.lookup("w1")

    assert calls == [b"w1", b"w2", b"r1"]


@pytest.mark.parametrize(
    ("authorization", "api_key", "expected"),
    [
        ("Bearer abc", None, "abc"),
        ("bearer  abc ", None, "abc"),
        ("Basic abc", None, None),
        ("Basic abc", "k", "k"),
        (None, " k ", "k"),
        ("Bearer", None, None),
        (None, None, None),
    ],
)
def test_presented_key(
    authorization: str | None, api_key: str | None, expected: str | None
) -> None:
    assert presented_key(authorization, api_key) == expected


def test_keys_file_adds_to_the_environment_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_bytes(
        orjson.dumps({"write_keys": {"fw": "file-app"}, "read_keys": {"fr": "file-reader"}})
    )
    config = load(
        GatewayConfig, {"GATEWAY_WRITE_KEYS": "ew:env-app", "GATEWAY_KEYS_FILE": str(path)}
    )

    store = KeyStore.from_config(config)

    assert store.lookup("fw") == Principal(Kind.WRITE, "file-app")
    assert store.lookup("fr") == Principal(Kind.READ, "file-reader")
    assert store.lookup("ew") == Principal(Kind.WRITE, "env-app")


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[]",
        b'{"write_keys": {"k": 3}}',
        b'{"read_keys": []}',
        b'{"write_keys": {"": "a"}}',
    ],
)
def test_bad_keys_file_is_a_config_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "keys.json"
    path.write_bytes(content)
    config = load(GatewayConfig, {"GATEWAY_KEYS_FILE": str(path)})

    with pytest.raises(ConfigError, match="GATEWAY_KEYS_FILE"):
        KeyStore.from_config(config)


def test_missing_keys_file_is_a_config_error(tmp_path: Path) -> None:
    config = load(GatewayConfig, {"GATEWAY_KEYS_FILE": str(tmp_path / "absent.json")})

    with pytest.raises(ConfigError, match="GATEWAY_KEYS_FILE"):
        KeyStore.from_config(config)


def test_app_ids_must_be_subject_tokens_and_keys_of_one_kind() -> None:
    with pytest.raises(ConfigError, match="app id"):
        KeyStore(write={"k": "app.x"}, read={})
    with pytest.raises(ConfigError, match="both"):
        KeyStore(write={"k": "app"}, read={"k": "ops"})


def test_the_example_keys_file_as_it_is_does_not_serve() -> None:
    example = Path(__file__).resolve().parents[3] / "deploy" / "gateway-keys.example.json"
    config = load(GatewayConfig, {"GATEWAY_KEYS_FILE": str(example)})
    with pytest.raises(ConfigError, match="placeholder"):
        KeyStore.from_config(config)
    with pytest.raises(ConfigError, match="placeholder"):
        KeyStore(write={}, read={"replace-with-a-key": "ops"})


def _keys_file(tmp_path: Path, doc: bytes) -> str:
    path = tmp_path / "keys.json"
    path.write_bytes(doc)
    return str(path)


@pytest.mark.parametrize(
    ("env", "file", "where"),
    [
        (
            {"GATEWAY_WRITE_KEYS": "wk-secret-1:app,wk-secret-1:app2"},
            None,
            "GATEWAY_WRITE_KEYS entry 1 and GATEWAY_WRITE_KEYS entry 2 give one key two app ids",
        ),
        (
            {"GATEWAY_READ_KEYS": "rk-secret-1:ops,rk-secret-1:audit"},
            None,
            "GATEWAY_READ_KEYS entry 1 and GATEWAY_READ_KEYS entry 2 give one key two names",
        ),
        (
            {"GATEWAY_WRITE_KEYS": "wk-other:app,wk-secret-1:app"},
            b'{"write_keys": {"wk-secret-1": "app2"}}',
            "GATEWAY_WRITE_KEYS entry 2 and write_keys entry 1 of GATEWAY_KEYS_FILE=",
        ),
        (
            {},
            b'{"write_keys": {"wk-secret-1": "app", "wk-secret-1": "app2"}}',
            "write_keys entry 1 of GATEWAY_KEYS_FILE=",
        ),
    ],
)
def test_a_key_listed_twice_for_two_owners_is_refused_naming_where_not_the_key(
    tmp_path: Path, env: dict[str, str], file: bytes | None, where: str
) -> None:
    if file is not None:
        env = {**env, "GATEWAY_KEYS_FILE": _keys_file(tmp_path, file)}
    config = load(GatewayConfig, env)

    with pytest.raises(ConfigError) as err:
        KeyStore.from_config(config)

    assert where in str(err.value)
    assert "-secret-1" not in str(err.value)


def test_a_key_listed_twice_for_one_owner_is_kept(tmp_path: Path) -> None:
    doc = b'{"write_keys": {"wk-1": "app"}}'
    config = load(
        GatewayConfig,
        {"GATEWAY_WRITE_KEYS": "wk-1:app,wk-1:app", "GATEWAY_KEYS_FILE": _keys_file(tmp_path, doc)},
    )

    assert KeyStore.from_config(config).lookup("wk-1") == Principal(Kind.WRITE, "app")


@pytest.mark.parametrize(
    ("env", "file", "where"),
    [
        ({"GATEWAY_WRITE_KEYS": "wk-1:app,wk-2:my.app"}, None, "GATEWAY_WRITE_KEYS entry 2: "),
        ({}, b'{"write_keys": {"wk-1": "app", "wk-2": "my.app"}}', "write_keys entry 2 of "),
    ],
)
def test_an_app_id_that_breaks_the_rule_names_where_it_came_from(
    tmp_path: Path, env: dict[str, str], file: bytes | None, where: str
) -> None:
    if file is not None:
        env = {**env, "GATEWAY_KEYS_FILE": _keys_file(tmp_path, file)}

    with pytest.raises(ConfigError) as err:
        KeyStore.from_config(load(GatewayConfig, env))

    assert str(err.value).startswith(where)
    assert "app id 'my.app' must be 1-64 letters, digits, _ or -" in str(err.value)


def test_a_key_both_written_and_read_names_both_places(tmp_path: Path) -> None:
    doc = b'{"read_keys": {"k-secret": "ops"}}'
    config = load(
        GatewayConfig,
        {"GATEWAY_WRITE_KEYS": "k-secret:app", "GATEWAY_KEYS_FILE": _keys_file(tmp_path, doc)},
    )

    with pytest.raises(ConfigError) as err:
        KeyStore.from_config(config)

    assert str(err.value).startswith(
        "GATEWAY_WRITE_KEYS entry 1 and read_keys entry 1 of GATEWAY_KEYS_FILE="
    )
    assert "k-secret" not in str(err.value)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("wk-1:app,wk-secret-2 :app", "entry 2 of 2: the key ends with whitespace"),
        ("wk-1:app,wk-sec\tret-2:app", "entry 2 of 2: the key holds whitespace"),
        ("wk-sec ret-2:app", "entry 1 of 1: the key holds whitespace"),
        ("wk-secr\x01et-2:app", "entry 1 of 1: the key holds a control or other invisible"),
        ("wk-secrét-2:app", "entry 1 of 1: the key holds a non-ASCII character"),
    ],
)
def test_an_environment_key_no_request_could_send_is_refused_naming_its_entry(
    value: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load(GatewayConfig, {"GATEWAY_WRITE_KEYS": value})

    assert str(err.value).startswith(f"GATEWAY_WRITE_KEYS: {problem}")
    assert "secr" not in str(err.value)


def test_spaces_around_an_environment_entry_are_the_list_s_not_the_key_s() -> None:
    config = load(GatewayConfig, {"GATEWAY_WRITE_KEYS": " wk-1:app , wk-2:app "})

    store = KeyStore.from_config(config)

    assert store.lookup("wk-1") == Principal(Kind.WRITE, "app")
    assert store.lookup("wk-2") == Principal(Kind.WRITE, "app")


@pytest.mark.parametrize(
    ("doc", "where", "problem"),
    [
        (
            b'{"write_keys": {"wk-1": "app", "wk-secret-2 ": "app"}}',
            "write_keys entry 2 of GATEWAY_KEYS_FILE=",
            "the key ends with whitespace",
        ),
        (
            b'{"read_keys": {" rk-secret-1": "ops"}}',
            "read_keys entry 1 of GATEWAY_KEYS_FILE=",
            "the key begins with whitespace",
        ),
        (
            b'{"read_keys": {"rk-secret-1\\n": "ops"}}',
            "read_keys entry 1 of GATEWAY_KEYS_FILE=",
            "the key ends with whitespace",
        ),
        (
            b'{"write_keys": {"wk-secret-1 wk-secret-2": "app"}}',
            "write_keys entry 1 of GATEWAY_KEYS_FILE=",
            "the key holds whitespace",
        ),
        (
            b'{"write_keys": {"wk-secret\\u0000": "app"}}',
            "write_keys entry 1 of GATEWAY_KEYS_FILE=",
            "the key holds a control or other invisible character",
        ),
        (
            b'{"write_keys": {"wk-secret-\\u00e9": "app"}}',
            "write_keys entry 1 of GATEWAY_KEYS_FILE=",
            "the key holds a non-ASCII character",
        ),
        (
            b'{"write_keys": {"": "app"}}',
            "write_keys entry 1 of GATEWAY_KEYS_FILE=",
            "the key is empty",
        ),
    ],
)
def test_a_file_key_no_request_could_send_is_refused_naming_file_and_entry(
    tmp_path: Path, doc: bytes, where: str, problem: str
) -> None:
    path = _keys_file(tmp_path, doc)
    config = load(GatewayConfig, {"GATEWAY_KEYS_FILE": path})

    with pytest.raises(ConfigError) as err:
        KeyStore.from_config(config)

    message = str(err.value)
    assert message.startswith(f"{where}{path!r}: {problem}")
    assert "secret" not in message.replace(path, "")


def test_a_key_is_never_trimmed_whatever_builds_the_store() -> None:
    with pytest.raises(ConfigError, match=r"^a key ends with whitespace"):
        KeyStore(write={"wk-1 ": "app"}, read={})
    with pytest.raises(ConfigError, match=r"^a key holds whitespace"):
        KeyStore.from_config(GatewayConfig(read_keys=("rk 1:ops",)))
