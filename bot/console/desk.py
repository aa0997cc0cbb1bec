"""The agent desk: what the console (and the admin API) does to a conversation a person has.

Who holds a conversation is part of its dialogue state (``Handoff.agent``), changed only through
``Hub.update_state``'s compare-and-set: two agents pressing "take" at once on two gateways load the same
version, one save wins, the other reloads, sees the winner and gets :class:`Taken`. The inbox row
(bot/console/board.py) mirrors the state for listing and the feed (bot/console/feed.py) tells every gateway that
something changed; neither decides anything, so losing one costs a stale line, never a double answer.

Turns keep the board current through :meth:`AgentDesk.turn_saved`, a hook run after the save and before the
send on every process that runs turns, so the row is there by the time the customer reads "已为您转接人工". It
touches Redis only for conversations handed off before or after the turn, so ordinary turns pay nothing for the
console.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from bot.console.board import Waiting
from bot.console.feed import RESYNC
from bot.dialogue import handoff
from bot.privacy.pii import redact
from bot.state import DialogueState, Handoff
from bot.types import ConversationRef, Event, EventKind, Reply

if TYPE_CHECKING:
    from bot.pipeline import TurnContext
    from bot.services import Services

log = logging.getLogger(__name__)

MAX_TEXT = 4000  # an agent reply, after stripping (the admin API's limit too)
LAST_TEXT = 200  # what the inbox shows of the customer's last message
FAILED_SLOT = "未填完信息"
# Reasons that are a graph node's own (config/dialogue.yaml) and are not a failed slot.
NODE_REASONS = {"tech_unresolved": "问题未解决", "order_number": FAILED_SLOT}
_ATTACHMENT = {"image": "[图片]", "voice": "[语音]", "file": "[文件]", "video": "[视频]"}


class Taken(Exception):
    """Someone else holds the conversation."""

    def __init__(self, agent: str) -> None:
        super().__init__(f"已被 {agent} 接手")
        self.agent = agent


class NotWaiting(Exception):
    """No such conversation, or it is not handed off to a person."""


class DeliveryFailed(Exception):
    """The customer's channel could not deliver the message; only the kind of error is kept (its text may hold a
    platform URL with a token)."""

    def __init__(self, channel: str, kind: str) -> None:
        super().__init__(f"{channel} could not deliver it ({kind})")
        self.channel = channel
        self.kind = kind


def display_name(ref: ConversationRef, sender_name: str | None = None) -> str:
    """The platform's name for the customer, else what identifies them on their channel."""
    if sender_name and sender_name.strip():
        return sender_name.strip()[:64]
    if ref.channel == "web":
        return "访客 " + ref.conversation_id[-6:]
    if ref.channel == "api":
        return "API " + ref.user_id[:12]
    return ref.user_id  # wecom, dingtalk: the user id the team knows them by


def reason_text(reason: str, *, failed_slot: bool = False) -> str:
    """The inbox's Chinese label for a handoff reason."""
    if reason in handoff.REASONS:
        return handoff.REASONS[reason]
    if failed_slot:
        return FAILED_SLOT
    return NODE_REASONS.get(reason, reason)


def _preview(event: Event) -> str:
    text = (event.text or "").strip()
    if not text and event.attachments:
        text = " ".join(_ATTACHMENT.get(a.kind, "[附件]") for a in event.attachments)
    return redact(" ".join(text.split()))[:LAST_TEXT]


