"""API keys: write keys (mapped to app ids) and read keys (mapped to names).

Keys come from the environment and/or a JSON file. A presented key is compared
with every configured key in constant time (no early exit), and keys are never
logged: only the app id or name they map to.
"""

from __future__ import annotations

import enum
import hmac
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig, key_problem
from gateway.errors import PermissionDenied, Unauthenticated
from pipeline.errors import ConfigError
from pipeline.subjects import valid_token

# deploy/gateway-keys.example.json's keys begin so: a copy left as it is must not serve.
PLACEHOLDER_PREFIX = "replace-with-"
PLACEHOLDER_PROBLEM = (
    f"is still a placeholder ({PLACEHOLDER_PREFIX}...) of the example keys file: put a long "
    "random key in its place"
)
APP_ID_RULE = "must be 1-64 letters, digits, _ or - (it becomes a NATS subject token)"


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
                raise ConfigError(f"app id {app_id!r} of a write key {APP_ID_RULE}")
        if any(key.startswith(PLACEHOLDER_PREFIX) for key in (*write, *read)):
            raise ConfigError(f"a key {PLACEHOLDER_PROBLEM}")
        for key in (*write, *read):
            problem = key_problem(key)
            if problem:
                raise ConfigError(f"a key {problem}")
        overlap = set(write) & set(read)
        if overlap:
            raise ConfigError("a key is configured both as a write key and as a read key")
        self._entries: tuple[tuple[bytes, Principal], ...] = tuple(
            [(key.encode(), Principal(Kind.WRITE, app)) for key, app in write.items()]
            + [(key.encode(), Principal(Kind.READ, name)) for key, name in read.items()]
        )

    @classmethod
    def from_config(cls, config: GatewayConfig) -> KeyStore:
        """Keys from GATEWAY_WRITE_KEYS, GATEWAY_READ_KEYS and the GATEWAY_KEYS_FILE.

        A problem names where the key came from (variable or file, and the entry's
        position), never the key: a key no request could send (empty, whitespace at an
        end or inside, a control or non-ASCII character), a key listed twice for two
        owners, an app id that is no subject token, a placeholder, a key that is both a
        write and a read key. Each entry of the two lists is trimmed at its ends (by load()),
        its id too (here); the key before its `:` is taken as written, and so is every key of
        the file, which trims nothing.
        """
        write = _entries("GATEWAY_WRITE_KEYS", config.write_keys)
        read = _entries("GATEWAY_READ_KEYS", config.read_keys)
        if config.keys_file:
            file_write, file_read = _load_file(Path(config.keys_file))
            write += file_write
            read += file_read
        for entry in write:
            if not valid_token(entry.owner):
                raise ConfigError(f"{entry.where}: app id {entry.owner!r} {APP_ID_RULE}")
        for entry in (*write, *read):
            if entry.key.startswith(PLACEHOLDER_PREFIX):
                raise ConfigError(f"{entry.where}: the key {PLACEHOLDER_PROBLEM}")
        writers = _merged(write, "app id")
        readers = _merged(read, "name")
        for key, entry in writers.items():
            other = readers.get(key)
            if other is not None:
                raise ConfigError(
                    f"{entry.where} and {other.where} hold one key: a key is either a write "
                    "key or a read key"
                )
        return cls(
            write={key: entry.owner for key, entry in writers.items()},
            read={key: entry.owner for key, entry in readers.items()},
        )

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


@dataclass(frozen=True, slots=True)
class _Entry:
    """One configured key, its owner (app id or reader name) and where it was written."""

    key: str
    owner: str
    where: str  # "GATEWAY_WRITE_KEYS entry 2", never the key


def _entries(variable: str, items: Sequence[str]) -> list[_Entry]:
    out = []
    for number, item in enumerate(items, 1):
        key, _, owner = item.partition(":")
        # The key as written: load() refused one no request could send (whitespace
        # around it included); the list's own spaces, around each entry, are gone.
        out.append(_Entry(key, owner.strip(), f"{variable} entry {number}"))
    return out


def _merged(entries: Iterable[_Entry], owner: str) -> dict[str, _Entry]:
    """Keys to their entries; a key listed again for another owner is refused (the same
    owner again is harmless)."""
    out: dict[str, _Entry] = {}
    for entry in entries:
        first = out.setdefault(entry.key, entry)
        if first.owner != entry.owner:
            raise ConfigError(
                f"{first.where} and {entry.where} give one key two {owner}s "
                f"({first.owner!r}, {entry.owner!r}): list each key once"
            )
    return out


class _Object(list[tuple[str, Any]]):
    """A JSON object's members in file order, a name given twice kept twice."""


def _load_file(path: Path) -> tuple[list[_Entry], list[_Entry]]:
    where = f"GATEWAY_KEYS_FILE={str(path)!r}"
    try:
        doc = json.loads(path.read_bytes(), object_pairs_hook=_Object)
    except OSError as err:
        raise ConfigError(f"{where}: cannot read: {err.strerror}") from None
    except ValueError:  # the message may quote the file, keys included
        raise ConfigError(f"{where}: not JSON") from None
    if not isinstance(doc, _Object):
        raise ConfigError(f"{where}: expected a JSON object")
    sections: dict[str, Any] = {}
    for name, part in doc:
        if name in sections:
            raise ConfigError(f"{where}: {name} is given twice")
        sections[name] = part
    out: list[list[_Entry]] = []
    for section in ("write_keys", "read_keys"):
        part = sections.get(section, _Object())
        if not isinstance(part, _Object):
            raise ConfigError(f"{where}: {section} must be an object mapping keys to names")
        entries = []
        for number, (key, owner) in enumerate(part, 1):
            entry = f"{section} entry {number} of {where}"
            problem = key_problem(key)
            if problem:
                raise ConfigError(f"{entry}: the key {problem}")
            if not isinstance(owner, str) or not owner:
                raise ConfigError(f"{entry}: its name must be a non-empty string")
            entries.append(_Entry(key, owner, entry))
        out.append(entries)
    return out[0], out[1]
