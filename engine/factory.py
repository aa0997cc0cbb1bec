"""Choose the engine from ``engine.kind``; cheap to import.

torch, transformers and peft take seconds and a gigabyte to import, and a hub
answering from the FAQ (or through vLLM) needs none of them, so the local
engine's module is imported only when ``kind`` is ``hf``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from engine.base import Engine, EngineError, GenerationRequest
from engine.config import EngineConfig


def open_engine(cfg: EngineConfig, *, base_dir: Path | None = None) -> Engine | None:
    """A new, not yet started engine; None when answers come from the FAQ alone.

    ``base_dir`` is what relative ``model_path`` and ``adapters`` paths are relative
    to (the bot passes its project root); None: the current directory.
    """
    if cfg.kind == "faq":
        return None
    if cfg.kind == "hf":
        try:
            from engine.hf import HFEngine
        except ImportError as exc:  # the llm extra is not installed: fail at start(), like a bad model
            return UnavailableEngine("hf", f"engine.kind=hf needs the llm extra (torch, transformers, peft): {exc}")
        return HFEngine(cfg, base_dir=base_dir)
    if cfg.kind == "openai":
        from engine.remote import RemoteEngine

        return RemoteEngine(cfg)
    raise ValueError(f"engine.kind: unknown engine {cfg.kind!r}")


class UnavailableEngine:
    """An engine that cannot run here; ``start()`` raises so the hub falls back to the FAQ as for a load failure."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason

    async def start(self) -> None:
        raise EngineError(self.reason)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        raise EngineError(self.reason)
        yield ""  # pragma: no cover - makes this an async generator like the real engines

    async def ready(self) -> bool:
        return False

    async def close(self) -> None:
        return None
