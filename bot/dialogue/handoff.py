"""Human handoff: the state changes when a person takes a conversation over or
gives it back, and the notice that tells the team.

A handed-off conversation keeps recording the customer's messages for the agent
until ``POST /api/agent/release``; the bot only tells the customer about the wait
(bot/dialogue/waiting.py), it does not answer for the agent. The team notice is sent once
per handoff even when the turn that caused it runs again after losing a
compare-and-set race: the first sender claims a key built from the message id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence

from bot.notify import Notifier
from bot.privacy.pii import redact
from bot.state import DialogueState, Handoff
from bot.state.keys import Keys
from bot.state.kv import SharedKV
from bot.types import ConversationRef

log = logging.getLogger(__name__)

_NOTICE_TTL_S = 86400
_RECENT_TURNS = 6
_ROLE = {"user": "客户", "assistant": "机器人", "agent": "人工", "system": "系统"}
REASONS = {
    "requested": "客户要求转人工",
    "anger": "客户情绪激动（多次愤怒）",
    "complaint": "客户投诉",
    "agent": "人工主动接入",
    "safety": "安全检查：可疑或违规内容",  # bot/safety/input_filter.py
}
_RELEASED = {
    "zh": "人工客服已结束本次服务，智能客服将继续为您服务。还有什么可以帮您的吗？",
    "en": "The human agent has finished helping you; the virtual assistant is back. Anything else I can help with?",
}


def released_text(lang: str) -> str:
    return _RELEASED.get(lang, _RELEASED["zh"])


def agent_replied(state: DialogueState, text: str, limit: int, agent: str | None = None,
                  now: float | None = None) -> DialogueState:
    """A person answered: record it, and take the conversation over so the bot
    does not talk over them. The reply's time is kept: the customer's wait for
    a person (bot/dialogue/waiting.py) counts again from their next message."""
    now = time.time() if now is None else now
    taken = state.handoff or Handoff("agent", state.node, now)
    taken = dataclasses.replace(taken, agent_at=now, waiting_since=0.0, noted=False, late=False)
    meta = {"agent": agent} if agent else {}
    return state.with_turn("agent", text, limit, **meta).replace(handed_off=True, handoff=taken)


def released(state: DialogueState, notice: str | None, limit: int) -> DialogueState:
    """Give the conversation back to the bot, starting again at the entry node
    (slots are kept: the customer should not have to repeat an order number)."""
    state = state.replace(handed_off=False, node=None, handoff=None, angry_messages=0, invalid_answers=0)
    return state.with_turn("assistant", notice, limit, source="system") if notice else state


def describe(ref: ConversationRef, state: DialogueState, reason: str) -> tuple[str, str]:
    """Title and text of the team notice (Chinese: it is read by the support team). What the customer
    wrote and the slots are redacted (bot/privacy/pii.py): the notice leaves the hub for group chats and
    ticket systems. An order number stays (it is what the agent needs); the rest is in the admin API."""
    who = f"{ref.channel} 用户 {ref.user_id}"
    title = f"【转人工】{who}"
    lines = [
        f"原因：{REASONS.get(reason, reason)}",
        f"渠道：{ref.channel}" + (f"（租户 {ref.tenant}）" if ref.tenant else ""),
        f"用户：{ref.user_id}" + (f"（群聊 {ref.conversation_id}）" if ref.is_group else ""),
    ]
    if state.slots:
        lines.append("已收集：" + "，".join(f"{k}={redact(str(v))}" for k, v in state.slots.items()))
    recent = state.history[-_RECENT_TURNS:]
    if recent:
        lines.append("最近消息：")
        lines += [f"  {_ROLE.get(t.role, t.role)}：{redact(' '.join(t.text.split()))[:200]}" for t in recent]
    target = {"channel": ref.channel, "user_id": ref.user_id}
    if ref.tenant:
        target["tenant"] = ref.tenant
    if ref.conversation_id != ref.user_id:
        target["conversation_id"] = ref.conversation_id
    lines.append("回复客户：POST /api/agent/reply " + json.dumps(target | {"text": "…"}, ensure_ascii=False))
    lines.append("交还机器人：POST /api/agent/release " + json.dumps(target, ensure_ascii=False))
    return title, "\n".join(lines)


class HandoffNotifier:
    """Tells every configured notifier (the channels' team robots and the
    generic webhook) about a handoff, in parallel, each bounded in time."""

    def __init__(
        self,
        notifiers: Callable[[], Sequence[Notifier]],
        kv: SharedKV,
        keys: Keys,
        *,
        timeout_s: float,
        extra: Sequence[Notifier] = (),
    ) -> None:
        self._notifiers = notifiers  # read at notice time: channels register theirs after start-up
        self.kv = kv
        self.keys = keys
        self.timeout_s = timeout_s
        self.extra = tuple(extra)

    async def notify(self, ref: ConversationRef, state: DialogueState, reason: str, dedup_key: str) -> int:
        """Send the notice; returns how many notifiers took it (0 when already sent)."""
        targets = [*self.extra, *self._notifiers()]
        if not targets:
            log.warning("conversation %s handed off (%s) but no team notifier is configured", ref.key, reason)
            return 0
        if not await self.kv.set_nx(self.keys.handoff_notice(dedup_key), "1", _NOTICE_TTL_S):
            return 0
        title, text = describe(ref, state, reason)
        sent = await asyncio.gather(*(self._send(n, title, text) for n in targets))
        return sum(sent)

    async def _send(self, notifier: Notifier, title: str, text: str) -> bool:
        try:
            async with asyncio.timeout(self.timeout_s):
                await notifier.notify(title, text)
            return True
        except Exception as exc:  # one broken notifier must not stop the others or the turn
            log.warning("handoff notice through %s failed: %s", getattr(notifier, "name", notifier), exc)
            return False
