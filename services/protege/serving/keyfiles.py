"""Secret files on disk: created readable by their owner only (0600) from the first
byte, in one step, and the keys file that `protege keys create` and the first start
of `protege up` write (the format of `protege.serving.auth`; the sha256 of each key
is stored, never the key, which is shown once).

>>> key = add_key(Path("~/.protege/keys.json").expanduser(), "app", {"predict"})  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from pathlib import Path

import yaml

from protege.serving.auth import expand_roles, key_digest

KEYS_FILE = "keys.json"  # under PROTEGE_HOME, when PROTEGE_API_KEYS_FILE is unset
FIRST_KEY_NAME = "admin"


def write_private(path: Path, data: bytes, *, replace: bool = True) -> bool:
    """Write `data` to `path`, mode 0600 before any byte lands (a temporary file made
    with O_EXCL, then renamed or linked into place: readers see the old file or the
    whole new one). `replace=False` keeps a file someone made first: returns False."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)  # fails when another process created it first
            return True
        except FileExistsError:
            return False
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(path: Path):
    """Two `keys create` at once must not lose one of the keys."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _entries(path: Path) -> list[dict]:
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(raw, dict) or not isinstance(raw.get("keys"), list):
        raise ValueError(f"{path}: expected {{keys: [...]}}; add keys to it by hand")
    return raw["keys"]


def add_key(path: Path, name: str, roles: set[str], **limits: float | int) -> str:
    """A new key for `name` with `roles` (and its own limits, see serving.auth) in the
    keys file at `path`; returns the key, which is stored nowhere (only its sha256)."""
    if not name or not name.strip():
        raise ValueError("a key needs a name")
    expand_roles(roles)  # unknown roles fail here
    path = Path(path)
    with _locked(path):
        entries = _entries(path)
        if any(entry.get("name") == name for entry in entries):
            raise ValueError(f"{path} already has a key named {name!r}")
        key = f"pk_{secrets.token_urlsafe(32)}"
        entry = {"name": name, "sha256": key_digest(key), "roles": sorted(roles)}
        entry.update({k: v for k, v in limits.items() if v is not None})
        entries.append(entry)
        document = {"keys": entries}
        text = (
            json.dumps(document, indent=2)
            if path.suffix == ".json"
            else yaml.safe_dump(document, sort_keys=False)
        )
        write_private(path, text.encode())
    return key


def first_admin_key(settings) -> tuple[object, str | None]:
    """For a first start with no keys configured (and auth on): an admin key in
    `<home>/keys.json`. Returns the settings that use that file, and the new key (None
    when the file was made by an earlier start: the key was shown then)."""
    if settings.auth_disabled or settings.api_keys or settings.api_keys_file:
        return settings, None
    path = settings.home / KEYS_FILE
    key = None
    if not path.exists() or not _entries(path):
        key = add_key(path, FIRST_KEY_NAME, {"admin"})
    return settings.model_copy(update={"api_keys_file": path}), key
