"""Per-client request limits for the public endpoints (the widget's and ``/chat``).

Counters live in ``services.kv`` (Redis when the state is in Redis), so every
gateway process shares one budget per visitor. Over the limit the request gets
429 with ``Retry-After``; nothing has been accepted, so the widget can keep the
text and let the visitor send it again.

The client's address follows one rule for every channel (:func:`client_address`):
the connection's peer, or, only when the operator says a proxy of ours stands in
front (``web.trust_forwarded_for``), the last ``X-Forwarded-For`` hop, the one
that proxy saw; earlier hops are the client's own say-so.
"""

from __future__ import annotations

import hashlib

from bot.http import HttpError, client_address  # noqa: F401 - re-exported: one rule for every channel
from bot.state.keys import Keys
from bot.state.kv import SharedKV

WINDOW_S = 60


def key_client(api_key: str) -> str:
    """A counter name for an API key that does not contain the key (Redis keys show up in tools and logs)."""
    return "key:" + hashlib.sha256(api_key.encode()).hexdigest()[:24]


class RateLimiter:
    def __init__(self, kv: SharedKV, keys: Keys, per_session_per_min: int, per_ip_per_min: int) -> None:
        self.kv = kv
        self.keys = keys
        self.per_session = per_session_per_min
        self.per_ip = per_ip_per_min

    async def check_ip(self, ip: str) -> None:
        await self.check(f"web:ip:{ip}", self.per_ip, "address")

    async def check_session(self, session_id: str) -> None:
        await self.check(f"web:session:{session_id}", self.per_session, "conversation")

    async def check(self, name: str, limit: int, scope: str) -> None:
        """Count one request of ``name`` (``keys.rate(name)``) in this minute; 429 past ``limit``."""
        count = await self.kv.hit(self.keys.rate(name), WINDOW_S)
        if count > limit:
            raise HttpError(
                429,
                "rate_limited",
                f"too many requests from this {scope}: at most {limit} a minute; try again shortly",
                {"Retry-After": str(WINDOW_S)},
            )
