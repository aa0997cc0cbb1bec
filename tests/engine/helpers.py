"""Small helpers shared by the engine tests."""

from __future__ import annotations

from typing import Any

from engine.base import ChatMessage, GenerationRequest

SYSTEM = "你是一名专业、礼貌的客服助手。"


def ask(text: str, adapter: str | None = None, **kwargs: Any) -> GenerationRequest:
    return GenerationRequest(
        messages=(ChatMessage("system", SYSTEM), ChatMessage("user", text)), adapter=adapter, **kwargs
    )
