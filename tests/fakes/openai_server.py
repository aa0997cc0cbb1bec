"""One loopback fake of an OpenAI-compatible chat-completions server (an external API),
shared by every test that needs "the model". It streams server-sent events the way real
servers do (a leading comment, CRLF and LF line ends, a finish chunk, ``[DONE]``).

Each POST /v1/chat/completions takes the next step from ``script`` (the last one repeats):

* ``"ok"``      stream ``tokens``;
* ``"503"``     (any number, or an int) answer that HTTP status with a JSON error;
* ``"hang"``    say nothing for ``hang_s`` before answering (then stream as ``"ok"``);
* ``"stall:K"`` stream K tokens, then go quiet for ``hang_s`` before the rest;
* ``"break:K"`` stream K tokens, then drop the connection;
* ``"error:K"`` stream K tokens, then an in-band ``{"error": ...}`` event, and end.

With ``echo`` every answer is ``答：<the last user message>#<request number>``, so a test can tell
which question an answer belongs to and whether it was generated once. With ``echo_prompt`` (a model
talked into repeating its instructions) every answer is the whole prompt as it was sent, system
message first (``role: content`` lines), streamed ``piece_chars`` characters at a time.

``delay`` (seconds) and ``pace(i)`` (awaited) run before each token ``i``. Every request's
JSON body and headers are recorded; ``disconnected`` is set when a client goes away mid-stream.

    async with FakeOpenAI(["你好", "。"], script=["503", "ok"]) as llm:
        ... llm.base_url ... llm.requests ...
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

TOKENS = ("您好，", "订单", "已发货", "。")


class FakeOpenAI:
    def __init__(
        self,
        tokens: Sequence[str] = TOKENS,
        *,
        script: Sequence[str | int] = ("ok",),
        delay: float = 0.0,
        pace: Callable[[int], Awaitable[Any]] | None = None,
        hang_s: float = 30.0,
        model: str = "fake",
        echo: bool = False,
        echo_prompt: bool = False,
        piece_chars: int = 3,
    ) -> None:
        self.echo_prompt = echo_prompt  # answer each request with its whole prompt, system prompt included
        self.piece_chars = piece_chars
        self.echo = echo  # answer each request with the last user message (so every answer names its question)
        self.tokens = list(tokens)
        self.script = list(script)
        self.delay = delay
        self.pace = pace
        self.hang_s = hang_s
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.headers: list[Any] = []  # case-insensitive CIMultiDicts
        self.disconnected = asyncio.Event()
        self.server: TestServer | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None, "start() the fake first"
        return str(self.server.make_url("/v1"))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    async def start(self) -> FakeOpenAI:
        self.server = TestServer(self.app(), host="127.0.0.1")
        await self.server.start_server()
        return self

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    async def __aenter__(self) -> FakeOpenAI:
        return await self.start()

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def _models(self, _request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(await request.json())
        self.headers.append(request.headers.copy())
        step = str(self.script[min(len(self.requests), len(self.script)) - 1])
        if step.isdigit():
            return web.json_response({"error": {"message": "busy"}}, status=int(step))
        mode, _, k = step.partition(":")
        after = int(k) if k else None
        if mode == "hang":
            await asyncio.sleep(self.hang_s)
        tokens = self.tokens
        if self.echo:
            asked = [m["content"] for m in self.requests[-1]["messages"] if m.get("role") == "user"]
            tokens = ["答：", asked[-1] if asked else "", f"#{len(self.requests)}"]
        if self.echo_prompt:
            prompt = "\n".join(f"{m.get('role')}: {m.get('content')}" for m in self.requests[-1]["messages"])
            tokens = [prompt[i : i + self.piece_chars] for i in range(0, len(prompt), self.piece_chars)]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            await resp.write(b": keep-alive comment\r\n\r\n")
            for i, token in enumerate(tokens):
                if i == after:
                    if mode == "break":
                        request.transport.close()  # type: ignore[union-attr]
                        return resp
                    if mode == "error":
                        await resp.write(b'data: {"error": {"message": "CUDA out of memory"}}\n\n')
                        return resp
                    if mode == "stall":
                        await asyncio.sleep(self.hang_s)
                if self.delay:
                    await asyncio.sleep(self.delay)
                if self.pace is not None:
                    await self.pace(i)
                chunk = {"choices": [{"index": 0, "delta": {"content": token}, "finish_reason": None}]}
                await resp.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\r\n\r\n".encode())
            await resp.write(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
            await resp.write(b"data: [DONE]\n\n")
        except ConnectionError:
            self.disconnected.set()
        except asyncio.CancelledError:  # aiohttp cancels the handler when the client goes away
            self.disconnected.set()
            raise
        return resp
