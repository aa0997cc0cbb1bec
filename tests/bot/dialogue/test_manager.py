"""The dialogue manager on small graphs: edges by slot state and condition,
choices, nodes that do not wait, platform events, idle expiry and silence
while a person has the conversation."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from bot.answer import no_stream
from bot.dialogue.graph import compile_graph
from bot.dialogue.manager import DialogueManager
from bot.services import Services
from bot.state import DialogueState
from bot.types import Attachment, ConversationRef, Event, EventKind
from tests.conftest import make_config

REF = ConversationRef(channel="api", conversation_id="yan", user_id="yan")


@pytest.fixture(scope="module")
def services() -> Services:
    return Services(make_config())


def manager(services: Services, spec: dict[str, Any], clock: Any = None) -> DialogueManager:
    real = services.hub.handler  # the recognizers trained from config/intents.yaml and config/speech_acts.yaml
    graph = compile_graph(spec, intents=real.intents.names)
    extra = {"clock": clock} if clock else {}
    return DialogueManager(graph, real.intents, services.answerer, services.config.dialogue, history_turns=20,
                           idle_ttl_s=1800, handoff_ttl_s=259200, context_tokens=2048, max_new_tokens=256,
                           speech_acts=real.speech_acts, **extra)


class Talk:
    def __init__(self, mgr: DialogueManager) -> None:
        self.mgr = mgr
        self.state = DialogueState(key=REF.key)
        self.n = 0

    async def send(self, text: str | None = None, **event: Any) -> list[str]:
        self.n += 1
        kind = event.pop("kind", EventKind.MESSAGE)
        ev = Event(id=f"e{self.n}", kind=kind, ref=REF, text=text, **event)
        result = await self.mgr.handle(ev, self.state, no_stream)
        self.state = result.state.replace(version=self.state.version + 1, updated_at=self.mgr.clock())
        return [r.text for r in result.replies]


SIZE = {
    "entry": "start",
    "handoff": "agent",
    "nodes": {
        "start": {"kind": "reply", "text": "您好", "edges": [
            {"if": {"matches": "衣服|尺码"}, "to": "size"},
            {"if": {"sentiment": ["negative", "angry"]}, "to": "sorry"},
            {"if": {"lang": "en"}, "to": "english"},
        ]},
        "size": {"kind": "collect", "slot": "size", "prompt": "您要什么尺码？", "choices": ["S", "M", "L"],
                 "transform": "upper", "retries": 1, "on_fail": "agent",
                 "edges": [{"slot": "size", "equals": "L", "to": "big"}, {"default": True, "to": "fits"}]},
        "big": {"kind": "reply", "text": "L 码有货", "wait": False, "edges": [{"default": True, "to": "note"}]},
        "note": {"kind": "reply", "text": "已记下 {size}"},
        "fits": {"kind": "reply", "text": "{size} 码需要预订"},
        "sorry": {"kind": "reply", "text": "抱歉让您不满意"},
        "english": {"kind": "reply", "text": "English please"},
        "agent": {"kind": "handoff", "text": "转人工"},
    },
}


async def test_condition_choice_and_slot_edges(services: Services) -> None:
    talk = Talk(manager(services, SIZE))
    assert await talk.send("这件衣服有大码吗") == ["您要什么尺码？"]
    assert await talk.send("XXL") == ["抱歉，您的回复格式不对，请再发送一次。"]
    assert await talk.send("l 吧") == ["L 码有货", "已记下 L"]  # a node that does not wait runs on
    assert talk.state.node == "note" and talk.state.slots == {"size": "L"}
    assert await talk.send("衣服换成 m") == ["M 码需要预订"]  # the answer came with the question
    assert await talk.send("衣服尺码 small") == ["您要什么尺码？"]  # "s" inside a word is not the choice S


async def test_collect_gives_up_after_its_retries(services: Services) -> None:
    talk = Talk(manager(services, SIZE))
    await talk.send("衣服尺码")
    await talk.send("不知道")
    assert await talk.send("还是不知道") == ["转人工"]
    assert talk.state.handed_off and talk.state.handoff is not None and talk.state.handoff.reason == "agent"


async def test_sentiment_and_language_conditions(services: Services) -> None:
    assert await Talk(manager(services, SIZE)).send("太失望了") == ["抱歉让您不满意"]
    assert await Talk(manager(services, SIZE)).send("hello there") == ["English please"]


async def test_enter_event_greets_only_outside_a_flow(services: Services) -> None:
    talk = Talk(manager(services, SIZE))
    assert await talk.send(kind=EventKind.EVENT, name="enter_agent") == ["您好"]
    await talk.send("衣服尺码")
    assert await talk.send(kind=EventKind.EVENT, name="enter_agent") == []
    assert talk.state.node == "size"
    before = talk.state
    assert await talk.send(kind=EventKind.FEEDBACK) == []
    assert talk.state.history == before.history


async def test_an_attachment_without_text_asks_for_words(services: Services) -> None:
    talk = Talk(manager(services, SIZE))
    replies = await talk.send(attachments=(Attachment(kind="image", media_id="m1"),))
    assert replies and "文字" in replies[0]


async def test_an_idle_conversation_starts_again(services: Services) -> None:
    now = [1000.0]
    talk = Talk(manager(services, SIZE, clock=lambda: now[0]))
    await talk.send("衣服尺码")
    assert talk.state.node == "size"
    now[0] += 1801  # past state.idle_ttl_s
    replies = await talk.send("M")  # no longer an answer to the size question
    assert not any("码" in r for r in replies)
    assert talk.state.node is None and talk.state.slots == {} and len(talk.state.history) == 2


async def test_a_handed_off_conversation_outlives_the_idle_ttl(services: Services) -> None:
    """Nobody answered overnight: the customer's next message is still for the person who has the conversation,
    not the start of a new bot conversation (state.handoff_ttl_s, days, instead of state.idle_ttl_s)."""
    now = [1000.0]
    talk = Talk(manager(services, SIZE, clock=lambda: now[0]))
    await talk.send("转人工")
    now[0] += 12 * 3600
    assert await talk.send("还在吗") == []
    assert talk.state.handed_off and [t.text for t in talk.state.history][-1] == "还在吗"
    now[0] += 259200 + 1  # past the handoff TTL too: a new conversation
    replies = await talk.send("你好")
    assert replies and not talk.state.handed_off


async def test_a_handed_off_conversation_is_recorded_but_silent(services: Services) -> None:
    talk = Talk(manager(services, SIZE))
    assert await talk.send("转人工") == ["转人工"]
    assert await talk.send("人呢") == []
    assert await talk.send(attachments=(Attachment(kind="image"),)) == []
    assert [t.text for t in talk.state.history][-2:] == ["人呢", "[attachment]"]


async def test_restart_takes_a_waiting_customer_back_from_a_handoff(services: Services) -> None:
    talk = Talk(manager(services, SIZE))
    await talk.send("转人工")
    assert await talk.send("重新开始") == ["您好"]
    assert not talk.state.handed_off and talk.state.handoff is None


async def test_a_conversation_saved_in_the_old_format_carries_on(services: Services) -> None:
    """A state written before the typed fields (counters in a "data" object) is
    continued where it was, not restarted: one invalid answer was already given."""
    talk = Talk(manager(services, SIZE))
    talk.state = DialogueState.from_json(REF.key, 4, json.dumps({
        "node": "size", "slots": {}, "history": [], "handed_off": False, "updated_at": time.time(),
        "data": {"lang": "zh", "attempts": 1, "ref": {"channel": "api", "conversation_id": "yan", "user_id": "yan"}},
    }))
    assert await talk.send("不知道") == ["转人工"]  # the second invalid answer: past retries=1
    assert talk.state.handed_off and talk.state.handoff is not None and talk.state.handoff.node == "agent"
    assert talk.state.invalid_answers == 0 and talk.state.ref == REF and talk.state.lang == "zh"
