"""The whole hub on the local transformers engine: /chat answers from the model
when the FAQ is unsure, the web widget receives the model's tokens as they are
generated, and a model that cannot load leaves the hub answering from the FAQ."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import aiohttp
import pytest

from bot.app import SERVICES_KEY
from bot.config import Config
from bot.types import ReplyChunk
from tests.conftest import make_config, start_server

pytestmark = pytest.mark.slow

UNSURE = "帮我看看这个保温杯能不能装开水"  # no FAQ entry answers this


def hf_config(model_path: Path | str, **extra: str) -> Config:
    return make_config({
        "engine.kind": "hf",
        "engine.model_path": str(model_path),
        "engine.device": "cpu",
        "engine.temperature": 0,
        "engine.max_new_tokens": 16,
        # the random model's 16 tokens are shorter than the output filter's streamed hold-back; that is
        # tested in tests/bot/safety; here: the engine's tokens reach the channel one by one
        "safety.output.enabled": False,
        "engine.torch_threads": 1,
        "hub.engine_deadline_s": 60,
        **extra,
    })


async def chat(server, query: str, user_id: str) -> dict:
    async with aiohttp.ClientSession() as s:
        async with s.post(server.make_url("/chat"), json={"query": query, "user_id": user_id}) as r:
            assert r.status == 200
            return await r.json()


async def test_chat_answers_from_the_model_and_streams_tokens(tiny_model: Path) -> None:
    server = await start_server(hf_config(tiny_model))
    try:
        services = server.app[SERVICES_KEY]
        async with aiohttp.ClientSession() as s, s.get(server.make_url("/readyz")) as r:
            assert r.status == 200 and (await r.json())["engine"] == "ok"
        # several customers at once: their requests share batches
        answers = await asyncio.gather(*(chat(server, UNSURE, f"user-{i}") for i in range(4)))
        assert all(a["source"] == "llm" and a["answer"] for a in answers)
        assert len({a["answer"] for a in answers}) == 1  # greedy: batching does not change answers
        # the FAQ still answers what it knows, without the model
        assert (await chat(server, "如何重置密码?", "user-0"))["source"] == "faq"

        # streaming channels see the model's text grow token by token
        web = services.hub.sink("web")
        seen: list[ReplyChunk] = []
        original = web.stream

        async def spy(chunk: ReplyChunk) -> None:
            seen.append(chunk)
            await original(chunk)

        web.stream = spy  # type: ignore[method-assign]
        services.hub.register("web", web)
        from bot.types import ConversationRef, Event, EventKind

        ref = ConversationRef("web", "s-1", "s-1")
        await services.hub.accept(Event(id="m-1", kind=EventKind.MESSAGE, ref=ref, text=UNSURE))
        assert await services.hub.drain(60)
        assert len(seen) > 1
        assert all(b.text_so_far.startswith(a.text_so_far) for a, b in itertools.pairwise(seen))
        assert all("\ufffd" not in c.delta for c in seen)
    finally:
        await server.close()


async def test_a_model_that_cannot_load_leaves_the_faq_answering(tmp_path: Path) -> None:
    server = await start_server(hf_config(tmp_path / "no-such-model"))
    try:
        async with aiohttp.ClientSession() as s, s.get(server.make_url("/readyz")) as r:
            assert r.status == 503 and (await r.json())["engine"] == "down"
        assert "忘记密码" in (await chat(server, "如何重置密码?", "u"))["answer"]
        fallback = await chat(server, UNSURE, "u")
        assert fallback["answer"] and fallback["source"] in ("fallback", "unknown")
    finally:
        await server.close()
