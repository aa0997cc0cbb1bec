"""Dialogue state and the store protocol every backend must satisfy.

Saves are compare-and-set on ``version`` so two turns racing on one
conversation (two gateway processes, say) can never lose an update: the loser
gets :class:`VersionConflict`, reloads and runs again.

Stored as compact JSON (:meth:`DialogueState.to_json`): the dialogue layer's
fields sit at the top level under short keys and are left out while they hold
their default. States written before those fields existed kept them in a
``"data"`` object under the same keys; :meth:`DialogueState.from_json` still
reads that shape, so an upgrade does not reset live conversations.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import orjson

from bot.privacy.pii import redact
from bot.types import ConversationRef


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


class StoreDown(Exception):
    """The store cannot be reached; the work is to be done again later, not failed."""


class SeenPending(Exception):
    """Another request is taking this event right now (its mark is provisional and fresh)."""


class VersionConflict(Exception):
    """Someone else saved this conversation since it was loaded."""


@dataclass(frozen=True, slots=True)
class HistoryTurn:
    role: str  # user | assistant | agent | system
    text: str
    ts: float = 0.0
    meta: Mapping[str, Any] = field(default_factory=_empty)


@dataclass(frozen=True, slots=True)
class Handoff:
    """Why and from where a person took the conversation over."""

    reason: str  # a key of bot.dialogue.handoff.REASONS, or a graph node's own reason
    node: str | None = None  # the handoff node, or where the conversation waited when an agent stepped in
    since: float = 0.0  # time.time() of the handoff
    # While waiting (bot/dialogue/waiting.py; JSON keys in brackets, left out at their default):
    agent_at: float = 0.0  # ["agent_at"] when an agent last replied (0: none yet)
    waiting_since: float = 0.0  # ["wait"] since when the customer waits for a person (0: an agent answered last)
    noted: bool = False  # ["noted"] told outside service hours that the message is kept for the agent
    late: bool = False  # ["late"] told that no agent replied in time (and offered the bot)
    agent: str | None = None  # ["agent"] the console agent holding the conversation (bot/console/desk.py)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reason": self.reason, "node": self.node, "at": self.since}
        if self.agent_at:
            out["agent_at"] = self.agent_at
        if self.waiting_since:
            out["wait"] = self.waiting_since
        if self.noted:
            out["noted"] = True
        if self.late:
            out["late"] = True
        if self.agent:
            out["agent"] = self.agent
        return out

    @classmethod
    def from_dict(cls, raw: object) -> Handoff | None:
        if not isinstance(raw, Mapping) or not raw.get("reason"):
            return None
        node = raw.get("node")
        agent = raw.get("agent")
        return cls(reason=str(raw["reason"]), node=str(node) if node else None, since=_float(raw.get("at")),
                   agent_at=_float(raw.get("agent_at")), waiting_since=_float(raw.get("wait")),
                   noted=bool(raw.get("noted")), late=bool(raw.get("late")),
                   agent=str(agent) if agent else None)


def ref_to_dict(ref: ConversationRef) -> dict[str, Any]:
    """A conversation's address as stored: tenant and is_group only when set."""
    out: dict[str, Any] = {"channel": ref.channel, "conversation_id": ref.conversation_id, "user_id": ref.user_id}
    if ref.tenant:
        out["tenant"] = ref.tenant
    if ref.is_group:
        out["is_group"] = True
    return out


def ref_from_dict(raw: object) -> ConversationRef | None:
    if not isinstance(raw, Mapping):
        return None
    try:
        return ConversationRef(channel=str(raw["channel"]), conversation_id=str(raw["conversation_id"]),
                               user_id=str(raw["user_id"]), tenant=str(raw.get("tenant") or ""),
                               is_group=bool(raw.get("is_group")))
    except KeyError:
        return None


