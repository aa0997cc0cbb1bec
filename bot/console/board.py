"""The inbox: one row per conversation waiting for (or held by) a person.

The rows are a mirror kept for listing, not the truth: who holds a conversation lives in its dialogue state
(``Handoff.agent``, changed by compare-and-set in bot/console/desk.py), so a row that is lost or stale costs a
wrong line in the inbox, never two agents answering one customer. In Redis the rows are one hash
(``keys.console_board()``) shared by every process, so any gateway lists what any worker handed off; a few
hundred waiting conversations are one ``HGETALL``, sorted here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from bot.state.base import ref_from_dict, ref_to_dict
from bot.state.keys import Keys
from bot.types import ConversationRef

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Waiting:
    """One inbox row."""

    key: str  # ConversationRef.key
    ref: ConversationRef
    name: str  # display name: Event.sender_name, else a channel-specific fallback
    reason: str  # Handoff.reason (requested | anger | complaint | safety | agent | a node's)
    reason_text: str  # Chinese label
    since: float  # handoff time (time.time())
    last_text: str = ""  # the customer's last message, redacted, <= 200 chars
    last_at: float = 0.0  # when the customer last wrote
    waiting_since: float = 0.0  # since when the customer waits for an answer (0: an agent answered last)
    unread: int = 0  # customer messages since the last agent reply
    taken_by: str | None = None  # agent name
    taken_at: float = 0.0

    def replace(self, **changes: Any) -> Waiting:
        return replace(self, **changes)

    @property
    def waited_from(self) -> float:
        """What the inbox orders by: the customer's wait, or the handoff when an agent answered last."""
        return self.waiting_since or self.since

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ref"] = ref_to_dict(self.ref)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Waiting:
        """Raises ValueError for a row that is not one (the caller drops it)."""
        ref = ref_from_dict(d.get("ref"))
        key = d.get("key")
        if ref is None or not isinstance(key, str) or not key:
            raise ValueError("an inbox row needs a key and a ref")
        taken = d.get("taken_by")
        return cls(
            key=key,
            ref=ref,
            name=str(d.get("name") or ""),
            reason=str(d.get("reason") or ""),
            reason_text=str(d.get("reason_text") or ""),
            since=_num(d.get("since")),
            last_text=str(d.get("last_text") or ""),
            last_at=_num(d.get("last_at")),
            waiting_since=_num(d.get("waiting_since")),
            unread=max(0, int(_num(d.get("unread")))),
            taken_by=str(taken) if taken else None,
            taken_at=_num(d.get("taken_at")),
        )


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def order(rows: list[Waiting]) -> list[Waiting]:
    """Untaken first, then the longest wait first; ties: the newest handoff first."""
    return sorted(rows, key=lambda r: (r.taken_by is not None, r.waited_from, -r.since))


class Board(Protocol):
    async def upsert(self, row: Waiting) -> bool:
        """Store the row; True when the conversation was not on the board."""

    async def get(self, key: str) -> Waiting | None: ...

    async def remove(self, key: str) -> bool:
        """True when there was a row."""

    async def list(self) -> list[Waiting]:
        """Every row, in :func:`order`."""


class MemoryBoard:
    """One process's board (memory mode: the process that runs turns also serves the console)."""

    def __init__(self) -> None:
        self._rows: dict[str, Waiting] = {}

    async def upsert(self, row: Waiting) -> bool:
        new = row.key not in self._rows
        self._rows[row.key] = row
        return new

    async def get(self, key: str) -> Waiting | None:
        return self._rows.get(key)

    async def remove(self, key: str) -> bool:
        return self._rows.pop(key, None) is not None

    async def list(self) -> list[Waiting]:
        return order(list(self._rows.values()))


class RedisBoard:
    """The rows in one Redis hash: field the conversation key, value the row as JSON."""

    def __init__(self, redis: Any, keys: Keys) -> None:
        self.redis = redis
        self.key = keys.console_board()

    async def upsert(self, row: Waiting) -> bool:
        added = await self.redis.hset(self.key, row.key, _dumps(row))
        return bool(added)

    async def get(self, key: str) -> Waiting | None:
        raw = await self.redis.hget(self.key, key)
        return None if raw is None else _loads(key, raw)

    async def remove(self, key: str) -> bool:
        return bool(await self.redis.hdel(self.key, key))

    async def list(self) -> list[Waiting]:
        raw = await self.redis.hgetall(self.key)
        rows = []
        for field, value in raw.items():
            row = _loads(field, value)
            if row is not None:
                rows.append(row)
        return order(rows)


def _dumps(row: Waiting) -> str:
    return json.dumps(row.to_json(), ensure_ascii=False, separators=(",", ":"))


def _loads(field: str, raw: str) -> Waiting | None:
    """A row written by another version or damaged by hand is left out of the inbox, not an error page."""
    try:
        data = json.loads(raw)
        if not isinstance(data, Mapping):
            raise ValueError("not an object")
        return Waiting.from_json(data)
    except ValueError as exc:  # JSONDecodeError is one
        log.warning("inbox row %s is unreadable (%s); left out", field, type(exc).__name__)
        return None


def open_board(redis: Any, keys: Keys) -> Board:
    """The shared hash when state is in Redis, else this process's memory."""
    return MemoryBoard() if redis is None else RedisBoard(redis, keys)
