"""The engine's own configuration: the ``engine`` section of the bot's config.

It lives here, not in ``bot.config``, so that ``engine/`` imports nothing from
``bot/`` (``tests/test_layering.py``). ``bot.config`` re-exports both models and
nests :class:`EngineConfig` as ``Config.engine``; loading, environment
overrides and error reporting stay there.

Paths in here (``model_path``, ``adapters``) are taken as written: relative
ones are resolved by the engine against the ``base_dir`` its caller passes
(see ``engine.factory.open_engine``), since only the caller knows what they are
relative to.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpenAIConfig(_Section):
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key: str = ""
    model: str = ""
    timeout_s: float = Field(30.0, gt=0)  # connect, first token, and longest gap between chunks
    retries: int = Field(2, ge=0)  # only before the first token; after it a retry would repeat text
    retry_backoff_s: float = Field(0.5, ge=0)  # doubles per attempt; Retry-After wins when larger


class EngineConfig(_Section):
    kind: Literal["faq", "hf", "openai"] = "faq"
    model_path: str = ""
    device: str = "auto"
    dtype: str = "auto"
    quantization: Literal["none", "int8", "nf4"] = "none"
    adapters: dict[str, str] = {}
    system_prompt: str = "你是一名专业、礼貌的客服助手。请用简洁的语言回答用户问题；不确定时请如实说明并建议转人工。"
    max_new_tokens: int = Field(256, gt=0)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    stop: list[str] = []
    batch_window_ms: float = Field(10.0, ge=0)
    max_batch_size: int = Field(16, gt=0)
    queue_max: int = Field(256, gt=0)
    context_tokens: int = Field(2048, gt=0)
    torch_threads: int = Field(0, ge=0)  # hf on CPU: intra-op threads, 0 = torch's default (all cores)
    openai: OpenAIConfig = OpenAIConfig()
