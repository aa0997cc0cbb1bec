"""In-process store: the embedded default for ``make run`` and single-process use."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from bot.state.base import SENT, DialogueState, LedgerEntry, SeenPending, VersionConflict

_SWEEP_INTERVAL_S = 60.0


class MemoryStore:
    def __init__(self, idle_ttl_s: float, dedup_ttl_s: float, clock: Callable[[], float] = time.monotonic, *,
                 handoff_ttl_s: float | None = None) -> None:
        self._idle_ttl = idle_ttl_s
        self._handoff_ttl = max(idle_ttl_s, handoff_ttl_s or 0)  # StateConfig.handoff_ttl_s
        self._dedup_ttl = dedup_ttl_s
        self._clock = clock
        self._states: dict[str, tuple[float, int, str]] = {}  # key -> (expires, version, json)
        self._seen: dict[str, float] = {}
        self._pending: dict[str, float] = {}  # provisional marks: dedup key -> until when another request waits
        self._ledger: dict[tuple[str, str], tuple[float, str]] = {}  # (conversation, dedup key) -> (expires, replies)
        self._lock = asyncio.Lock()
        self._next_sweep = 0.0

    async def load(self, key: str) -> DialogueState:
        entry = self._states.get(key)
        if entry is None or entry[0] <= self._clock():
            self._states.pop(key, None)
            return DialogueState(key=key)
        return DialogueState.from_json(key, entry[1], entry[2])

    async def save(
        self, state: DialogueState, *, expected_version: int, ledger: LedgerEntry | None = None
    ) -> DialogueState:
        async with self._lock:
            entry = self._states.get(state.key)
            current = entry[1] if entry is not None and entry[0] > self._clock() else 0
            if current != expected_version:
                raise VersionConflict(state.key)
            saved = state.replace(version=expected_version + 1, updated_at=time.time())
            ttl = self._handoff_ttl if saved.handed_off else self._idle_ttl
            self._states[state.key] = (self._clock() + ttl, saved.version, saved.to_json())
            if ledger is not None:
                self._ledger[(state.key, ledger.dedup_key)] = (self._clock() + self._dedup_ttl, ledger.replies)
            return saved

    async def ledger(self, conversation: str, dedup_key: str) -> str | None:
        entry = self._ledger.get((conversation, dedup_key))
        return entry[1] if entry is not None and entry[0] > self._clock() else None

    async def mark_sent(self, conversation: str, dedup_key: str) -> None:
        self._ledger[(conversation, dedup_key)] = (self._clock() + self._dedup_ttl, SENT)

    async def delete(self, key: str) -> None:
        self._states.pop(key, None)

    async def first_seen(self, dedup_key: str, *, pending_s: float = 0.0) -> bool:
        now = self._clock()
        self._sweep(now)
        if self._seen.get(dedup_key, 0.0) > now:
            pending_until = self._pending.get(dedup_key)
            if pending_until is None:
                return False
            if pending_until > now:
                raise SeenPending(dedup_key)
        self._seen[dedup_key] = now + self._dedup_ttl
        if pending_s > 0:
            self._pending[dedup_key] = now + pending_s
        else:
            self._pending.pop(dedup_key, None)
        return True

    async def confirm_seen(self, dedup_key: str) -> None:
        self._pending.pop(dedup_key, None)

    async def forget_seen(self, dedup_key: str) -> None:
        self._seen.pop(dedup_key, None)
        self._pending.pop(dedup_key, None)

    def _sweep(self, now: float) -> None:
        """Drop expired ids and conversations once per sweep interval, so a
        long-running embedded hub does not grow without bound."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_INTERVAL_S
        self._seen = {k: t for k, t in self._seen.items() if t > now}
        self._pending = {k: t for k, t in self._pending.items() if k in self._seen}
        self._states = {k: v for k, v in self._states.items() if v[0] > now}
        self._ledger = {k: v for k, v in self._ledger.items() if v[0] > now}

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None
