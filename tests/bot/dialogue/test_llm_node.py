"""LLM nodes end to end: the prompt template, slots, LoRA adapter and the
token-bounded history reach the model, in the customer's language. The model
is an OpenAI-compatible server faked on loopback (an external API)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer

from bot.dialogue.context import estimate_tokens
from tests.conftest import make_config, start_server
from tests.fakes.openai_server import FakeOpenAI

from .helpers import chat

GRAPH = {
    "entry": "start",
    "handoff": "agent",
    "languages": ["zh", "en"],
    "nodes": {
        "start": {"kind": "reply", "text": {"zh": "您好", "en": "Hello"}, "edges": [
            {"intent": "refund", "to": "order"},
            {"default": True, "to": "chat"},
        ]},
        "order": {"kind": "collect", "slot": "order_id", "pattern": r"YD\d{10}",
                  "prompt": {"zh": "订单号？", "en": "Order number?"}, "edges": [{"default": True, "to": "advise"}]},
        "advise": {"kind": "llm", "adapter": "refund-lora", "faq_first": False,
                   "prompt": {"zh": "为订单 {order_id} 给出退款建议。", "en": "Advise on refunding order {order_id}."}},
        "chat": {"kind": "llm", "prompt": {"zh": "你是云朵商城的客服。", "en": "You are Yunduo's assistant."}},
        "agent": {"kind": "handoff", "text": {"zh": "转人工", "en": "Connecting you"}},
    },
}


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(["好的，", "模型回答。"], model="base") as fake:
        yield fake


@pytest.fixture
async def server(model: FakeOpenAI, tmp_path: Path) -> AsyncIterator[TestServer]:
    path = tmp_path / "dialogue.yaml"
    path.write_text(yaml.safe_dump(GRAPH, allow_unicode=True), encoding="utf-8")
    config = make_config({
        "dialogue.path": str(path),
        "engine.kind": "openai",
        "engine.openai.base_url": model.base_url,
        "engine.context_tokens": 900,
        "engine.max_new_tokens": 100,
        "dialogue.history_tokens": 400,
    })
    srv = await start_server(config)
    yield srv
    await srv.close()


def _system(request: dict[str, Any]) -> str:
    return request["messages"][0]["content"]


async def test_the_llm_node_gets_its_template_slots_and_adapter(
    http: aiohttp.ClientSession, server: TestServer, model: FakeOpenAI
) -> None:
    zoe = chat(http, server, "zoe")
    await zoe.say("我要退款")
    out = await zoe.say("YD2405120001")
    assert out["answer"] == "好的，模型回答。" and out["source"] == "llm"
    request = model.requests[-1]
    assert request["model"] == "refund-lora"
    assert "为订单 YD2405120001 给出退款建议。" in _system(request)
    assert "order_id=YD2405120001" in _system(request)
    assert request["messages"][-1] == {"role": "user", "content": "YD2405120001"}
    assert [m["content"] for m in request["messages"][1:-1]] == ["我要退款", "订单号？"]


async def test_an_english_question_gets_an_english_prompt(
    http: aiohttp.ClientSession, server: TestServer, model: FakeOpenAI
) -> None:
    await chat(http, server, "ann").say("Write me a poem about spring rain")
    system = _system(model.requests[-1])
    assert "You are Yunduo's assistant." in system and "Answer in English." in system


async def test_a_long_conversation_is_summarized_within_the_token_budget(
    http: aiohttp.ClientSession, server: TestServer, model: FakeOpenAI
) -> None:
    ben = chat(http, server, "ben")
    filler = "请讲讲关于星辰大海与远方旅行的故事，越详细越好，越长越好，这是用来填充上下文的文字"
    for i in range(12):
        await ben.say(f"第{i}个问题：{filler}")
    request = model.requests[-1]
    history = request["messages"][1:-1]
    history_tokens = sum(estimate_tokens(m["content"]) + 4 for m in history)
    assert history and history_tokens <= 400
    assert len(history) < 22  # the older turns no longer come whole
    system = _system(request)
    assert "此前对话摘要" in system
    summary = system[system.index("此前对话摘要") :].split("\n参考资料")[0]  # FAQ knowledge follows it
    assert estimate_tokens(summary) + history_tokens <= 400
    assert "第10个问题" in history[-2]["content"] or "第10个问题" in summary
