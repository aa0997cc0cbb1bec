"""Handoff notices: every notifier is told once per handoff, a broken one
does not stop the others, and the generic webhook reports failures."""

from __future__ import annotations

import aiohttp
import pytest

from bot.dialogue import handoff
from bot.notify import NotifyError, WebhookNotifier
from bot.state import DialogueState
from bot.state.keys import Keys
from bot.state.kv import MemoryKV
from bot.types import ConversationRef

from .helpers import Webhook

REF = ConversationRef(channel="wecom", conversation_id="group-9", user_id="zhangsan", tenant="corp1", is_group=True)


class Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.notices: list[tuple[str, str]] = []

    async def notify(self, title: str, text: str) -> None:
        self.notices.append((title, text))


class Broken:
    name = "broken"

    async def notify(self, title: str, text: str) -> None:
        raise RuntimeError("robot key revoked")


def conversation() -> DialogueState:
    state = DialogueState(key=REF.key, version=3, slots={"order_id": "YD2405120001"})
    state = state.with_turn("user", "我要退款", 20).with_turn("assistant", "请发送订单号", 20)
    return state.with_turn("user", "转人工", 20)


def test_the_notice_says_who_why_and_how_to_answer() -> None:
    title, text = handoff.describe(REF, conversation(), "requested")
    assert "zhangsan" in title
    assert "客户要求转人工" in text and "租户 corp1" in text and "群聊 group-9" in text
    assert "order_id=YD2405120001" in text and "客户：我要退款" in text
    assert '"conversation_id": "group-9"' in text and '"tenant": "corp1"' in text


async def test_each_handoff_is_notified_once_and_failures_are_contained() -> None:
    good, kv = Recorder(), MemoryKV()
    notifier = handoff.HandoffNotifier(lambda: [Broken(), good], kv, Keys("t"), timeout_s=5)
    assert await notifier.notify(REF, conversation(), "anger", "wecom:corp1:msg-1") == 1
    assert await notifier.notify(REF, conversation(), "anger", "wecom:corp1:msg-1") == 0  # the turn ran again
    assert len(good.notices) == 1
    assert await notifier.notify(REF, conversation(), "anger", "wecom:corp1:msg-2") == 1


async def test_notifiers_registered_later_are_used() -> None:
    registered: list[Recorder] = []
    notifier = handoff.HandoffNotifier(lambda: registered, MemoryKV(), Keys("t"), timeout_s=5)
    assert await notifier.notify(REF, conversation(), "requested", "a") == 0  # nobody to tell yet
    registered.append(Recorder())
    assert await notifier.notify(REF, conversation(), "requested", "b") == 1


async def test_webhook_posts_json_and_reports_failures(webhook: Webhook) -> None:
    async with aiohttp.ClientSession() as session:
        hook = WebhookNotifier(webhook.url, lambda: session)
        await hook.notify("标题", "正文")
        assert webhook.received == [{"title": "标题", "text": "正文", "source": "kefu-hub"}]
        webhook.status = 500
        with pytest.raises(NotifyError, match="HTTP 500"):
            await hook.notify("标题", "正文")
        with pytest.raises(NotifyError, match="unreachable"):
            await WebhookNotifier("http://127.0.0.1:9/nothing", lambda: session, 2).notify("t", "x")


def test_agent_and_release_state_changes() -> None:
    taken = handoff.agent_replied(conversation(), "您好，我是小王", 20, agent="小王")
    assert taken.handed_off and taken.history[-1].role == "agent"
    assert taken.handoff is not None and taken.handoff.reason == "agent" and taken.handoff.since > 0
    again = handoff.agent_replied(taken, "还在吗", 20)
    assert again.handoff is not None  # a second agent message keeps why and since when
    assert (again.handoff.reason, again.handoff.node, again.handoff.since) == (
        taken.handoff.reason, taken.handoff.node, taken.handoff.since)
    back = handoff.released(taken.replace(angry_messages=2, invalid_answers=1), "机器人回来了", 20)
    assert not back.handed_off and back.node is None
    assert back.angry_messages == back.invalid_answers == 0 and back.handoff is None
    assert back.slots == {"order_id": "YD2405120001"}  # the customer need not repeat it
    assert back.history[-1].text == "机器人回来了"
