"""What a channel is: an inbound half and an outbound half.

The inbound half (gateways only) owns the routes and platform connections
that receive messages: verify, decrypt, normalize, ``hub.accept``, and
acknowledge at once. The sender (every process that runs turns) turns replies
into platform sends: byte limits, token refresh, rate limits. Whatever a
sender needs between the turn and the send is in Redis when state is, so a
worker can answer an event that another process received.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from bot.types import Event, Reply


class Inbound(Protocol):
    name: str

    def routes(self) -> Sequence[web.AbstractRouteDef]: ...

    async def start(self) -> None:
        """Open inbound connections (Stream mode); gateways only."""

    async def close(self) -> None: ...


class Sender(Protocol):
    name: str

    async def deliver(self, event: Event | None, replies: Sequence[Reply]) -> None:
        """Send a turn's replies; ``event`` is None for proactive messages (an agent's)."""

    async def close(self) -> None: ...

    # Optional: ``async def stream(self, chunk: ReplyChunk) -> None`` for channels that show partial answers, and
    # ``async def erase(self, ref: ConversationRef) -> int`` to forget what the channel keeps in process memory
    # about a conversation (right to erasure). Redis keys are erased centrally (bot/state/keys.py).


@dataclass(frozen=True, slots=True)
class Channel:
    name: str
    sender: Sender
    inbound: Inbound | None = None  # None: the channel only sends (e.g. a notifier-only configuration)
