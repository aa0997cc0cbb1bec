"""The queue between intake and answering, and the guarantees every backend keeps.

An inbox owns dedup: :meth:`Inbox.put_once` records the platform message id
and makes the event durable before the webhook is acknowledged, or refuses it
(:class:`Overloaded`, so the platform retries) and forgets the id again, so
the retry is taken. Consumers get one conversation's events one at a time, in
the order they were put; different conversations run concurrently. A handler
that returns has finished the event (acknowledged); one that raises gets it
again later with ``redelivered`` set, and after ``delivery_limit`` deliveries
it is parked as dead (counted, never retried forever).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from bot.state.base import SeenPending
from bot.types import Event

log = logging.getLogger(__name__)

_PENDING_WAITS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.0)  # then give up: the platform retries later


class Overloaded(Exception):
    """The event was not taken; the platform should retry later (nothing is lost)."""


class StoreUnavailable(Overloaded):
    """The dedup store cannot record the event, so it cannot be taken safely."""


class QueueUnavailable(Overloaded):
    """The broker did not confirm the event, so it was not taken."""


@dataclass(frozen=True, slots=True)
class Delivery:
    event: Event
    redelivered: bool = False  # an earlier delivery may have done part of the work: check the reply ledger
    attempt: int = 1


Handler = Callable[[Delivery], Awaitable[None]]


class SeenSet(Protocol):
    """The part of the state store an inbox needs for dedup."""

    async def first_seen(self, dedup_key: str, *, pending_s: float = 0.0) -> bool: ...

    async def confirm_seen(self, dedup_key: str) -> None: ...

    async def forget_seen(self, dedup_key: str) -> None: ...


async def record_seen(seen: SeenSet, event: Event, pending_s: float) -> bool:
    """Mark the event's id seen, provisionally for ``pending_s`` (False: already seen). A store that
    cannot answer, or another request taking the same event right now, refuses it for a retry."""
    for wait in _PENDING_WAITS:
        try:
            return await seen.first_seen(event.dedup_key, pending_s=pending_s)
        except SeenPending:
            # A concurrent redelivery: the first request usually stores the event within milliseconds,
            # and then this one is a plain duplicate (200) rather than a 503.
            await asyncio.sleep(wait)
        except Exception as exc:
            log.error("state store unavailable, %s event %s refused for a retry: %s", event.ref.channel, event.id,
                      type(exc).__name__)
            raise StoreUnavailable(type(exc).__name__) from exc
    raise Overloaded("the same event is being taken by another request")


async def confirm_seen(seen: SeenSet, event: Event) -> None:
    """The event is stored: make its mark final. If Redis cannot be told, the mark stays provisional and
    a retry after it lapses stores a second copy, which the reply ledger answers once."""
    try:
        await seen.confirm_seen(event.dedup_key)
    except Exception as exc:
        log.warning("could not confirm %s event %s as taken: %s", event.ref.channel, event.id, type(exc).__name__)


class Inbox(Protocol):
    redelivers: bool  # True when an event can come back after a crash (so replies go through the ledger)

    async def start(self) -> None:
        """Connect and declare what is needed to put events (idempotent)."""

    async def put_once(self, event: Event) -> bool:
        """Take an event. False: already taken (a platform retry). Raises :class:`Overloaded`
        (full, closing, store or broker down) after forgetting the id, so the retry is taken."""

    async def consume(self, handler: Handler) -> None:
        """Start handing events to ``handler``; returns once consuming has started."""

    async def stop_consuming(self, drain_s: float) -> bool:
        """Take no new events, wait up to ``drain_s`` for the running ones, and hand the
        rest back (to another consumer, or to the platform's retry). False when some were handed back."""

    async def depth(self) -> int:
        """Events taken and not yet finished (best effort, for metrics and /readyz)."""

    async def close(self) -> None: ...
