"""API keys: each key is an identity (a name) with roles, checked by a FastAPI
dependency that hands the handler the caller's identity:
`identity: Identity = Depends(require("feedback"))`.

Roles: `predict`, `feedback` (send verdicts), `trusted` (a reviewer whose verdicts may
grade models: implies feedback), `admin` (implies every role). The identity's name is
who a verdict is from: a reviewer is the key that sent the verdict, never a field a
client fills in.

Keys come from `PROTEGE_API_KEYS` (`[name:]KEY=role,role;...`, e.g.
`ana:k1=feedback;ops:k2=admin`) and from the file `PROTEGE_API_KEYS_FILE` (JSON or
YAML): `{"keys": [{"name": "ana", "sha256": "<hex of the key>", "roles": ["feedback"]},
{"name": "ops", "key": "<the key>", "roles": ["admin"]}]}`, or the older
`{KEY: [roles]}`. A key without a name is called `key-<first 8 hex of its sha256>`.
Presented keys are compared in constant time against every configured key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import yaml
from fastapi import HTTPException, Request

from protege.settings import Settings

log = logging.getLogger(__name__)

ROLES = frozenset({"predict", "feedback", "trusted", "admin"})
# What a role brings along: admin is every role, a trusted reviewer is a reviewer.
IMPLIED = {"admin": ROLES, "trusted": frozenset({"trusted", "feedback"})}


@dataclass(frozen=True)
class Identity:
    """Who called: the key's name and its roles (implied roles included)."""

    name: str
    roles: frozenset[str]

    @property
    def trusted(self) -> bool:
        """Verdicts from this key may become exam gold."""
        return "trusted" in self.roles

    def has(self, role: str) -> bool:
        return role in self.roles


# With auth disabled (local demos only) every caller is this identity.
ANONYMOUS = Identity("anonymous", ROLES - {"trusted"})


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def default_name(digest: str) -> str:
    return f"key-{digest[:8]}"


def expand_roles(roles: frozenset[str] | set[str]) -> frozenset[str]:
    unknown = set(roles) - ROLES
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)} for an API key; use {sorted(ROLES)}")
    expanded = set(roles)
    for role in roles:
        expanded |= IMPLIED.get(role, frozenset())
    return frozenset(expanded)


class ApiKeys:
    """The configured keys, by digest; `identify` finds the caller of a presented key."""

    def __init__(self, identities: dict[str, Identity], disabled: bool = False):
        # digest (hex of sha256) -> identity; equal-length digests, so compare_digest
        # leaks nothing about lengths.
        names = [identity.name for identity in identities.values()]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"API key names must be unique: {duplicates}")
        self._keys = [(bytes.fromhex(d), identity) for d, identity in identities.items()]
        self.disabled = disabled

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        if settings.auth_disabled:
            log.warning(
                "\n%s\nAUTH IS DISABLED (PROTEGE_AUTH_DISABLED=true): anyone who can reach this "
                "port can predict, send feedback and promote models. Local demos only.\n%s",
                "!" * 78,
                "!" * 78,
            )
            return cls({}, disabled=True)
        identities: dict[str, Identity] = {}
        if settings.api_keys:
            identities.update(parse_key_list(settings.api_keys))
        if settings.api_keys_file:
            identities.update(read_key_file(settings.api_keys_file))
        if not identities:
            log.warning("no API keys configured: every request will get 401")
        return cls(identities)

    def identify(self, presented: str) -> Identity | None:
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for key_digest_, identity in self._keys:  # no early exit: same time for every key
            if hmac.compare_digest(digest, key_digest_):
                found = identity
        return found


def parse_key_list(text: str) -> dict[str, Identity]:
    """`[name:]KEY=role,role;...` -> {digest: identity}."""
    found = {}
    for entry in filter(None, (e.strip() for e in text.split(";"))):
        key, sep, roles = entry.partition("=")
        name, colon, key = key.rpartition(":") if ":" in key else ("", "", key)
        if not sep or not key.strip() or (colon and not name.strip()):
            raise ValueError("PROTEGE_API_KEYS entries look like [name:]KEY=role,role")
        digest = key_digest(key.strip())
        found[digest] = Identity(
            name.strip() or default_name(digest),
            expand_roles({r.strip() for r in roles.split(",") if r.strip()}),
        )
    return found


def read_key_file(path: Path) -> dict[str, Identity]:
    """A keys file (see the module docstring) -> {digest: identity}."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if isinstance(raw, dict) and isinstance(raw.get("keys"), list):
        found = {}
        for i, entry in enumerate(raw["keys"]):
            if not isinstance(entry, dict) or not ({"key", "sha256"} & set(entry)):
                raise ValueError(f"{path}: keys[{i}] needs 'key' or 'sha256', and 'roles'")
            digest = (
                str(entry["sha256"]).lower() if "sha256" in entry else key_digest(str(entry["key"]))
            )
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"{path}: keys[{i}].sha256 is not a hex SHA-256 digest")
            roles = entry.get("roles") or []
            found[digest] = Identity(
                str(entry.get("name") or default_name(digest)),
                expand_roles({roles} if isinstance(roles, str) else set(roles)),
            )
        return found
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected {{keys: [...]}} or a mapping of key -> [roles]")
    return {
        key_digest(str(k)): Identity(
            default_name(key_digest(str(k))),
            expand_roles({v} if isinstance(v, str) else set(v)),
        )
        for k, v in raw.items()
    }


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("x-api-key")


def require(role: str):
    """A dependency that admits requests whose key holds `role` and returns its Identity."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")

    async def check(request: Request) -> Identity:  # async: sync deps run in a thread pool
        keys: ApiKeys = request.app.state.api_keys
        if keys.disabled:
            return ANONYMOUS
        key = presented_key(request)
        if not key:
            raise HTTPException(
                401,
                "missing API key (Authorization: Bearer KEY or X-API-Key)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        identity = keys.identify(key)
        if identity is None:
            raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
        if not identity.has(role):
            raise HTTPException(403, f"this API key lacks the {role!r} role")
        return identity

    return check
