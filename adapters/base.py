"""What a channel adapter is.

An adapter owns everything platform-specific: its routes verify, decrypt and
normalize, then call ``hub.accept`` and acknowledge at once; ``deliver`` turns
replies into platform sends (byte limits, token refresh, rate limits).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from aiohttp import web

from bot.types import Event, Reply


class ChannelAdapter(Protocol):
    name: str

    def routes(self) -> Sequence[web.AbstractRouteDef]: ...

    async def start(self) -> None:
        """Open connections or start background tasks (Stream-mode clients)."""

    async def close(self) -> None: ...

    async def deliver(self, event: Event | None, replies: Sequence[Reply]) -> None:
        """Send a turn's replies; ``event`` is None for proactive messages."""

    # Optional: ``async def erase(self, ref: ConversationRef) -> int`` forgets what the
    # channel keeps in process memory about a conversation (right to erasure); the
    # admin API calls it when present. Redis keys are erased centrally (bot/state/keys.py).
