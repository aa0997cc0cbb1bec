"""Answering policy with a real remote engine against a loopback
OpenAI-compatible server: LLM when the FAQ is unsure, FAQ or an apology when
the engine fails or is late, never an error to the customer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.config import Config
from tests.conftest import make_config, start_server


class FakeOpenAI:
    """A loopback chat-completions server; ``mode`` decides how it behaves."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.requests: list[dict] = []
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.complete)
        app.router.add_get("/v1/models", self.models)
        self.server = TestServer(app, host="127.0.0.1")

    async def models(self, _request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "test"}]})

    async def complete(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(await request.json())
        if self.mode == "error":
            return web.json_response({"error": "boom"}, status=500)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for piece in ["您好，", "这是", "模型的", "回答。"]:
            if self.mode == "slow":
                await asyncio.sleep(5)
            chunk = {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            await resp.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    await fake.server.start_server()
    yield fake
    await fake.server.close()


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
    server = await start_server(llm_config(str(fake_openai.server.make_url("/v1"))))
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
    fake_openai.mode = "error"
    server = await start_server(llm_config(str(fake_openai.server.make_url("/v1"))))
    try:
        status, body = await chat(server, "帮我看看这个保温杯能不能装开水")
        assert status == 200 and body["source"] in ("fallback", "unknown")
        assert body["answer"]
        assert fallbacks(server, "unavailable") + fallbacks(server, "error") >= 1
    finally:
        await server.close()


async def test_a_late_engine_gives_the_faq_answer_at_the_deadline(fake_openai: FakeOpenAI) -> None:
    fake_openai.mode = "slow"
    server = await start_server(llm_config(str(fake_openai.server.make_url("/v1")), deadline=0.5))
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
