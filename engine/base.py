"""The engine protocol the hub talks to, whatever serves the model.

An engine streams text deltas for one request. Batching, adapters and devices
are the engine's business; deadlines are enforced by both sides: the engine
drops requests whose deadline passed, the hub stops waiting at it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


class EngineError(Exception):
    """The engine could not answer (not loaded, overloaded, crashed)."""


class EngineOverloaded(EngineError):
    """The engine's queue is full; the caller should fall back at once."""


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str  # system | user | assistant
    content: str


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    messages: tuple[ChatMessage, ...]
    adapter: str | None = None  # LoRA adapter name; None: the base model
    max_new_tokens: int | None = None  # None: engine default from config
    temperature: float | None = None
    top_p: float | None = None
    deadline: float | None = None  # time.monotonic() after which the answer is useless
    request_id: str = ""


class Engine(Protocol):
    name: str

    async def start(self) -> None:
        """Load the model or open connections; raise EngineError on failure."""

    def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        """Yield text deltas; the concatenation is the answer."""

    async def ready(self) -> bool:
        """Whether a request sent now could be answered."""

    async def close(self) -> None: ...


async def generate(engine: Engine, request: GenerationRequest) -> str:
    """Collect a whole answer from a streaming engine."""
    parts = [delta async for delta in engine.stream(request)]
    return "".join(parts)
