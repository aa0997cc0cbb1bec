"""Answering policy with a real remote engine against a loopback
OpenAI-compatible server: LLM when the FAQ is unsure, FAQ or an apology when
the engine fails or is late, never an error to the customer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bot.config import Config
from tests.conftest import make_config, start_server
from tests.fakes.openai_server import FakeOpenAI


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(["您好，", "这是", "模型的", "回答。"], model="test") as fake:
        yield fake


def llm_config(base_url: str, deadline: float = 2.0) -> Config:
    return make_config({
        "engine.kind": "openai",
        "engine.openai.base_url": base_url,
        "engine.openai.model": "test",
        "engine.openai.retries": 0,
        "engine.openai.timeout_s": 1,
        "hub.engine_deadline_s": deadline,
    })


async def chat(server: TestServer, query: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.post(server.make_url("/chat"), json={"query": query}) as r:
        return r.status, await r.json()


def fallbacks(server: TestServer, reason: str) -> float:
    from bot.app import SERVICES_KEY

    return server.app[SERVICES_KEY].metrics.engine_fallbacks.labels(reason)._value.get()


async def test_unsure_faq_asks_the_model_with_faq_context(fake_openai: FakeOpenAI) -> None:
    server = await start_server(llm_config(fake_openai.base_url))
    try:
        status, body = await chat(server, "帮我看看这个保温杯能不能装开水")
        assert status == 200
        assert body["answer"] == "您好，这是模型的回答。" and body["source"] == "llm"
        system = fake_openai.requests[-1]["messages"][0]
        assert system["role"] == "system" and "参考资料" in system["content"]
        # a confident FAQ question never reaches the model
        before = len(fake_openai.requests)
        status, body = await chat(server, "如何重置密码?")
        assert body["source"] == "faq" and len(fake_openai.requests) == before
    finally:
        await server.close()


async def test_engine_errors_fall_back_without_failing(fake_openai: FakeOpenAI) -> None:
    fake_openai.script = ["500"]
    server = await start_server(llm_config(fake_openai.base_url))
    try:
        status, body = await chat(server, "帮我看看这个保温杯能不能装开水")
        assert status == 200 and body["source"] in ("fallback", "unknown")
        assert body["answer"]
        assert fallbacks(server, "unavailable") + fallbacks(server, "error") >= 1
    finally:
        await server.close()


async def test_a_late_engine_gives_the_faq_answer_at_the_deadline(fake_openai: FakeOpenAI) -> None:
    fake_openai.delay = 5
    server = await start_server(llm_config(fake_openai.base_url, deadline=0.5))
    try:
        status, body = await chat(server, "帮我看看这个保温杯能不能装开水")
        assert status == 200
        assert body["source"] in ("fallback", "unknown") and body["answer"]
        assert fallbacks(server, "deadline") == 1
    finally:
        await server.close()


async def test_engine_down_means_not_ready_but_still_answering() -> None:
    server = await start_server(llm_config("http://127.0.0.1:1/v1"))
    try:
        async with aiohttp.ClientSession() as s, s.get(server.make_url("/readyz")) as r:
            assert r.status == 503 and (await r.json())["engine"] == "down"
        status, body = await chat(server, "如何重置密码?")
        assert status == 200 and "忘记密码" in body["answer"]
        status, body = await chat(server, "帮我看看这个保温杯能不能装开水")
        assert status == 200 and body["answer"]
    finally:
        await server.close()


# --------------------------------------------------------------------------- 猜你想问 (no engine)

def faq_answerer():
    from bot.answer import Answerer
    from bot.config import ROOT, FaqConfig
    from bot.faq import FaqIndex
    from bot.metrics import Metrics

    index = FaqIndex.from_config(FaqConfig(), lambda p: ROOT / p)
    return Answerer(index, None, system_prompt="", deadline_s=1, metrics=Metrics())


async def test_an_uncertain_match_offers_the_top_three_questions_and_each_answers_when_tapped() -> None:
    from bot import messages

    answerer = faq_answerer()
    query = "会员"  # several membership entries fit: which one is meant?
    hits = answerer.faq.search(query, k=3)
    assert answerer.faq.uncertain(hits)
    answer = await answerer.answer(query)
    assert answer.source == "unknown" and answer.faq_id is None
    assert answer.text == messages.text("unknown_suggest", "zh") and "您是想问" in answer.text
    assert len(answer.suggestions) == 3
    assert answer.suggestions == tuple(h.entry.question for h in hits)
    for question in answer.suggestions:
        tapped = await answerer.answer(question)
        assert tapped.source == "faq" and answerer.faq.by_id[tapped.faq_id].question == question


async def test_far_from_every_entry_says_it_does_not_know_without_suggestions() -> None:
    answer = await faq_answerer().answer("帮我看看这个保温杯能不能装开水")
    assert answer.source == "unknown" and answer.suggestions == ()


async def test_a_confident_match_answers_from_the_faq() -> None:
    answer = await faq_answerer().answer("你好，在吗？退宽多久能到账啊，谢谢")
    assert answer.source == "faq" and answer.faq_id == "refund-progress"
