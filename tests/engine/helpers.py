"""Small helpers shared by the engine tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from engine.base import ChatMessage, GenerationRequest

SYSTEM = "你是一名专业、礼貌的客服助手。"


def ask(text: str, adapter: str | None = None, **kwargs: Any) -> GenerationRequest:
    return GenerationRequest(
        messages=(ChatMessage("system", SYSTEM), ChatMessage("user", text)), adapter=adapter, **kwargs
    )


async def until(cond: Callable[[], bool], limit: float = 10.0) -> bool:
    """Wait for a condition that another thread makes true; the limit only bounds a broken test."""
    async with asyncio.timeout(limit):
        while True:
            if cond():
                return True
            await asyncio.sleep(0.005)
