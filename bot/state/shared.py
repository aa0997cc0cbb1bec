"""Cross-process coordination built on :class:`~bot.state.kv.SharedKV`, used by the
channel adapters that talk to a rate-limited platform with an access token.

Both pieces keep their state in the KV rather than in the process because the
platform limits and tokens belong to the app, not to one process: a send budget
counted per process would be exceeded as soon as two gateways run, and a token
refreshed by each process on its own would invalidate the token the others hold
(WeCom and DingTalk both revoke the previous token on refresh). With a MemoryKV
(single process) the same code works unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bot.state.kv import SharedKV

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
Fetch = Callable[[], Awaitable[tuple[str, float]]]


@dataclass
class _Queue:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class WindowGate:
    """At most ``limit`` passes per fixed window of ``window_s`` seconds for each name.

    The count lives in the shared KV under ``key(f"{name}:{window}")`` so every
    process draws on one budget. A caller over the limit sleeps until the next
    window and tries again: a burst is delayed, never dropped, because the
    platform would otherwise reject (or silently throttle) the message. Within a
    process, callers for one name pass in arrival order (an ``asyncio.Lock`` is
    FIFO), so a newcomer can never take the slot of someone already waiting.
    ``clock`` and ``sleep`` are injectable so tests can move time themselves.
    """

    def __init__(
        self,
        kv: SharedKV,
        key: Callable[[str], str],
        limit: int,
        window_s: float = 60.0,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.kv = kv
        self.key = key
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self.sleep = sleep
        self._queues: dict[str, _Queue] = {}  # only names with a caller inside wait(), so it cannot grow unbounded

    async def wait(self, name: str) -> None:
        """Return once this caller may go ahead for ``name``; its pass is already counted."""
        queue = self._queues.setdefault(name, _Queue())
        queue.users += 1
        try:
            async with queue.lock:
                while (delay := await self._hit(name)) > 0:
                    log.info("send rate of %s reached; waiting %.1fs for the next window", name, delay)
                    await self.sleep(delay)
        finally:
            queue.users -= 1
            if not queue.users and self._queues.get(name) is queue:
                del self._queues[name]

    async def _hit(self, name: str) -> float:
        """Count one pass in the current window: 0 when within the limit, else the
        seconds to the next window (at least a millisecond, in case a sleep wakes early)."""
        now = self.clock()
        window = int(now // self.window_s)
        # The key outlives its window so a slow clock in another process still finds the count.
        if await self.kv.hit(self.key(f"{name}:{window}"), self.window_s * 2) <= self.limit:
            return 0.0
        return max((window + 1) * self.window_s - now, 0.001)


class SharedTokenTimeout(Exception):
    """Another process held the refresh lock for too long without storing a token."""


class SharedToken:
    """A platform access token cached in the shared KV and refreshed by one caller at a time.

    Platforms hand out one valid token per app and revoke the previous one on
    every refresh, so concurrent refreshes would keep invalidating each other's
    tokens. Refreshes are therefore single-flight: an ``asyncio.Lock`` lets one
    coroutine per process try, and a ``set_nx`` lock at ``lock_key`` (owned by a
    random id, released only by its owner) lets one process fetch while the
    others poll the KV for the token it stores. A holder that dies leaves the
    lock to expire after ``lock_ttl_s``; a waiter gives up with ``timeout_error``
    after ``wait_s``.

    ``fetch`` is the platform call: it returns the token and its lifetime as the
    platform states it. The token is cached ``renew_margin_s`` shorter (but at
    least ``min_ttl_s``) so it is renewed before it can expire in flight.
    """

    def __init__(
        self,
        kv: SharedKV,
        key: str,
        lock_key: str,
        fetch: Fetch,
        *,
        renew_margin_s: float = 300.0,
        min_ttl_s: float = 60.0,
        lock_ttl_s: float = 10.0,
        poll_s: float = 0.05,
        wait_s: float | None = None,
        timeout_error: Callable[[str], Exception] = SharedTokenTimeout,
    ) -> None:
        self.kv = kv
        self.key = key
        self.lock_key = lock_key
        self.fetch = fetch
        self.renew_margin_s = renew_margin_s
        self.min_ttl_s = min_ttl_s
        self.lock_ttl_s = lock_ttl_s
        self.poll_s = poll_s
        self.wait_s = 2 * lock_ttl_s if wait_s is None else wait_s  # long enough to outlive a dead holder's lock
        self.timeout_error = timeout_error
        self._local = asyncio.Lock()

    async def get(self, stale: str | None = None) -> str:
        """A valid token; ``stale`` is one the platform just refused, so it is never returned."""
        if token := await self._cached(stale):
            return token
        async with self._local:
            if token := await self._cached(stale):  # refreshed while this caller queued
                return token
            return await self._refresh(stale)

    async def invalidate(self, bad: str) -> None:
        """Forget a token the platform refused, unless another process already replaced it."""
        if await self.kv.get(self.key) == bad:
            await self.kv.delete(self.key)

    async def _cached(self, stale: str | None) -> str | None:
        token = await self.kv.get(self.key)
        return token if token and token != stale else None

    async def _refresh(self, stale: str | None) -> str:
        owner = uuid.uuid4().hex
        deadline = time.monotonic() + self.wait_s
        while True:
            if await self.kv.set_nx(self.lock_key, owner, self.lock_ttl_s):
                try:
                    if token := await self._cached(stale):  # stored by the previous lock holder
                        return token
                    token, lifetime = await self.fetch()
                    await self.kv.set(self.key, token, max(self.min_ttl_s, lifetime - self.renew_margin_s))
                    return token
                finally:
                    # Owner-checked: after a fetch slower than lock_ttl_s the lock may be someone else's.
                    # (get + delete is not atomic; SharedKV has no compare-and-delete.)
                    if await self.kv.get(self.lock_key) == owner:
                        await self.kv.delete(self.lock_key)
            await asyncio.sleep(self.poll_s)  # another process is refreshing
            if token := await self._cached(stale):
                return token
            if time.monotonic() > deadline:
                raise self.timeout_error(
                    f"waited {self.wait_s:.0f}s for another process to refresh the token at {self.key}")