class AgentDesk:
    def __init__(self, services: Services, *, clock: Callable[[], float] = time.time) -> None:
        self.services = services
        self.clock = clock
        self._fail_targets: frozenset[str] | None = None

    # ------------------------------------------------------------------ turns
    async def turn_saved(self, ctx: TurnContext) -> None:
        """Keeps the inbox row of a handed-off conversation current (new -> "handoff", a customer message ->
        "message"); a turn that ends a handoff (the customer chose the bot, 重新开始) removes it ("released")."""
        after = ctx.state
        if after is None or ctx.outcome in ("timeout", "error"):  # resent, or nothing was saved
            return
        before = ctx.loaded
        if not after.handed_off and not (before is not None and before.handed_off):
            return
        key = ctx.event.ref.key
        # The stored state, not the turn's: a take or release may have happened since the turn saved.
        state = await self.services.store.load(key) if after.handed_off else after
        if not state.handed_off:
            if await self.services.board.remove(key):
                await self._publish("released", key)
            return
        row = await self.services.board.get(key)
        message = ctx.event.kind is EventKind.MESSAGE
        now = self.clock()
        fresh = self._row(state, ctx.event.ref, row, now, sender_name=ctx.event.sender_name)
        if message:
            fresh = fresh.replace(last_text=_preview(ctx.event), last_at=now,
                                  unread=(row.unread if row is not None else 0) + 1,
                                  waiting_since=(row.waiting_since if row is not None and row.waiting_since
                                                 else fresh.since if row is None else now))
        if fresh == row:
            return
        new = await self.services.board.upsert(fresh)
        if new:
            await self._publish("handoff", key, reason=fresh.reason)
        elif message:
            await self._publish("message", key)

    # ------------------------------------------------------------------ reads
    async def waiting(self) -> list[Waiting]:
        """The inbox. Rows quiet for longer than the idle TTL are checked against their state: a conversation
        that expired (or was released where no hook saw it) leaves the board."""
        rows = await self.services.board.list()
        ttl = self.services.config.state.idle_ttl_s
        now = self.clock()
        out = []
        for row in rows:
            if now - max(row.last_at, row.since, row.taken_at) > ttl:
                state = await self.services.store.load(row.key)
                if not state.handed_off:
                    if await self.services.board.remove(row.key):
                        await self._publish("released", row.key)
                    continue
            out.append(row)
        return out

    async def conversation(self, key: str) -> DialogueState | None:
        state = await self.services.store.load(key)
        return None if state.version == 0 else state

    # ------------------------------------------------------------------ actions
    async def take(self, key: str, agent: str, *, force: bool = False) -> Waiting:
        """Make ``agent`` the holder. :class:`Taken` when another agent holds it (unless ``force``: an admin),
        :class:`NotWaiting` when it is not handed off."""
        now = self.clock()

        def change(state: DialogueState) -> DialogueState:
            if not state.handed_off:
                raise NotWaiting(key)
            h = state.handoff or Handoff("agent", state.node, now)
            if h.agent and h.agent != agent and not force:
                raise Taken(h.agent)
            return state.replace(handoff=dataclasses.replace(h, agent=agent))

        try:
            state = await self.services.hub.update_state(key, change)
        except NotWaiting:
            await self._drop(key)
            raise
        row = await self.services.board.get(key)
        ref = state.ref or (row.ref if row is not None else None)
        if ref is None:  # handed off but never reached: nothing to show or answer
            raise NotWaiting(key)
        fresh = self._row(state, ref, row, now)
        new = await self.services.board.upsert(fresh)
        if new:
            await self._publish("handoff", key, reason=fresh.reason)
        await self._publish("taken", key, agent=agent)
        return fresh

    async def reply(self, key_or_ref: str | ConversationRef, agent: str | None, text: str, *,
                    display: str | None = None) -> DialogueState:
        """A person answers through the customer's own channel (its byte limits and retries). ``agent`` is the
        console account, which takes the conversation when nobody holds it (:class:`Taken` when someone else
        does); None is the admin API, which neither checks nor changes the holder and records ``display`` as
        the turn's agent. ValueError for an empty or too long text, KeyError for a channel not running here,
        :class:`DeliveryFailed` when the channel fails (the turn is recorded by then)."""
        text = text.strip()
        if not 1 <= len(text) <= MAX_TEXT:
            raise ValueError(f"the text must have 1-{MAX_TEXT} characters")
        services = self.services
        if isinstance(key_or_ref, ConversationRef):
            ref: ConversationRef | None = key_or_ref
            key = key_or_ref.key
        else:
            key = key_or_ref
            current = await services.store.load(key)
            row = await services.board.get(key)
            ref = current.ref or (row.ref if row is not None else None)
            if ref is None:
                raise NotWaiting(key)
        sink = services.hub.sink(ref.channel)
        limit = services.config.state.history_turns
        who = agent or display
        now = self.clock()

        def change(state: DialogueState) -> DialogueState:
            holder = state.handoff.agent if state.handoff is not None else None
            if agent is not None and holder and holder != agent:
                raise Taken(holder)
            out = handoff.agent_replied(state, text, limit, who, now)
            if agent is not None and display and display != agent:
                last = out.history[-1]
                meta = MappingProxyType({**last.meta, "display": display})
                out = out.replace(history=(*out.history[:-1], dataclasses.replace(last, meta=meta)))
            if agent is not None and out.handoff is not None:
                out = out.replace(handoff=dataclasses.replace(out.handoff, agent=agent))
            return out

        state = await services.hub.update_state(key, change)
        target = state.ref or ref
        # the row mirrors the state (answered, held), delivered or not: the history shows the turn either way
        row = await services.board.get(key)
        fresh = self._row(state, target, row, now).replace(unread=0, waiting_since=0.0)
        if await services.board.upsert(fresh):
            await self._publish("handoff", key, reason=fresh.reason)
        meta = {"agent": who} if who else {}
        try:
            await sink.deliver(None, [Reply(to=target, text=text, source="agent", meta=meta)])
        except Exception as exc:
            log.error("delivering an agent message to %s failed (%s)", key, type(exc).__name__)
            raise DeliveryFailed(target.channel, type(exc).__name__) from None
        finally:
            await self._publish("reply", key, **meta)
        self._archive(target, key, text, state.lang)
        return state

    async def release(self, key: str | ConversationRef, agent: str | None, *, notify: bool = True,
                      force: bool = False) -> bool:
        """Give the conversation back to the bot; False when it was not handed off. Only its holder may, an
        untaken one anyone, any with ``force`` (an admin, the admin API). With ``notify`` the customer is told
        (:class:`DeliveryFailed` when that fails; the release stands)."""
        services = self.services
        ref = key if isinstance(key, ConversationRef) else None
        conversation = ref.key if ref is not None else str(key)
        current = await services.store.load(conversation)
        if not current.handed_off:
            await self._drop(conversation)
            return False
        row = await services.board.get(conversation)
        target = current.ref or ref or (row.ref if row is not None else None)
        sink = services.hub.sink(target.channel) if notify and target is not None else None
        notice = handoff.released_text(current.lang or "zh") if sink is not None else None
        limit = services.config.state.history_turns

        def change(state: DialogueState) -> DialogueState:
            if not state.handed_off:
                raise NotWaiting(conversation)
            holder = state.handoff.agent if state.handoff is not None else None
            if holder and holder != agent and not force:
                raise Taken(holder)
            return handoff.released(state, notice, limit)

        try:
            state = await services.hub.update_state(conversation, change)
        except NotWaiting:
            await self._drop(conversation)
            return False
        await services.board.remove(conversation)
        await self._publish("released", conversation, **({"agent": agent} if agent else {}))
        if notice and sink is not None:
            to = state.ref or target
            assert to is not None
            try:
                await sink.deliver(None, [Reply(to=to, text=notice, source="system")])
            except Exception as exc:
                log.error("delivering the release notice to %s failed (%s)", conversation, type(exc).__name__)
                raise DeliveryFailed(to.channel, type(exc).__name__) from None
        return True

    async def forget(self, key: str) -> None:
        """Erasure: the conversation's inbox row and the feed's events naming it go with the rest; open inboxes
        are told to reload (a "released" event would name it again)."""
        removed = await self.services.board.remove(key)
        await self.services.feed.erase(key)
        if removed:
            await self._publish(RESYNC, "")

    # ------------------------------------------------------------------ helpers
    def _row(self, state: DialogueState, ref: ConversationRef, row: Waiting | None, now: float, *,
             sender_name: str | None = None) -> Waiting:
        """The row as the state says it (reason, holder), keeping what only the row knows (name, last message,
        unread)."""
        h = state.handoff or Handoff("agent", state.node, state.updated_at or now)
        since = h.since or now
        agent = h.agent
        if row is not None and row.taken_by == agent:
            taken_at = row.taken_at
        else:
            taken_at = now if agent else 0.0
        return Waiting(
            key=state.key,
            ref=state.ref or ref,
            name=row.name if row is not None and row.name else display_name(ref, sender_name),
            reason=h.reason,
            reason_text=reason_text(h.reason, failed_slot=h.node in self._failed_slot_nodes()),
            since=since,
            last_text=row.last_text if row is not None else "",
            last_at=row.last_at if row is not None else 0.0,
            waiting_since=row.waiting_since if row is not None else since,
            unread=row.unread if row is not None else 0,
            taken_by=agent,
            taken_at=taken_at,
        )

    def _failed_slot_nodes(self) -> frozenset[str]:
        """Handoff nodes a collect node falls back to after too many wrong answers (config/dialogue.yaml)."""
        if self._fail_targets is None:
            graph = getattr(self.services.hub.handler, "graph", None)
            nodes = getattr(graph, "nodes", None) or {}
            self._fail_targets = frozenset(
                n.on_fail for n in nodes.values() if getattr(n, "kind", "") == "collect" and n.on_fail)
        return self._fail_targets

    async def _drop(self, key: str) -> None:
        if await self.services.board.remove(key):
            await self._publish("released", key)

    async def _publish(self, kind: str, key: str, **data: Any) -> None:
        """The feed only hastens what the next page load shows anyway: a failure is logged, not raised."""
        try:
            await self.services.feed.publish(kind, key, **data)
        except Exception as exc:
            log.warning("console feed: could not publish %s for %s (%s)", kind, key, type(exc).__name__)

    def _archive(self, ref: ConversationRef, key: str, text: str, lang: str | None) -> None:
        archive = self.services.archive
        if archive is None:
            return
        archive.record("turns", {
            "created_at": dt.datetime.now(dt.UTC),
            "channel": ref.channel[:32],
            "tenant": ref.tenant[:128],
            "conversation": key[:512],
            "event_id": f"agent:{uuid.uuid4().hex}",
            "kind": "message",
            "question": None,
            "answer": text,  # the writer redacts it on its own thread
            "replies": 1,
            "source": "agent",
            "faq_id": None,
            "node": None,
            "intent": None,
            "adapter": None,
            "arm": None,
            "latency_ms": None,
            "outcome": "ok",
            "lang": (lang or None) and lang[:16],
        })
