"""Console sessions: who is signed in, in a signed cookie, and the CSRF token of each form.

The session cookie (HttpOnly, SameSite=Strict) holds the sha256 of the key the reviewer
signed in with, never the key, plus the reviewer's name, the session's end, its CSRF
token and the last verdicts it sent (for undo). It is signed with a key derived from the
deployment's signing secret (every gateway replica shares it) and the key is looked up
again on every request: a removed key, or one that lost the `feedback` role, is signed
out at once. Sign-out clears the cookie; a copy taken before then stays valid until
the session's end (`PROTEGE_CONSOLE_SESSION_S`): there is no server-side session list.

CSRF: every form carries the session's token in a hidden field `csrf`, compared in
constant time. The sign-in form, before any session, carries a token that a short-lived
signed cookie of its own repeats (double submit).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field, replace

from itsdangerous import BadSignature, URLSafeTimedSerializer

SESSION_COOKIE = "protege_console"
SIGN_IN_COOKIE = "protege_console_sign_in"
SIGN_IN_S = 3600  # the sign-in form's token: an hour to type a key
UNDO_DEPTH = 20  # verdicts a session can take back, newest first


@dataclass(frozen=True)
class Session:
    name: str
    digest: str  # hex sha256 of the key; "" with auth disabled (a named demo reviewer)
    csrf: str
    expires: float
    sent: tuple[str, ...] = field(default=())  # prediction ids judged, oldest first

    def with_sent(self, prediction_id: str) -> Session:
        return replace(self, sent=(*self.sent, prediction_id)[-UNDO_DEPTH:])

    def without(self, prediction_id: str) -> Session:
        kept = list(self.sent)
        kept.reverse()
        kept.remove(prediction_id)
        kept.reverse()
        return replace(self, sent=tuple(kept))

    def last_sent(self, task: str) -> str | None:
        """The newest prediction id judged in this session for `task`."""
        return next((p for p in reversed(self.sent) if p.startswith(f"{task}.")), None)


def same(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a submitted token with the expected one."""
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())


class Sessions:
    """Makes and reads the console's cookies with a key derived from `secret`."""

    def __init__(self, secret: bytes, lifetime_s: float, secure: bool = False):
        key = hmac.new(secret, b"protege-console-session", hashlib.sha256).digest()
        self._session = URLSafeTimedSerializer(key, salt="session")
        self._sign_in = URLSafeTimedSerializer(key, salt="sign-in")
        self.lifetime_s = lifetime_s
        self.secure = secure

    def new(self, name: str, digest: str, now: float | None = None) -> Session:
        now = time.time() if now is None else now
        return Session(name, digest, secrets.token_urlsafe(24), now + self.lifetime_s)

    def dump(self, session: Session) -> str:
        return self._session.dumps(
            [session.name, session.digest, session.csrf, session.expires, list(session.sent)]
        )

    def load(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session in a cookie; None when absent, forged, malformed or over."""
        if not cookie:
            return None
        try:
            name, digest, csrf, expires, sent = self._session.loads(
                cookie, max_age=int(self.lifetime_s) + 1
            )
        except (BadSignature, ValueError, TypeError):
            return None
        if (time.time() if now is None else now) >= float(expires):
            return None
        return Session(str(name), str(digest), str(csrf), float(expires), tuple(map(str, sent)))

    def sign_in_token(self) -> tuple[str, str]:
        """(token for the form, cookie value that vouches for it)."""
        token = secrets.token_urlsafe(24)
        return token, self._sign_in.dumps(token)

    def sign_in_token_of(self, cookie: str | None) -> str | None:
        if not cookie:
            return None
        try:
            return str(self._sign_in.loads(cookie, max_age=SIGN_IN_S))
        except (BadSignature, ValueError, TypeError):
            return None

    def cookie_options(self, https: bool) -> dict:
        return {
            "httponly": True,
            "samesite": "strict",
            "secure": self.secure or https,
            "path": "/review",
        }
