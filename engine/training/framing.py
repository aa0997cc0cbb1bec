"""One record, one prompt: shared by training (``sft.py``) and evaluation (``evaluate.py``).

A model learns the prompt shape it is trained on, so an adapter trained on one framing and served with
another loses much of what it learned. The framing is therefore a function the caller passes (the bot
passes the one ``bot/answer.py`` serves with), and both sides run it through ``engine.prompt.normalize``,
which is what the engine applies to every request (one system message, template control tokens broken).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from engine import prompt as prompts
from engine.base import ChatMessage


class TrainRecord(Protocol):
    """``bot.learning.clean.Record`` fits; the engine does not import it."""

    @property
    def query(self) -> str: ...

    @property
    def response(self) -> str: ...

    @property
    def context(self) -> str: ...


Framer = Callable[[str, str], list[ChatMessage]]  # (query, context) -> the prompt's messages, no answer


def default_framer(system_prompt: str) -> Framer:
    """System prompt, then the user turn: the context (when there is one) as labelled reference text first."""

    def frame(query: str, context: str) -> list[ChatMessage]:
        user = f"参考信息：\n{context.strip()}\n\n{query}" if context.strip() else query
        return [ChatMessage("system", system_prompt), ChatMessage("user", user)]

    return frame


def prompt_messages(framer: Framer, record: TrainRecord) -> list[dict[str, str]]:
    """The prompt as the engine would render it (after ``normalize``)."""
    return prompts.normalize(framer(record.query, record.context or ""))


def completion_messages(record: TrainRecord) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": prompts.literal_turn(record.response)}]
