"""Choose the engine from ``engine.kind``; heavy imports stay lazy."""

from __future__ import annotations

from bot.config import EngineConfig
from engine.base import Engine


def open_engine(cfg: EngineConfig) -> Engine | None:
    if cfg.kind == "faq":
        return None
    if cfg.kind == "hf":
        from engine.hf import HFEngine

        return HFEngine(cfg)
    from engine.remote import RemoteEngine

    return RemoteEngine(cfg)
