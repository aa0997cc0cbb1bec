"""An LLM answer streamed into an AI card end to end: signed callback -> hub -> the real
OpenAI-compatible engine (a loopback fake model server) -> card created, updated, finalized."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bot.config import Config
from bot.services import Services
from tests.adapters.dingtalk.dingtalk_fake import LIVENESS_S, FakeDingTalk, robot_message, signed_headers
from tests.conftest import start_server
from tests.fakes.openai_server import FakeOpenAI

# The first token is longer than the output filter's streamed hold-back (safety.output.tail_chars), so the card
# shows text while the model is still paused after it.
TOKENS = ["今天北京天气晴朗，白天最高气温十五度左右，夜间最低气温三度，微风，空气质量良好，", "适合出行，",
          "紫外线较弱，", "早晚温差较大，", "请注意添衣保暖，", "出门记得带上外套。"]
QUESTION = "今天天气怎么样"  # far from every FAQ entry, so the engine answers


def card_calls(fake: FakeDingTalk, method: str, path: str) -> list[dict[str, Any]]:
    return [body for m, p, body in fake.card_calls if (m, p) == (method, path)]


@pytest.fixture
async def run_llm_hub(
    dingtalk_config: Callable[..., Config], fake_dingtalk: FakeDingTalk
) -> AsyncIterator[Callable[..., Any]]:
    servers: list[TestServer | FakeOpenAI] = []

    async def run(model: FakeOpenAI) -> Services:
        servers.append(await model.start())
        config = dingtalk_config({
            "dingtalk.card_template_id": "tpl-ai.schema",
            "dingtalk.card_update_interval_s": 0,
            "engine.kind": "openai",
            "engine.openai.base_url": model.base_url,
            "engine.openai.retries": 0,
        })
        services = Services(config)
        servers.append(await start_server(config, services))
        message = robot_message("msgLLM01", QUESTION, group=True, webhook=fake_dingtalk.webhook())
        async with aiohttp.ClientSession() as s, s.post(
            servers[-1].make_url("/dingtalk/callback"), json=message, headers=signed_headers()
        ) as r:
            assert r.status == 200
        assert await services.hub.drain(LIVENESS_S)
        return services

    yield run
    for server in reversed(servers):
        await server.close()


async def test_llm_tokens_stream_into_the_card(
    run_llm_hub: Callable[..., Any], fake_dingtalk: FakeDingTalk
) -> None:
    def seen(method: str, path: str) -> Callable[[], bool]:
        return lambda: bool(card_calls(fake_dingtalk, method, path))

    async def pace(i: int) -> None:  # a model slower than DingTalk: the card exists before most tokens
        if i == 1:
            await fake_dingtalk.wait_for(seen("POST", "/v1.0/card/instances/deliver"))
        if i == 4:
            await fake_dingtalk.wait_for(seen("PUT", "/v1.0/card/streaming"))

    model = FakeOpenAI(TOKENS, pace=pace)
    await run_llm_hub(model)
    answer = "".join(TOKENS)
    assert len(model.requests) == 1 and model.requests[0]["stream"] is True
    (delivered,) = card_calls(fake_dingtalk, "POST", "/v1.0/card/instances/deliver")
    assert delivered["openSpaceId"] == "dtv1.card//IM_GROUP.cidGroup123=="
    updates = card_calls(fake_dingtalk, "PUT", "/v1.0/card/streaming")
    assert len(updates) >= 2
    assert all(answer.startswith(u["content"]) and not u["isFinalize"] for u in updates[:-1])
    assert updates[-1]["content"] == answer and updates[-1]["isFinalize"]
    marks = card_calls(fake_dingtalk, "PUT", "/v1.0/card/instances")
    statuses = [b["cardData"]["cardParamMap"]["flowStatus"] for b in marks]
    assert statuses[-1] == "3"
    assert fake_dingtalk.webhook_calls == []  # the card is the answer; no duplicate message


async def test_an_engine_failure_mid_answer_replaces_the_half_answer(
    run_llm_hub: Callable[..., Any], fake_dingtalk: FakeDingTalk
) -> None:
    async def pace(i: int) -> None:
        if i == 1:
            await fake_dingtalk.wait_for(lambda: bool(card_calls(fake_dingtalk, "PUT", "/v1.0/card/streaming")))

    model = FakeOpenAI(TOKENS, pace=pace, script=["error:3"])
    await run_llm_hub(model)
    final = card_calls(fake_dingtalk, "PUT", "/v1.0/card/streaming")[-1]
    # the answerer fell back (apology or FAQ); the card ends with that text, not the half answer
    assert final["isFinalize"] and final["content"]
    half = "".join(TOKENS[:3])
    assert half not in final["content"] and final["content"] != "".join(TOKENS)
    shown = [c["content"] for c in card_calls(fake_dingtalk, "PUT", "/v1.0/card/streaming")[:-1]]
    assert any(c and half.startswith(c) for c in shown)  # the half answer was streamed (less the held-back tail)
    assert fake_dingtalk.webhook_calls == []
