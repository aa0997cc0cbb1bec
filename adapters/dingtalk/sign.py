"""The HTTP robot callback signature: pure, so it is tested on computed values.

DingTalk sends headers ``timestamp`` (milliseconds) and
``sign = base64(HmacSHA256(key=appSecret, msg=timestamp + "\\n" + appSecret))``
and asks us to refuse a timestamp more than an hour from our clock, which stops
a captured request from being replayed later.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable

MAX_SKEW_MS = 3600 * 1000


class SignatureError(Exception):
    """The request is not from DingTalk (missing or wrong signature)."""


class StaleTimestamp(SignatureError):
    """The signature is right but the timestamp is too far from now (a replay)."""


def compute(timestamp: str, app_secret: str) -> str:
    digest = hmac.new(app_secret.encode(), f"{timestamp}\n{app_secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def verify(
    timestamp: str | None,
    sign: str | None,
    app_secret: str,
    *,
    now_ms: Callable[[], float] = lambda: time.time() * 1000,
    max_skew_ms: int = MAX_SKEW_MS,
) -> None:
    """Raise :class:`SignatureError` or :class:`StaleTimestamp`; return None when genuine."""
    if not app_secret:
        raise SignatureError("dingtalk.app_secret is not configured")
    if not timestamp or not sign:
        raise SignatureError("missing timestamp or sign header")
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 16:
        raise SignatureError("timestamp header is not milliseconds")
    if not hmac.compare_digest(compute(timestamp, app_secret).encode(), sign.strip().encode("utf-8", "replace")):
        raise SignatureError("signature does not match")
    if abs(now_ms() - int(timestamp)) > max_skew_ms:
        raise StaleTimestamp("timestamp is more than an hour away from now")
