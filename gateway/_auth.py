"""API keys: write keys (mapped to app ids) and read keys (mapped to names).

Keys come from the environment and/or a JSON file. A presented key is compared
with every configured key in constant time (no early exit), and keys are never
logged: only the app id or name they map to.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson

from gateway.config import GatewayConfig
from gateway.errors import PermissionDenied, Unauthenticated
from pipeline.errors import ConfigError
from pipeline.subjects import valid_token

# deploy/gateway-keys.example.json's keys begin so: a copy left as it is must not serve.
PLACEHOLDER_PREFIX = "replace-with-"


class Kind(enum.Enum):
    """What a key may do."""

    WRITE = "write"
    READ = "read"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a valid key belongs to: an app (write) or a reader (read)."""

    kind: Kind
    name: str


class KeyStore:
    """Looks keys up in constant time."""

    def __init__(self, *, write: Mapping[str, str], read: Mapping[str, str]) -> None:
        for app_id in write.values():
            if not valid_token(app_id):
                raise ConfigError(
                    f"app id {app_id!r} of a write key must be 1-64 letters, digits, _ or -"
                )
        if any(key.startswith(PLACEHOLDER_PREFIX) for key in (*write, *read)):
            raise ConfigError(
                f"a key is still a placeholder ({PLACEHOLDER_PREFIX}...) of the example keys "
                "file: put a long random key in its place"
            )
        overlap = set(write) & set(read)
        if overlap:
            raise ConfigError("a key is configured both as a write key and as a read key")
        self._entries: tuple[tuple[bytes, Principal], ...] = tuple(
            [(key.encode(), Principal(Kind.WRITE, app)) for key, app in write.items()]
            + [(key.encode(), Principal(Kind.READ, name)) for key, name in read.items()]
        )

    @classmethod
    def from_config(cls, config: GatewayConfig) -> KeyStore:
        """Keys from GATEWAY_WRITE_KEYS, GATEWAY_READ_KEYS and the GATEWAY_KEYS_FILE."""
        write = _pairs(config.write_keys)
        read = _pairs(config.read_keys)
        if config.keys_file:
            file_write, file_read = _load_file(Path(config.keys_file))
            write.update(file_write)
            read.update(file_read)
        return cls(write=write, read=read)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, presented: str | None) -> Principal | None:
        """The principal of a key, or None; compares with every key whatever the outcome."""
        if not presented:
            return None
        candidate = presented.encode("utf-8", "surrogateescape")
        found: Principal | None = None
        for key, principal in self._entries:
            if hmac.compare_digest(candidate, key):
                found = principal
        return found

    def require(self, presented: str | None, kind: Kind) -> Principal:
        """The principal of a key of the given kind; raises Unauthenticated or PermissionDenied."""
        principal = self.lookup(presented)
        if principal is None:
            raise Unauthenticated(
                "a valid API key is required, as `Authorization: Bearer <key>` or"
                " `X-Api-Key: <key>`"
            )
        if principal.kind is not kind:
            raise PermissionDenied(f"this route needs a {kind.value} key")
        return principal


def presented_key(authorization: str | None, api_key: str | None) -> str | None:
    """The key of a request: `Authorization: Bearer <key>` or `X-Api-Key: <key>`."""
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    if api_key:
        return api_key.strip()
    return None


def _pairs(items: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, _, owner = item.partition(":")
        out[key.strip()] = owner.strip()
    return out


def _load_file(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    try:
        doc = orjson.loads(path.read_bytes())
    except OSError as err:
        raise ConfigError(f"GATEWAY_KEYS_FILE={str(path)!r}: cannot read: {err.strerror}") from None
    except orjson.JSONDecodeError:
        raise ConfigError(f"GATEWAY_KEYS_FILE={str(path)!r}: not JSON") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"GATEWAY_KEYS_FILE={str(path)!r}: expected a JSON object")
    out: list[dict[str, str]] = []
    for section in ("write_keys", "read_keys"):
        part = doc.get(section, {})
        if not isinstance(part, dict) or not all(
            isinstance(k, str) and k and isinstance(v, str) and v for k, v in part.items()
        ):
            raise ConfigError(
                f"GATEWAY_KEYS_FILE={str(path)!r}: {section} must map non-empty keys to names"
            )
        out.append(dict(part))
    return out[0], out[1]
