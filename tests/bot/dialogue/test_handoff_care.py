"""A customer handed to a person is never left alone: the service hours at the
handoff; outside them when a person will answer and one acknowledgement of the
message left; no agent reply in time: the bot says so and helps meanwhile; an
agent's reply keeps the bot quiet; release through the agent API still works.

The real graph and FAQ (config/), a fake clock, and the customer's messages
through the dialogue manager; the agent API through a running hub."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from bot.answer import no_stream
from bot.dialogue import handoff
from bot.dialogue.manager import DialogueManager
from bot.dialogue.waiting import WaitingCare
from bot.services import Services
from bot.state import DialogueState, Handoff
from bot.types import Attachment, ConversationRef, Event, EventKind, Reply
from tests.conftest import make_config, start_server
from tests.fakes.clock import FakeClock

from .helpers import ADMIN_TOKEN, Admin, chat

REF = ConversationRef(channel="api", conversation_id="mei", user_id="mei")
SH = ZoneInfo("Asia/Shanghai")
HOURS = {"handoff.hours.mon": "09:00-12:00,12:20-21:00", "handoff.hours.sat": "10:00-18:00",
         "handoff.hours.sun": "10:00-18:00", "handoff.agent_timeout_s": 300}
CONTINUE = "继续咨询机器人"


def at(day: int, hour: int, minute: int = 0) -> float:
    """A moment in May 2024, Shanghai time (12 May 2024 is a Sunday, 13 May a Monday)."""
    return datetime(2024, 5, day, hour, minute, tzinfo=SH).timestamp()


@pytest.fixture(scope="module")
def services() -> Services:
    return Services(make_config(HOURS))


class Talk:
    """One customer talking to a manager whose clock the test moves."""

    def __init__(self, services: Services, start: float) -> None:
        self.clock = FakeClock(start)
        real = services.hub.handler  # the graph and intents of config/, the configured hours
        assert isinstance(real, DialogueManager)
        cfg = services.config
        self.mgr = DialogueManager(real.graph, real.intents, services.answerer, cfg.dialogue,
                                   history_turns=cfg.state.history_turns, idle_ttl_s=cfg.state.idle_ttl_s,
                                   context_tokens=cfg.engine.context_tokens, max_new_tokens=cfg.engine.max_new_tokens,
                                   waiting=WaitingCare.from_config(cfg.handoff), speech_acts=real.speech_acts,
                                   clock=self.clock)
        self.state = DialogueState(key=REF.key)
        self.n = 0
        self.last: tuple[Reply, ...] = ()

    async def send(self, text: str | None = None, **event: Any) -> list[str]:
        self.n += 1
        ev = Event(id=f"e{self.n}", kind=EventKind.MESSAGE, ref=REF, text=text, **event)
        result = await self.mgr.handle(ev, self.state, no_stream)
        self.state = result.state.replace(version=self.state.version + 1, updated_at=self.clock())
        self.last = result.replies
        return [r.text for r in result.replies]

    def at(self, ts: float) -> Talk:
        self.clock.now = ts
        return self

    def agent_says(self, text: str) -> None:  # what POST /api/agent/reply does to the state
        self.state = handoff.agent_replied(self.state, text, 20, now=self.clock())


async def test_a_handoff_inside_the_hours_says_them_then_the_bot_keeps_quiet(services: Services) -> None:
    talk = Talk(services, at(13, 10))
    replies = await talk.send("转人工")
    assert len(replies) == 1 and "正在为您转接人工客服" in replies[0]  # one message: the node's text, then the hours
    assert replies[0].split("\n")[-1].startswith(
        "人工客服服务时间：周一 09:00-12:00、12:20-21:00，周二至周五 09:00-21:00，周六、周日 10:00-18:00。")
    assert talk.state.handed_off
    assert await talk.at(at(13, 10, 2)).send("在吗") == []  # a person will answer: the bot does not talk over them
    assert [t.text for t in talk.state.history][-1] == "在吗"


async def test_outside_the_hours_the_next_opening_and_one_acknowledgement_of_the_message(
    services: Services,
) -> None:
    talk = Talk(services, at(12, 22, 30))  # Sunday night
    replies = await talk.send("我要转人工")
    assert "明天（周一）09:00" in replies[-1] and "留言" in replies[-1]
    assert talk.last[-1].quick_replies == (CONTINUE,)

    noted = await talk.at(at(12, 22, 35)).send("我的订单三天了还没发货，麻烦帮我催一下")
    assert noted == ["已收到您的留言，人工客服将于明天（周一）09:00上线后第一时间回复您。"]
    assert await talk.at(at(12, 22, 40)).send("订单号 YD2405120001") == []  # acknowledged once, not every message
    assert await talk.at(at(12, 22, 41)).send(attachments=(Attachment(kind="image", media_id="m1"),)) == []
    kept = [t.text for t in talk.state.history if t.role == "user"]
    assert kept[1:] == ["我的订单三天了还没发货，麻烦帮我催一下", "订单号 YD2405120001", "[attachment]"]
    assert talk.state.handed_off


async def test_an_english_customer_hears_the_hours_in_english(services: Services) -> None:
    talk = Talk(services, at(12, 22, 30))
    replies = await talk.send("human")
    assert "tomorrow (Mon) at 09:00 (UTC+8)" in replies[-1] and "leave a message" in replies[-1]
    assert talk.last[-1].quick_replies == ("Continue with the assistant",)


async def test_no_agent_reply_in_time_the_bot_says_so_answers_and_can_take_over(services: Services) -> None:
    faq = services.faq
    talk = Talk(services, at(13, 10))
    await talk.send("转人工")
    assert await talk.at(at(13, 10, 3)).send("有人吗") == []  # still within handoff.agent_timeout_s

    question = "退款多久能到账"
    late = await talk.at(at(13, 10, 6)).send(question)
    assert late[0].startswith("抱歉，人工客服暂时还没有回复您") and talk.last[0].quick_replies == (CONTINUE,)
    assert late[1] == faq.search(question, k=1)[0].entry.answer  # answered by the bot meanwhile
    assert talk.state.handed_off  # the agent can still pick it up

    assert await talk.at(at(13, 10, 7)).send("人呢") == []  # said once; what the bot cannot answer waits
    back = await talk.at(at(13, 10, 8)).send(CONTINUE)
    assert back == ["好的，智能客服继续为您服务（人工客服回复时也会在这里联系您）。请问有什么可以帮您？"]
    assert not talk.state.handed_off and talk.state.handoff is None
    assert "订单号" in (await talk.at(at(13, 10, 9)).send("我要退款"))[0]  # the bot has it again


async def test_an_agent_reply_before_the_timeout_keeps_the_bot_silent(services: Services) -> None:
    talk = Talk(services, at(13, 10))
    await talk.send("转人工")
    talk.at(at(13, 10, 1)).agent_says("您好，我是客服小王")
    assert talk.state.handoff is not None and talk.state.handoff.agent_at == at(13, 10, 1)
    # Ten minutes after the handoff, but the agent answered: the customer's wait starts again now.
    assert await talk.at(at(13, 10, 10)).send("好的，我的订单号是 YD2405120001") == []
    assert await talk.at(at(13, 10, 14)).send("就是这个订单") == []
    late = await talk.at(at(13, 10, 16)).send("还在吗")  # six minutes without an answer to their message
    assert late and late[0].startswith("抱歉，人工客服暂时还没有回复您")


async def test_the_wait_counts_only_while_someone_is_on_duty(services: Services) -> None:
    talk = Talk(services, at(13, 11, 55))  # Monday, a break 12:00-12:20
    await talk.send("转人工")
    noted = await talk.at(at(13, 12, 5)).send("还在吗")
    assert noted == ["已收到您的留言，人工客服将于今天 12:20上线后第一时间回复您。"]
    assert await talk.at(at(13, 12, 22)).send("有人吗") == []  # 27 min since the handoff, 2 on duty
    assert (await talk.at(at(13, 12, 26)).send("有人吗"))[0].startswith("抱歉，人工客服暂时还没有回复您")


async def test_an_agent_working_past_the_hours_is_not_contradicted(services: Services) -> None:
    talk = Talk(services, at(12, 17, 55))  # Sunday; the hours end at 18:00
    await talk.send("转人工")
    talk.at(at(12, 18, 2)).agent_says("您好，我来帮您")
    assert await talk.at(at(12, 18, 5)).send("好的") == []  # someone is clearly there
    noted = await talk.at(at(12, 18, 20)).send("还在吗")  # the agent went quiet, and the hours are over
    assert noted == ["已收到您的留言，人工客服将于明天（周一）09:00上线后第一时间回复您。"]


async def test_agent_reply_is_recorded_and_release_still_works(http: aiohttp.ClientSession) -> None:
    hours = {f"handoff.hours.{d}": "00:00-24:00" for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
    server = await start_server(make_config({"admin.token": ADMIN_TOKEN, **hours}))
    try:
        admin, nina = Admin(http, server), chat(http, server, "nina")
        handed = await nina.say("转人工")
        assert "\n人工客服服务时间：每天 全天。" in handed["answer"]
        target = {"channel": "api", "user_id": "nina"}
        status, _ = await admin.request("POST", "/api/agent/reply", target | {"text": "您好，我来帮您"})
        assert status == 200
        _, state = await admin.state("nina")
        assert state["data"]["handoff"]["agent_at"] > 0 and "wait" not in state["data"]["handoff"]
        waiting = await nina.say("好的谢谢")
        assert waiting["replies"] == [] and [m["text"] for m in waiting["messages"]] == ["您好，我来帮您"]
        _, state = await admin.state("nina")
        assert state["data"]["handoff"]["wait"] > 0  # the customer now waits for an answer to this

        status, body = await admin.request("POST", "/api/agent/release", target)
        assert status == 200 and body["released"] is True
        back = await nina.say("如何重置密码?")
        assert back["replies"] and "智能客服将继续为您服务" in back["messages"][0]["text"]
        _, state = await admin.state("nina")
        assert state["handed_off"] is False and state["data"]["handoff"] is None
    finally:
        await server.close()


def test_the_waiting_marks_are_stored_and_old_handoffs_still_load() -> None:
    marked = Handoff("requested", "handoff", 100.0, agent_at=160.0, waiting_since=170.0, noted=True, late=True)
    state = DialogueState(key=REF.key, handed_off=True, handoff=marked)
    assert DialogueState.from_json(REF.key, 1, state.to_json()).handoff == marked
    old = '{"node": null, "slots": {}, "history": [], "handed_off": true, "updated_at": 1.0,'
    old += ' "handoff": {"reason": "anger", "node": "calm_handoff", "at": 100.0}}'
    assert DialogueState.from_json(REF.key, 1, old).handoff == Handoff("anger", "calm_handoff", 100.0)
