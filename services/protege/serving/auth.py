"""API keys with roles, as a FastAPI dependency: `Depends(require("feedback"))`.

Keys come from `PROTEGE_API_KEYS` ('KEY=predict,feedback;KEY2=admin') or a JSON/YAML
secret file `PROTEGE_API_KEYS_FILE` ({key: [roles]}). Presented keys are compared
in constant time against every configured key. `admin` implies every role.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from pathlib import Path

import yaml
from fastapi import HTTPException, Request

from protege.settings import Settings

log = logging.getLogger(__name__)

ROLES = frozenset({"predict", "feedback", "admin"})


class ApiKeys:
    def __init__(self, keys: dict[str, frozenset[str]], disabled: bool = False):
        for roles in keys.values():
            unknown = roles - ROLES
            if unknown:
                raise ValueError(
                    f"unknown roles {sorted(unknown)} for an API key; use {sorted(ROLES)}"
                )
        # Compare digests: equal length, so compare_digest leaks nothing about lengths.
        self._keys = [(hashlib.sha256(k.encode()).digest(), roles) for k, roles in keys.items()]
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
        keys: dict[str, frozenset[str]] = {}
        if settings.api_keys:
            keys.update(parse_key_list(settings.api_keys))
        if settings.api_keys_file:
            keys.update(read_key_file(settings.api_keys_file))
        if not keys:
            log.warning("no API keys configured: every request will get 401")
        return cls(keys)

    def roles_of(self, presented: str) -> frozenset[str]:
        digest = hashlib.sha256(presented.encode()).digest()
        found: frozenset[str] = frozenset()
        for key_digest, roles in self._keys:  # no early exit: same time for every key
            if hmac.compare_digest(digest, key_digest):
                found = roles
        return found


def parse_key_list(text: str) -> dict[str, frozenset[str]]:
    keys = {}
    for entry in filter(None, (e.strip() for e in text.split(";"))):
        key, sep, roles = entry.partition("=")
        if not sep or not key.strip():
            raise ValueError("PROTEGE_API_KEYS entries look like KEY=role,role")
        keys[key.strip()] = frozenset(r.strip() for r in roles.split(",") if r.strip())
    return keys


def read_key_file(path: Path) -> dict[str, frozenset[str]]:
    text = Path(path).read_text(encoding="utf-8")
    raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of key -> [roles]")
    return {str(k): frozenset([v] if isinstance(v, str) else v) for k, v in raw.items()}


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("x-api-key")


def require(role: str):
    """A dependency that admits requests whose key holds `role` (or admin)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")

    async def check(request: Request) -> None:  # async: FastAPI runs sync deps in a thread pool
        keys: ApiKeys = request.app.state.api_keys
        if keys.disabled:
            return
        key = presented_key(request)
        if not key:
            raise HTTPException(
                401,
                "missing API key (Authorization: Bearer KEY or X-API-Key)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        roles = keys.roles_of(key)
        if not roles:
            raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
        if role not in roles and "admin" not in roles:
            raise HTTPException(403, f"this API key lacks the {role!r} role")

    return check
