"""Signed, expiring widget session tokens bound to a session id.

A browser holds ``v1.<session id>.<expiry>.<signature>`` (HMAC-SHA256 with
``web.session_secret``). The session id alone is never enough: a token proves
the server issued that id, so nobody can read another visitor's history by
guessing or copying an id. Tokens are stateless, so any gateway process with
the same secret accepts them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

_VERSION = "v1"
_SESSION_ID = re.compile(r"[0-9a-f]{32}")
_EXPIRY = re.compile(r"[0-9]{1,12}")  # unix seconds; 12 digits reach the year 33658
_MAX_SIGNATURE_CHARS = 64  # base64 of a SHA-256 digest is 43
_MIN_SECRET_BYTES = 16


class TokenError(Exception):
    """The token is missing, malformed, forged or expired; ``code`` says which."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # missing_token | invalid_token | token_expired
        self.message = message


@dataclass(frozen=True, slots=True)
class WebSession:
    session_id: str
    expires_at: int  # unix seconds
    token: str


def new_session_id() -> str:
    return secrets.token_hex(16)


class SessionTokens:
    def __init__(self, secret: str, ttl_s: int, clock: Callable[[], float] = time.time) -> None:
        if not secret:
            log.warning(
                "web.session_secret is empty: using a random secret for this process, so widget sessions end at "
                "restart and differ between processes; set BOT__WEB__SESSION_SECRET in production"
            )
            key = secrets.token_bytes(32)
        else:
            key = secret.encode()
            if len(key) < _MIN_SECRET_BYTES:
                log.warning("web.session_secret is shorter than %d bytes; use a long random value", _MIN_SECRET_BYTES)
        self._key = key
        self.ttl_s = ttl_s
        self._clock = clock

    def _sign(self, payload: str) -> str:
        digest = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def issue(self, session_id: str) -> WebSession:
        if not _SESSION_ID.fullmatch(session_id):
            raise ValueError("session ids are 32 lower-case hex characters")
        expires_at = int(self._clock()) + self.ttl_s
        payload = f"{_VERSION}.{session_id}.{expires_at}"
        return WebSession(session_id, expires_at, f"{payload}.{self._sign(payload)}")

    def verify(self, token: str | None) -> WebSession:
        """The session the token was issued for; raises :class:`TokenError` otherwise."""
        if not token:
            raise TokenError("missing_token", "a widget session token is required (POST /api/web/session)")
        parts = token.split(".", 4)
        # ASCII digits, at most 12 (str.isdigit() takes "²", which int() refuses); checked before any work
        if len(parts) != 4 or parts[0] != _VERSION or not _SESSION_ID.fullmatch(parts[1]) \
                or not _EXPIRY.fullmatch(parts[2]) or len(parts[3]) > _MAX_SIGNATURE_CHARS:
            raise TokenError("invalid_token", "the session token is malformed")
        payload = ".".join(parts[:3])
        if not hmac.compare_digest(self._sign(payload).encode(), parts[3].encode("utf-8", "replace")):
            raise TokenError("invalid_token", "the session token signature does not match")
        expires_at = int(parts[2])
        if expires_at <= self._clock():
            raise TokenError("token_expired", "the session token has expired; request a new one")
        return WebSession(parts[1], expires_at, token)
