"""RemoteEngine against a loopback fake OpenAI-compatible server that streams server-sent events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from engine.base import ChatMessage, EngineError, GenerationRequest, generate
from engine.batcher import EngineDeadlineExceeded
from engine.config import EngineConfig, OpenAIConfig
from engine.remote import RemoteEngine
from tests.fakes.openai_server import FakeOpenAI

ANSWER = ["您好，", "订单", "已发货", "。"]


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeOpenAI, str]]:
    async with FakeOpenAI(ANSWER, model="qwen") as state:
        yield state, state.base_url


@pytest.fixture
async def remote(fake: tuple[FakeOpenAI, str]) -> AsyncIterator[Callable[..., Awaitable[RemoteEngine]]]:
    """Started engines against the fake, closed when the test ends."""
    engines: list[RemoteEngine] = []

    async def make(**openai: Any) -> RemoteEngine:
        opts = {"base_url": fake[1], "api_key": "sk-test", "model": "qwen", "timeout_s": 5.0, "retry_backoff_s": 0.01}
        engine = RemoteEngine(EngineConfig(kind="openai", stop=["用户："], openai=OpenAIConfig(**(opts | openai))))
        engines.append(engine)
        await engine.start()
        return engine

    yield make
    for engine in engines:
        await engine.close()


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
    engine = await remote()
    assert await engine.ready()
    deltas = [d async for d in engine.stream(req(request_id="turn-42"))]
    assert deltas == ANSWER
    body, headers = state.requests[0], state.headers[0]
    assert headers["Authorization"] == "Bearer sk-test" and headers["X-Request-Id"] == "turn-42"
    assert body["model"] == "qwen" and body["stream"] is True
    assert body["max_tokens"] == 50 and body["temperature"] == 0.2 and body["stop"] == ["用户："]
    assert body["messages"] == [
        {"role": "system", "content": "你是客服。\n\nFAQ: 发货"},
        {"role": "user", "content": "发货了吗"},
    ]


async def test_adapter_name_becomes_the_model(fake, remote) -> None:
    state, _ = fake
    engine = await remote()
    await generate(engine, req(adapter="zh-sales"))
    assert state.requests[0]["model"] == "zh-sales"


async def test_retries_after_503_before_the_first_token(fake, remote) -> None:
    state, _ = fake
    state.script = ["503", "ok"]
    engine = await remote(retries=2)
    assert await generate(engine, req()) == "".join(ANSWER)
    assert len(state.requests) == 2


async def test_gives_up_after_the_configured_retries(fake, remote) -> None:
    state, _ = fake
    state.script = ["503"]
    engine = await remote(retries=1)
    with pytest.raises(EngineError, match="503"):
        await generate(engine, req())
    assert len(state.requests) == 2


async def test_client_errors_are_not_retried(fake, remote) -> None:
    state, _ = fake
    state.script = ["400", "ok"]
    engine = await remote(retries=3)
    with pytest.raises(EngineError, match="400"):
        await generate(engine, req())
    assert len(state.requests) == 1


async def test_timeout_before_the_first_token(fake, remote) -> None:
    state, _ = fake
    state.script = ["hang"]
    engine = await remote(timeout_s=0.2, retries=0)
    with pytest.raises(EngineError, match=r"no response|no token"):
        await generate(engine, req())


async def test_a_silent_server_is_retried(fake, remote) -> None:
    state, _ = fake
    state.script = ["hang", "ok"]
    engine = await remote(timeout_s=0.2, retries=1)
    assert await generate(engine, req()) == "".join(ANSWER)
    assert len(state.requests) == 2


async def test_no_retry_once_text_was_sent(fake, remote) -> None:
    state, _ = fake
    state.script = ["break:2", "ok"]
    engine = await remote(retries=3)
    got: list[str] = []
    with pytest.raises(EngineError, match="after the first token"):
        async for delta in engine.stream(req()):
            got.append(delta)
    assert got == ANSWER[:2] and len(state.requests) == 1


async def test_stall_after_the_first_token_is_an_error(fake, remote) -> None:
    state, _ = fake
    state.script = ["stall:1"]
    engine = await remote(timeout_s=0.2, retries=3)
    with pytest.raises(EngineError, match=r"stalled|after the first token"):
        await generate(engine, req())
    assert len(state.requests) == 1


async def test_deadline_stops_waiting(fake, remote) -> None:
    state, _ = fake
    state.script = ["hang"]
    engine = await remote(timeout_s=5.0, retries=3)
    with pytest.raises(EngineDeadlineExceeded):
        await generate(engine, req(deadline=time.monotonic() + 0.2))


async def test_closing_the_stream_disconnects_from_the_server(fake, remote) -> None:
    state, _ = fake
    state.tokens, state.delay = ["字"] * 2000, 0.01
    engine = await remote()
    stream = engine.stream(req())
    assert await anext(stream) == "字"
    await stream.aclose()
    await asyncio.wait_for(state.disconnected.wait(), 5)  # the server stops generating for nobody


async def test_unreachable_server_is_not_ready_and_fails_fast(remote) -> None:
    engine = await remote(base_url="http://127.0.0.1:9/v1", retries=1, timeout_s=1.0)  # start is not fatal
    assert not await engine.ready()
    with pytest.raises(EngineError, match="cannot reach"):
        await generate(engine, req())


async def test_bad_base_url_fails_at_start(remote) -> None:
    with pytest.raises(EngineError, match="base_url"):
        await remote(base_url="ftp://example/v1")


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
    state.script = ["stall:1"]
    engine = await remote(timeout_s=5.0, retries=3)
    got: list[str] = []
    with pytest.raises(EngineDeadlineExceeded):
        async for delta in engine.stream(req(deadline=time.monotonic() + 0.3)):
            got.append(delta)
    assert got == ANSWER[:1] and len(state.requests) == 1
