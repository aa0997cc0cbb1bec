"""Dialogue state and the store protocol every backend must satisfy.

Saves are compare-and-set on ``version`` so two turns racing on one
conversation (two gateway processes, say) can never lose an update: the loser
gets :class:`VersionConflict`, reloads and runs again.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


class StoreDown(Exception):
    """The store cannot be reached; the work is to be done again later, not failed."""


class VersionConflict(Exception):
    """Someone else saved this conversation since it was loaded."""


@dataclass(frozen=True, slots=True)
class HistoryTurn:
    role: str  # user | assistant | agent | system
    text: str
    ts: float = 0.0
    meta: Mapping[str, Any] = field(default_factory=_empty)


@dataclass(frozen=True, slots=True)
class DialogueState:
    key: str
    version: int = 0  # 0: never saved
    node: str | None = None
    slots: Mapping[str, Any] = field(default_factory=_empty)
    history: tuple[HistoryTurn, ...] = ()
    handed_off: bool = False
    updated_at: float = 0.0
    data: Mapping[str, Any] = field(default_factory=_empty)  # counters and flags owned by the dialogue layer

    def replace(self, **changes: Any) -> DialogueState:
        return dataclasses.replace(self, **changes)

    def with_turn(self, role: str, text: str, limit: int, **meta: Any) -> DialogueState:
        turn = HistoryTurn(role=role, text=text, ts=time.time(), meta=MappingProxyType(dict(meta)))
        return self.replace(history=(*self.history, turn)[-limit:])

    def to_json(self) -> str:
        return json.dumps(
            {
                "node": self.node,
                "slots": dict(self.slots),
                "history": [[t.role, t.text, t.ts, dict(t.meta)] for t in self.history],
                "handed_off": self.handed_off,
                "updated_at": self.updated_at,
                "data": dict(self.data),
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, key: str, version: int, raw: str) -> DialogueState:
        d = json.loads(raw)
        return cls(
            key=key,
            version=version,
            node=d.get("node"),
            slots=MappingProxyType(d.get("slots") or {}),
            history=tuple(HistoryTurn(r, t, ts, MappingProxyType(m)) for r, t, ts, m in d.get("history") or ()),
            handed_off=bool(d.get("handed_off")),
            updated_at=float(d.get("updated_at") or 0.0),
            data=MappingProxyType(d.get("data") or {}),
        )


SENT = ""  # what the ledger holds once an event's replies have left


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """An event's encoded replies, stored with the state its turn produced."""

    dedup_key: str
    replies: str  # bot.codec.encode_replies


class StateStore(Protocol):
    async def load(self, key: str) -> DialogueState:
        """The saved state, or a fresh version-0 state when none (or expired)."""

    async def save(
        self, state: DialogueState, *, expected_version: int, ledger: LedgerEntry | None = None
    ) -> DialogueState:
        """Store ``state`` if the stored version still equals ``expected_version``.

        Returns the state with its new version; refreshes the idle TTL.
        Raises :class:`VersionConflict` otherwise. With ``ledger``, the replies
        are recorded in the same atomic step, so a crash can never leave a
        saved state without the answer that goes with it.
        """

    async def ledger(self, conversation: str, dedup_key: str) -> str | None:
        """The recorded replies of an event, :data:`SENT` once they were sent, None when none were recorded."""

    async def mark_sent(self, conversation: str, dedup_key: str) -> None:
        """Replace the recorded replies by the :data:`SENT` marker (the text is not kept once delivered)."""

    async def delete(self, key: str) -> None: ...

    async def first_seen(self, dedup_key: str) -> bool:
        """Record a platform message id; False when it was already seen."""

    async def forget_seen(self, dedup_key: str) -> None:
        """Undo ``first_seen`` for an event that will not be answered here, so the
        platform's redelivery is taken (by this or another process)."""

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...

