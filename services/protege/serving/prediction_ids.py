"""Signed prediction ids: `<task>.<random>.<hmac>`. Feedback on an id we did not
issue is rejected by its signature alone, without any lookup."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from pathlib import Path

from protege.serving.keyfiles import write_private
from protege.settings import Settings
from protege.taskspec import valid_task_name

SIGNATURE_BYTES = 12


class PredictionIds:
    def __init__(self, secret: bytes):
        if len(secret) < 16:
            raise ValueError("the signing secret must be at least 16 bytes")
        self._secret = secret

    @classmethod
    def from_settings(cls, settings: Settings) -> PredictionIds:
        return cls(signing_secret(settings))

    def _sign(self, payload: str) -> str:
        mac = hmac.new(self._secret, payload.encode(), hashlib.sha256).digest()[:SIGNATURE_BYTES]
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def new(self, task: str) -> str:
        payload = f"{task}.{secrets.token_hex(12)}"
        return f"{payload}.{self._sign(payload)}"

    def task_of(self, prediction_id: str) -> str | None:
        """The task an id was issued for, or None when the id is not ours."""
        payload, _, signature = prediction_id.rpartition(".")
        task = payload.partition(".")[0]
        if not payload or not valid_task_name(task):
            return None
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return None
        return task


def signing_secret(settings: Settings) -> bytes:
    """The deployment's secret: `PROTEGE_SIGNING_SECRET`, else this machine's own."""
    if settings.signing_secret:
        return settings.signing_secret.get_secret_value().encode()
    return local_secret(settings.home / "signing.key")


def local_secret(path: Path) -> bytes:
    """A per-machine secret for one-node use; clusters set PROTEGE_SIGNING_SECRET.
    Created 0600 from its first byte; when two processes race, both use the first."""
    if not path.exists():
        write_private(path, secrets.token_bytes(32), replace=False)
    return path.read_bytes()
