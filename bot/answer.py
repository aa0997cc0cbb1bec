"""Answering policy: FAQ when confident, else the LLM with FAQ context, else a
graceful fallback. Shared by the simple responder and the dialogue graph's
``faq`` and ``llm`` nodes, so degradation behaves the same everywhere."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from bot import messages
from bot.faq import FaqIndex
from bot.metrics import Metrics
from bot.state import HistoryTurn
from engine.base import ChatMessage, Engine, EngineError, GenerationRequest

log = logging.getLogger(__name__)

StreamFn = Callable[[str, str], Awaitable[None]]  # (text_so_far, delta)


async def no_stream(_so_far: str, _delta: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    source: str  # faq | llm | fallback | unknown
    faq_id: str | None = None
    score: float = 0.0
    suggestions: tuple[str, ...] = ()


class Answerer:
    def __init__(
        self,
        faq: FaqIndex,
        engine: Engine | None,
        *,
        system_prompt: str,
        deadline_s: float,
        metrics: Metrics,
        max_context_chars: int = 4000,
    ) -> None:
        self.faq = faq
        self.engine = engine
        self.system_prompt = system_prompt
        self.deadline_s = deadline_s
        self.metrics = metrics
        self.max_context_chars = max_context_chars

    async def answer(
        self,
        query: str,
        *,
        lang: str = "zh",
        history: Sequence[HistoryTurn] = (),
        context: str | None = None,
        instructions: str | None = None,
        adapter: str | None = None,
        stream: StreamFn = no_stream,
        prefer_llm: bool = False,
        faq_context: bool = True,
    ) -> Answer:
        hits = self.faq.search(query, k=3)
        top = hits[0] if hits else None
        confident = top is not None and top.score >= self.faq.threshold
        if confident and (not prefer_llm or self.engine is None):
            assert top is not None
            return self._record(Answer(top.entry.answer, "faq", top.entry.id, top.score))
        if self.engine is not None:
            try:
                knowledge = hits if faq_context else []
                text = await self._generate(query, lang, history, context, instructions, adapter, knowledge, stream)
                if text.strip():
                    return self._record(Answer(text.strip(), "llm"))
                self.metrics.engine_fallbacks.labels("empty").inc()
            except TimeoutError:
                log.warning("engine deadline of %.1fs passed; answering from the FAQ", self.deadline_s)
                self.metrics.engine_fallbacks.labels("deadline").inc()
            except EngineError as exc:
                log.warning("engine unavailable (%s); answering from the FAQ", exc)
                self.metrics.engine_fallbacks.labels("unavailable").inc()
            except Exception:
                log.exception("engine failed; answering from the FAQ")
                self.metrics.engine_fallbacks.labels("error").inc()
            if confident:
                assert top is not None
                return self._record(Answer(top.entry.answer, "fallback", top.entry.id, top.score))
            if top is None or top.score < self.faq.threshold / 2:
                return self._record(Answer(messages.text("apology", lang), "fallback"))
        if top is not None and top.score >= self.faq.threshold / 2:
            suggestions = tuple(h.entry.question for h in hits if h.score >= self.faq.threshold / 2)
            return self._record(Answer(messages.text("unknown_suggest", lang), "unknown", suggestions=suggestions))
        return self._record(Answer(messages.text("unknown", lang), "unknown"))

    def _record(self, answer: Answer) -> Answer:
        self.metrics.answers.labels(answer.source).inc()
        return answer

    async def _generate(self, query, lang, history, context, instructions, adapter, hits, stream) -> str:
        assert self.engine is not None
        system = self.system_prompt
        if instructions:
            system += "\n" + instructions
        if lang == "en":
            system += "\nAnswer in English."
        knowledge = [f"问：{h.entry.question}\n答：{h.entry.answer}" for h in hits if h.score > 0]
        if knowledge:
            system += "\n参考资料（仅在相关时使用）：\n" + "\n\n".join(knowledge)
        if context:
            system += "\n用户当前上下文：" + context[: self.max_context_chars]
        msgs = [ChatMessage("system", system)]
        msgs += [ChatMessage("user" if t.role == "user" else "assistant", t.text) for t in history]
        msgs.append(ChatMessage("user", query))
        request = GenerationRequest(
            messages=tuple(msgs), adapter=adapter, deadline=time.monotonic() + self.deadline_s
        )
        parts: list[str] = []
        started = time.monotonic()
        async with asyncio.timeout(self.deadline_s):
            async for delta in self.engine.stream(request):
                if not parts:
                    self.metrics.engine_ttft.observe(time.monotonic() - started)
                parts.append(delta)
                await stream("".join(parts), delta)
        return "".join(parts)
