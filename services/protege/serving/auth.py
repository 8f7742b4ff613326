"""API keys: each key is an identity (a name) with roles, checked by a FastAPI
dependency that hands the handler the caller's identity:
`identity: Identity = Depends(require("feedback"))`.

Roles: `predict`, `feedback` (send verdicts), `trusted` (a reviewer whose verdicts may
grade models: implies feedback), `foundation` (the improver's: ask the deployment's FM
under any prompt LF, /v1/foundation), `admin` (implies every role). The identity's name is
who a verdict is from: a reviewer is the key that sent the verdict, never a field a
client fills in.

Keys come from `PROTEGE_API_KEYS` (`[name:]KEY=role,role;...`, e.g.
`ana:k1=feedback;ops:k2=admin`) and from the file `PROTEGE_API_KEYS_FILE` (JSON or
YAML): `{"keys": [{"name": "ana", "sha256": "<hex of the key>", "roles": ["feedback"]},
{"name": "ops", "key": "<the key>", "roles": ["admin"]}]}`, or the older
`{KEY: [roles]}`. A key without a name is called `key-<first 8 hex of its sha256>`.
An entry may set its own limits: `rate_per_s`, `rate_burst`, `feedback_per_hour`
(default: the PROTEGE_ settings of those names). `protege keys create` writes such
files (the sha256 only); a running gateway rereads the file when it changes.
Presented keys are compared in constant time against every configured key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from fastapi import HTTPException, Request

from protege.settings import Settings

log = logging.getLogger(__name__)

ROLES = frozenset({"predict", "feedback", "trusted", "foundation", "admin"})
# What a role brings along: admin is every role, a trusted reviewer is a reviewer.
IMPLIED = {"admin": ROLES, "trusted": frozenset({"trusted", "feedback"})}


@dataclass(frozen=True)
class Identity:
    """Who called: the key's name and its roles (implied roles included)."""

    name: str
    roles: frozenset[str]
    # This key's own limits (keys file); None: the deployment's settings.
    rate_per_s: float | None = None
    rate_burst: int | None = None
    feedback_per_hour: int | None = None

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


KEY_FILE_CHECK_S = 1.0  # how often a gateway looks whether the keys file changed


def _digest_list(identities: dict[str, Identity]) -> list[tuple[bytes, Identity]]:
    # digest (hex of sha256) -> identity; equal-length digests, so compare_digest
    # leaks nothing about lengths.
    names = [identity.name for identity in identities.values()]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"API key names must be unique: {duplicates}")
    return [(bytes.fromhex(d), identity) for d, identity in identities.items()]


class ApiKeys:
    """The configured keys, by digest; `identify` finds the caller of a presented key.
    Keys from `file` are reread when the file changes (a bad edit keeps the old keys)."""

    def __init__(
        self, identities: dict[str, Identity], disabled: bool = False, file: Path | None = None
    ):
        self._fixed = dict(identities)
        self._file = Path(file) if file else None
        self._file_stamp: tuple[int, int] | None = None
        self._next_check = 0.0
        self._keys = _digest_list(self._fixed)
        if self._file is not None:
            self._reload(raise_errors=True)
        self.disabled = disabled

    def __len__(self) -> int:
        return len(self._keys)

    def _reload(self, raise_errors: bool = False) -> None:
        try:
            stat = self._file.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._file_stamp:
                return
            self._keys = _digest_list({**self._fixed, **read_key_file(self._file)})
            self._file_stamp = stamp
        except (OSError, ValueError) as exc:
            if raise_errors:
                raise
            log.error("keys file %s unreadable, keeping the keys read before: %s", self._file, exc)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if self._file is not None and now >= self._next_check:
            self._next_check = now + KEY_FILE_CHECK_S
            self._reload()

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
            identities.update(parse_key_list(settings.api_keys.get_secret_value()))
        keys = cls(identities, file=settings.api_keys_file)
        if not len(keys):
            log.warning("no API keys configured: every request will get 401")
        return keys

    def identify(self, presented: str) -> Identity | None:
        return self.identify_digest(hashlib.sha256(presented.encode()).digest())

    def identify_digest(self, digest: bytes) -> Identity | None:
        """The identity of the key whose sha256 is `digest` (a console session holds the
        digest, never the key), with the roles the keys give it now."""
        self._maybe_reload()
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
                **_own_limits(entry, f"{path}: keys[{i}]"),
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


LIMIT_FIELDS = {"rate_per_s": float, "rate_burst": int, "feedback_per_hour": int}


def _own_limits(entry: dict, where: str) -> dict:
    limits = {}
    for name, kind in LIMIT_FIELDS.items():
        if entry.get(name) is None:
            continue
        value = entry[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{where}.{name} must be a number >= 0")
        limits[name] = kind(value)
    return limits


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("x-api-key")


def require(role: str):
    """A dependency that admits requests whose key holds `role` and is within its
    request rate (`app.state.limits`, a CallerLimits, when set), and returns its Identity."""
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
        limits = getattr(request.app.state, "limits", None)
        if limits is not None:
            limits.admit_request(identity)
        return identity

    return check
