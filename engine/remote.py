"""Remote engine: any OpenAI-compatible chat server (vLLM, SGLang, TGI, a hosted API) over streaming HTTP.

Why: on a GPU fleet vLLM's paged attention and continuous batching serve far
more chats than ``generate`` can, and it serves LoRA adapters under their own
model names. So the hub speaks the OpenAI wire format: ``POST
{base_url}/chat/completions`` with ``stream: true``, parsed as server-sent
events, and a request's adapter becomes the ``model`` field.

Retries happen only before the first token (connection errors, 408/429/5xx,
a silent server): after it, retrying would send the customer the beginning of
the answer twice. Timeouts are per read, never around a ``yield``, so a slow
consumer is not mistaken for a slow server.

Errors and log lines name the URL without credentials and aiohttp's errors by
type only: their ``repr()`` carries ``request_info``, headers (the API key) included.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from engine import prompt as prompts
from engine.base import EngineError, GenerationRequest
from engine.batcher import EngineDeadlineExceeded
from engine.config import EngineConfig

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_READY_CACHE_S = 1.0


class _Retryable(Exception):
    """A failure before the first token that another attempt may fix."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RemoteEngine:
    """Engine protocol over an OpenAI-compatible streaming endpoint."""

    name = "openai"

    def __init__(self, cfg: EngineConfig, *, session: aiohttp.ClientSession | None = None) -> None:
        self.cfg = cfg
        self.ocfg = cfg.openai
        self._base = self.ocfg.base_url.rstrip("/")
        self._session = session
        self._own_session = session is None
        self._ready_at = 0.0
        self._ready = False
        self.started = False

    async def start(self) -> None:
        if not self._base.startswith(("http://", "https://")):
            raise EngineError(f"engine.openai.base_url must be http(s)://..., got {_safe_url(self.ocfg.base_url)}")
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.ocfg.timeout_s)
            self._session = aiohttp.ClientSession(timeout=timeout, headers=self._headers())
        self.started = True
        if not await self.ready():  # not fatal: the server may start after the hub
            log.warning("openai engine: %s/models did not answer yet; requests will be tried anyway",
                        _safe_url(self._base))

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None
        self.started = False

    async def ready(self) -> bool:
        """GET /models, cached for a second so a busy hub does not poll the server per turn."""
        if self._session is None:
            return False
        now = time.monotonic()
        if now - self._ready_at < _READY_CACHE_S:
            return self._ready
        try:
            async with asyncio.timeout(min(self.ocfg.timeout_s, 2.0)):
                async with self._session.get(f"{self._base}/models", headers=self._headers()) as resp:
                    ok = resp.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            ok = False
        self._ready, self._ready_at = ok, time.monotonic()
        return ok

    def _hide_key(self, text: str) -> str:
        """A proxy in front of the server may echo the request, Authorization header included."""
        key = self.ocfg.api_key
        return text.replace(key, "***") if key else text

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self.ocfg.api_key:
            headers["Authorization"] = f"Bearer {self.ocfg.api_key}"
        return headers

    def payload(self, request: GenerationRequest) -> dict[str, Any]:
        """The request body; the adapter name is the model name (vLLM serves each LoRA under its own)."""
        cfg = self.cfg
        body: dict[str, Any] = {
            "messages": prompts.normalize(request.messages, cfg.system_prompt),
            "stream": True,
            "max_tokens": request.max_new_tokens or cfg.max_new_tokens,
            "temperature": cfg.temperature if request.temperature is None else request.temperature,
            "top_p": cfg.top_p if request.top_p is None else request.top_p,
        }
        model = request.adapter or self.ocfg.model
        if model:
            body["model"] = model
        if cfg.stop:
            body["stop"] = list(cfg.stop)
        return body

    def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        return self._stream(request)

    async def _stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        if self._session is None:
            raise EngineError("openai engine is not started")
        body = self.payload(request)
        attempts = self.ocfg.retries + 1
        for attempt in range(attempts):
            self._check_deadline(request, "before the request was sent")
            started = False
            try:
                async with contextlib.aclosing(self._attempt(body, request)) as deltas:
                    async for delta in deltas:
                        started = True
                        yield delta
                return
            except EngineError:  # deadline (also a TimeoutError), a 4xx, an error chunk: final
                raise
            except (_Retryable, aiohttp.ClientError, TimeoutError, OSError) as exc:
                if started:
                    raise EngineError(f"openai engine: stream broke after the first token: {type(exc).__name__}"
                                      ) from None
                retry = exc if isinstance(exc, _Retryable) else _Retryable(type(exc).__name__)
            if attempt + 1 >= attempts:
                raise EngineError(f"openai engine: {retry} (after {attempts} attempts)")
            delay = self.ocfg.retry_backoff_s * (2**attempt)
            if retry.retry_after is not None:
                delay = max(delay, min(retry.retry_after, self.ocfg.timeout_s))
            if request.deadline is not None and time.monotonic() + delay >= request.deadline:
                raise EngineDeadlineExceeded(f"openai engine: {retry}; no time left to retry")
            log.info("openai engine: %s; retry %d/%d in %.2f s", retry, attempt + 1, attempts - 1, delay)
            await asyncio.sleep(delay)

    async def _attempt(self, body: dict[str, Any], request: GenerationRequest) -> AsyncIterator[str]:
        """One HTTP exchange; raises _Retryable for anything that failed before the first token."""
        assert self._session is not None
        url = f"{self._base}/chat/completions"
        headers = self._headers()
        if request.request_id:
            headers["X-Request-Id"] = request.request_id  # vLLM and most gateways log it
        try:
            async with asyncio.timeout(self._read_budget(request)):
                resp = await self._session.post(url, json=body, headers=headers)
        except TimeoutError:
            self._check_deadline(request, "while connecting")
            raise _Retryable(f"no response within {self.ocfg.timeout_s:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _Retryable(f"cannot reach {_safe_url(url)}: {type(exc).__name__}") from None
        async with resp:
            if resp.status != 200:
                try:  # an error body is read under the same bound as every other read, and only its start
                    async with asyncio.timeout(self._read_budget(request)):
                        raw = await resp.content.read(300)
                except (TimeoutError, aiohttp.ClientError):
                    raw = b""
                text = self._hide_key(raw.decode("utf-8", errors="replace"))
                message = f"HTTP {resp.status} from {_safe_url(url)}: {text}"
                if resp.status in RETRY_STATUS:
                    raise _Retryable(message, _retry_after(resp.headers.get("Retry-After")))
                raise EngineError(f"openai engine: {message}")
            async with contextlib.aclosing(_sse_events(resp.content)) as events:
                async for delta in self._deltas(events, request):
                    yield delta

    async def _deltas(self, events: AsyncIterator[str], request: GenerationRequest) -> AsyncIterator[str]:
        """Text deltas from SSE data, with the read timeout applied to each event, never to a yield."""
        first = True
        while True:
            try:
                async with asyncio.timeout(self._read_budget(request)):
                    data = await anext(events, None)
            except TimeoutError:
                self._check_deadline(request, "while generating")
                if first:
                    raise _Retryable(f"no token within {self.ocfg.timeout_s:g} s") from None
                raise EngineError(f"openai engine: stream stalled for {self.ocfg.timeout_s:g} s") from None
            except (aiohttp.ClientError, OSError) as exc:
                if first:
                    raise _Retryable(f"stream broke before the first token: {type(exc).__name__}") from None
                raise
            if data is None or data.strip() == "[DONE]":
                return
            delta = _delta(data)
            if delta:
                first = False
                yield delta

    def _read_budget(self, request: GenerationRequest) -> float:
        budget = self.ocfg.timeout_s
        if request.deadline is not None:
            budget = min(budget, max(0.0, request.deadline - time.monotonic()))
        return budget

    @staticmethod
    def _check_deadline(request: GenerationRequest, when: str) -> None:
        if request.deadline is not None and time.monotonic() >= request.deadline:
            raise EngineDeadlineExceeded(f"openai engine: deadline passed {when}")


async def _sse_events(content: aiohttp.StreamReader) -> AsyncIterator[str]:
    """The ``data`` of each server-sent event (multi-line data joined by newlines, comments skipped)."""
    data: list[str] = []
    async for raw in content:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


def _delta(data: str) -> str:
    """The text in one chunk of a chat (or legacy completions) stream; errors in the stream raise."""
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError:
        raise EngineError(f"openai engine: malformed stream chunk {data[:200]!r}") from None
    if not isinstance(chunk, dict):
        return ""
    if "error" in chunk:
        raise EngineError(f"openai engine: server error in stream: {chunk['error']}")
    parts = []
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        text = delta.get("content") if isinstance(delta, dict) else None
        if text is None:
            text = choice.get("text")
        if isinstance(text, str):
            parts.append(text)
    return "".join(parts)


def _safe_url(url: str) -> str:
    """``scheme://host:port/path`` for messages: no user-info, query or fragment (a hosted
    gateway may take its key there). ``engine/`` imports nothing from ``bot/``, so this is
    a small copy of ``bot.logsafe.redact_url``."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "***"
    if ":" in host:
        host = f"[{host}]"
    userinfo = "***@" if (parts.username or parts.password) else ""
    query = "?***" if parts.query else ""
    return f"{parts.scheme}://{userinfo}{host}{port}{parts.path}{query}" if parts.scheme else "***"


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
