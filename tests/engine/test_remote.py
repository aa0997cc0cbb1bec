"""RemoteEngine against a loopback fake OpenAI-compatible server that streams server-sent events."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.config import EngineConfig, OpenAIConfig
from engine.base import ChatMessage, EngineError, GenerationRequest, generate
from engine.batcher import EngineDeadlineExceeded
from engine.remote import RemoteEngine

ANSWER = ["您好，", "订单", "已发货", "。"]


@dataclass
class FakeOpenAI:
    """Each POST takes the next behaviour from ``script`` (the last one repeats)."""

    script: list[str] = field(default_factory=lambda: ["ok"])
    calls: list[dict[str, Any]] = field(default_factory=list)
    headers: list[Any] = field(default_factory=list)  # case-insensitive CIMultiDicts
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "qwen", "object": "model"}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.calls.append(body)
        self.headers.append(request.headers.copy())
        step = self.script[min(len(self.calls) - 1, len(self.script) - 1)]
        if step.isdigit():
            return web.json_response({"error": {"message": "busy"}}, status=int(step))
        if step == "stall":
            await asyncio.sleep(30)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b": keep-alive comment\r\n\r\n")
        pieces = ANSWER if step != "long" else ["字"] * 2000
        try:
            for i, piece in enumerate(pieces):
                chunk = {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                await resp.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\r\n\r\n".encode())
                if step == "break" and i == 1:
                    request.transport.close()  # type: ignore[union-attr]
                    return resp
                if step in ("long", "slow_after_first"):
                    await asyncio.sleep(0.01 if step == "long" else 30)
            await resp.write(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
            await resp.write(b"data: [DONE]\n\n")
        except ConnectionError:
            self.disconnected.set()
        except asyncio.CancelledError:  # aiohttp cancels the handler when the client goes away
            self.disconnected.set()
            raise
        return resp


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeOpenAI, str]]:
    state = FakeOpenAI()
    app = web.Application()
    app.router.add_get("/v1/models", state.models)
    app.router.add_post("/v1/chat/completions", state.chat)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield state, str(server.make_url("/v1"))
    await server.close()


@pytest.fixture
def remote(fake: tuple[FakeOpenAI, str]) -> Callable[..., RemoteEngine]:
    def make(**openai: Any) -> RemoteEngine:
        opts = {"base_url": fake[1], "api_key": "sk-test", "model": "qwen", "timeout_s": 5.0, "retry_backoff_s": 0.01}
        return RemoteEngine(EngineConfig(kind="openai", stop=["用户："], openai=OpenAIConfig(**(opts | openai))))

    return make


def req(adapter: str | None = None, deadline: float | None = None, request_id: str = "") -> GenerationRequest:
    return GenerationRequest(
        messages=(
            ChatMessage("system", "你是客服。"),
            ChatMessage("system", "FAQ: 发货"),
            ChatMessage("user", "发货了吗"),
        ),
        adapter=adapter,
        max_new_tokens=50,
        temperature=0.2,
        deadline=deadline,
        request_id=request_id,
    )


async def test_streams_deltas_and_sends_an_openai_request(fake, remote) -> None:
    state, _ = fake
    engine = remote()
    await engine.start()
    try:
        assert await engine.ready()
        deltas = [d async for d in engine.stream(req(request_id="turn-42"))]
        assert deltas == ANSWER
        body, headers = state.calls[0], state.headers[0]
        assert headers["Authorization"] == "Bearer sk-test" and headers["X-Request-Id"] == "turn-42"
        assert body["model"] == "qwen" and body["stream"] is True
        assert body["max_tokens"] == 50 and body["temperature"] == 0.2 and body["stop"] == ["用户："]
        assert body["messages"] == [
            {"role": "system", "content": "你是客服。\n\nFAQ: 发货"},
            {"role": "user", "content": "发货了吗"},
        ]
    finally:
        await engine.close()


async def test_adapter_name_becomes_the_model(fake, remote) -> None:
    state, _ = fake
    engine = remote()
    await engine.start()
    try:
        await generate(engine, req(adapter="zh-sales"))
        assert state.calls[0]["model"] == "zh-sales"
    finally:
        await engine.close()


async def test_retries_after_503_before_the_first_token(fake, remote) -> None:
    state, _ = fake
    state.script = ["503", "ok"]
    engine = remote(retries=2)
    await engine.start()
    try:
        assert await generate(engine, req()) == "".join(ANSWER)
        assert len(state.calls) == 2
    finally:
        await engine.close()


async def test_gives_up_after_the_configured_retries(fake, remote) -> None:
    state, _ = fake
    state.script = ["503"]
    engine = remote(retries=1)
    await engine.start()
    try:
        with pytest.raises(EngineError, match="503"):
            await generate(engine, req())
        assert len(state.calls) == 2
    finally:
        await engine.close()


async def test_client_errors_are_not_retried(fake, remote) -> None:
    state, _ = fake
    state.script = ["400", "ok"]
    engine = remote(retries=3)
    await engine.start()
    try:
        with pytest.raises(EngineError, match="400"):
            await generate(engine, req())
        assert len(state.calls) == 1
    finally:
        await engine.close()


async def test_timeout_before_the_first_token(fake, remote) -> None:
    state, _ = fake
    state.script = ["stall"]
    engine = remote(timeout_s=0.2, retries=0)
    await engine.start()
    try:
        with pytest.raises(EngineError, match=r"no response|no token"):
            await generate(engine, req())
    finally:
        await engine.close()


async def test_a_silent_server_is_retried(fake, remote) -> None:
    state, _ = fake
    state.script = ["stall", "ok"]
    engine = remote(timeout_s=0.2, retries=1)
    await engine.start()
    try:
        assert await generate(engine, req()) == "".join(ANSWER)
        assert len(state.calls) == 2
    finally:
        await engine.close()


async def test_no_retry_once_text_was_sent(fake, remote) -> None:
    state, _ = fake
    state.script = ["break", "ok"]
    engine = remote(retries=3)
    await engine.start()
    got: list[str] = []
    try:
        with pytest.raises(EngineError, match="after the first token"):
            async for delta in engine.stream(req()):
                got.append(delta)
        assert got == ANSWER[:2] and len(state.calls) == 1
    finally:
        await engine.close()


async def test_stall_after_the_first_token_is_an_error(fake, remote) -> None:
    state, _ = fake
    state.script = ["slow_after_first"]
    engine = remote(timeout_s=0.2, retries=3)
    await engine.start()
    try:
        with pytest.raises(EngineError, match=r"stalled|after the first token"):
            await generate(engine, req())
        assert len(state.calls) == 1
    finally:
        await engine.close()


async def test_deadline_stops_waiting(fake, remote) -> None:
    state, _ = fake
    state.script = ["stall"]
    engine = remote(timeout_s=5.0, retries=3)
    await engine.start()
    try:
        with pytest.raises(EngineDeadlineExceeded):
            await generate(engine, req(deadline=time.monotonic() + 0.2))
    finally:
        await engine.close()


async def test_closing_the_stream_disconnects_from_the_server(fake, remote) -> None:
    state, _ = fake
    state.script = ["long"]
    engine = remote()
    await engine.start()
    try:
        stream = engine.stream(req())
        assert await anext(stream) == "字"
        await stream.aclose()
        await asyncio.wait_for(state.disconnected.wait(), 5)  # the server stops generating for nobody
    finally:
        await engine.close()


async def test_unreachable_server_is_not_ready_and_fails_fast(remote) -> None:
    engine = remote(base_url="http://127.0.0.1:9/v1", retries=1, timeout_s=1.0)
    await engine.start()  # not fatal: the server may come up after the hub
    try:
        assert not await engine.ready()
        with pytest.raises(EngineError, match="cannot reach"):
            await generate(engine, req())
    finally:
        await engine.close()


async def test_bad_base_url_fails_at_start(remote) -> None:
    engine = remote(base_url="ftp://example/v1")
    with pytest.raises(EngineError, match="base_url"):
        await engine.start()


async def test_sse_parsing_handles_multiline_data_comments_and_errors() -> None:
    from engine.remote import _delta, _sse_events

    class Lines:
        def __init__(self, raw: bytes) -> None:
            self._lines = raw.splitlines(keepends=True)

        def __aiter__(self) -> Lines:
            return self

        async def __anext__(self) -> bytes:
            if not self._lines:
                raise StopAsyncIteration
            return self._lines.pop(0)

    raw = (
        b': comment\r\ndata: {"choices":\r\ndata: [{"delta":{"content":"\xe4\xbd\xa0"}}]}\r\n\r\n'
        b"event: x\ndata:[DONE]\n\n"
    )
    events = [e async for e in _sse_events(Lines(raw))]  # type: ignore[arg-type]
    assert events == ['{"choices":\n[{"delta":{"content":"你"}}]}', "[DONE]"]
    assert _delta(events[0]) == "你"
    assert _delta('{"choices":[{"text":"legacy"}]}') == "legacy"
    with pytest.raises(EngineError, match="server error"):
        _delta('{"error":{"message":"model not found"}}')


async def test_deadline_after_the_first_token_is_a_deadline_error(fake, remote) -> None:
    state, _ = fake
    state.script = ["slow_after_first"]
    engine = remote(timeout_s=5.0, retries=3)
    await engine.start()
    got: list[str] = []
    try:
        with pytest.raises(EngineDeadlineExceeded):
            async for delta in engine.stream(req(deadline=time.monotonic() + 0.3)):
                got.append(delta)
        assert got == ANSWER[:1] and len(state.calls) == 1
    finally:
        await engine.close()