def _float(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _count(value: object) -> int:
    return max(0, int(value)) if isinstance(value, int | float) else 0


_DIALOGUE_KEYS = ("lang", "ref", "handoff", "anger", "attempts")


@dataclass(frozen=True, slots=True)
class DialogueState:
    key: str
    version: int = 0  # 0: never saved
    node: str | None = None
    slots: Mapping[str, Any] = field(default_factory=_empty)
    history: tuple[HistoryTurn, ...] = ()
    handed_off: bool = False
    updated_at: float = 0.0
    # Owned by the dialogue layer (JSON keys in brackets):
    lang: str | None = None  # ["lang"] the customer's language, sticky across messages that show none
    ref: ConversationRef | None = None  # ["ref"] how the customer was last reached: for agent and proactive replies
    handoff: Handoff | None = None  # ["handoff"] set while (and because) a person has the conversation
    angry_messages: int = 0  # ["anger"] angry messages since the flow last started or ended
    invalid_answers: int = 0  # ["attempts"] invalid answers to the question the collect node is waiting at

    def replace(self, **changes: Any) -> DialogueState:
        return dataclasses.replace(self, **changes)

    def with_turn(self, role: str, text: str, limit: int, **meta: Any) -> DialogueState:
        """The state with one more history turn, its personal data redacted (bot/privacy/pii.py): history
        is kept for the idle TTL and quoted to the team and the model in later turns. The turn being
        answered already has the text as written; slots the dialogue needs are kept as they are."""
        turn = HistoryTurn(role=role, text=redact(text), ts=time.time(), meta=MappingProxyType(dict(meta)))
        return self.replace(history=(*self.history, turn)[-limit:])

    def dialogue_fields(self) -> dict[str, Any]:
        """The dialogue layer's fields under their JSON keys, defaults left out."""
        out: dict[str, Any] = {}
        if self.lang:
            out["lang"] = self.lang
        if self.ref is not None:
            out["ref"] = ref_to_dict(self.ref)
        if self.handoff is not None:
            out["handoff"] = self.handoff.to_dict()
        if self.angry_messages:
            out["anger"] = self.angry_messages
        if self.invalid_answers:
            out["attempts"] = self.invalid_answers
        return out

    def to_json(self) -> str:
        body = {
                "node": self.node,
                "slots": dict(self.slots),
                "history": [[t.role, t.text, t.ts, dict(t.meta)] for t in self.history],
                "handed_off": self.handed_off,
                "updated_at": self.updated_at,
                **self.dialogue_fields(),
            }
        try:  # orjson: the state is written every turn, and stdlib json was ~15% of a turn
            return orjson.dumps(body, default=_plain).decode()
        except (orjson.JSONEncodeError, TypeError):  # e.g. a lone surrogate in a slot; stdlib escapes it
            return json.dumps(body, separators=(",", ":"), default=_plain)

    @classmethod
    def from_json(cls, key: str, version: int, raw: str) -> DialogueState:
        try:
            d = orjson.loads(raw)
        except orjson.JSONDecodeError:  # escaped lone surrogates, written by the stdlib fallback above
            d = json.loads(raw)
        legacy = d.get("data")  # the format before typed fields kept them in a "data" object
        if isinstance(legacy, Mapping):
            for name in _DIALOGUE_KEYS:
                if name not in d and name in legacy:
                    d[name] = legacy[name]
        lang = d.get("lang")
        return cls(
            key=key,
            version=version,
            node=d.get("node"),
            slots=MappingProxyType(d.get("slots") or {}),
            history=tuple(HistoryTurn(r, t, ts, MappingProxyType(m)) for r, t, ts, m in d.get("history") or ()),
            handed_off=bool(d.get("handed_off")),
            updated_at=float(d.get("updated_at") or 0.0),
            lang=str(lang) if lang else None,
            ref=ref_from_dict(d.get("ref")),
            handoff=Handoff.from_dict(d.get("handoff")),
            angry_messages=_count(d.get("anger")),
            invalid_answers=_count(d.get("attempts")),
        )

def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


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

    async def first_seen(self, dedup_key: str, *, pending_s: float = 0.0) -> bool:
        """Record a platform message id; False when it was already seen.

        With ``pending_s`` the mark is provisional until :meth:`confirm_seen`: a request that finds
        a provisional mark younger than that raises :class:`SeenPending` (another request is taking
        the event: answer 503), and an older one is taken over. So an answer lost on the way back
        from Redis (the mark set, the caller told it failed) cannot turn the platform's retry into
        a "duplicate" that nobody answers."""

    async def confirm_seen(self, dedup_key: str) -> None:
        """Make a provisional mark final: the event is stored and will be answered."""

    async def forget_seen(self, dedup_key: str) -> None:
        """Undo ``first_seen`` for an event that will not be answered here, so the
        platform's redelivery is taken (by this or another process)."""

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...

