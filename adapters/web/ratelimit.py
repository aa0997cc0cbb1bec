"""Per-session and per-IP request limits for the widget endpoints.

Counters live in ``services.kv`` (Redis when the state is in Redis), so every
gateway process shares one budget per visitor. Over the limit the request gets
429 with ``Retry-After``; nothing has been accepted, so the widget can keep the
text and let the visitor send it again.
"""

from __future__ import annotations

from bot.http import HttpError
from bot.state.keys import Keys
from bot.state.kv import SharedKV

WINDOW_S = 60


class RateLimiter:
    def __init__(self, kv: SharedKV, keys: Keys, per_session_per_min: int, per_ip_per_min: int) -> None:
        self.kv = kv
        self.keys = keys
        self.per_session = per_session_per_min
        self.per_ip = per_ip_per_min

    async def check_ip(self, ip: str) -> None:
        await self._check(self.keys.rate(f"web:ip:{ip}"), self.per_ip, "address")

    async def check_session(self, session_id: str) -> None:
        await self._check(self.keys.rate(f"web:session:{session_id}"), self.per_session, "conversation")

    async def _check(self, key: str, limit: int, scope: str) -> None:
        count = await self.kv.hit(key, WINDOW_S)
        if count > limit:
            raise HttpError(
                429,
                "rate_limited",
                f"too many requests from this {scope}: at most {limit} a minute; try again shortly",
                {"Retry-After": str(WINDOW_S)},
            )
