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

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpenAIConfig(_Section):
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key: str = ""
    model: str = ""
    timeout_s: float = Field(30.0, gt=0)  # connect, first token, and longest gap between chunks
    retries: int = Field(2, ge=0)  # only before the first token; after it a retry would repeat text
    retry_backoff_s: float = Field(0.5, ge=0)  # doubles per attempt; Retry-After wins when larger


_AB_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
AB_ID_MAX = 64  # "<test>/<arm>" is what the archive's ``arm`` column (64 characters) keeps


class AbArm(_Section):
    """One arm: a LoRA adapter named in ``engine.adapters``, or the base model (``adapter: null``)."""

    name: str
    adapter: str | None = None
    weight: float = Field(gt=0)  # relative: weights 7 and 3 are 70 % and 30 %

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _AB_NAME.match(value):
            raise ValueError("use lower-case letters, digits, '_', '-' or '.' (it is a metric label and archived)")
        return value


class AbTest(_Section):
    """An online A/B test: every user (channel, tenant, user id) lands in one arm by a hash of the test's name
    and the user, so the same customer keeps the same arm across conversations, processes and restarts.
    The first arm is the control the others are compared with (``python -m bot ab-report``)."""

    name: str
    arms: list[AbArm] = Field(min_length=2)
    enabled: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _AB_NAME.match(value):
            raise ValueError("use lower-case letters, digits, '_', '-' or '.' (it is a metric label and archived)")
        return value

    @model_validator(mode="after")
    def _arms(self) -> AbTest:
        names = [arm.name for arm in self.arms]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"A/B test {self.name!r}: arm names must be unique ({', '.join(twice)} twice)")
        for arm in self.arms:
            if len(self.name) + 1 + len(arm.name) > AB_ID_MAX:
                raise ValueError(f"A/B test {self.name!r} arm {arm.name!r}: '<test>/<arm>' is longer than "
                                 f"{AB_ID_MAX} characters")
        return self


class RerankerConfig(_Section):
    """A cross-encoder (a sequence-classification checkpoint such as bge-reranker-base) that scores (question,
    FAQ entry) pairs: it knows that 叫同事来注册 is about inviting friends, which shared characters cannot.
    ``path`` empty: FAQ matching stays lexical. Relative paths are resolved against the caller's base dir."""

    path: str = ""
    device: str = "auto"  # auto: CUDA when available
    dtype: str = "auto"  # auto: fp16 on CUDA, fp32 on CPU
    max_length: int = Field(256, gt=8, le=4096)  # tokens of one (question, entry) pair
    batch_size: int = Field(16, gt=0)  # pairs per forward pass
    torch_threads: int = Field(0, ge=0)  # on CPU: intra-op threads, 0 = torch's default


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
    # Online A/B tests of adapters (bot/ab.py). At most one enabled at a time: a turn has one adapter and the
    # archive one arm, so two tests changing the adapter at once would confound each other's results.
    ab_tests: list[AbTest] = []

    @model_validator(mode="after")
    def _ab_tests(self) -> EngineConfig:
        seen: set[str] = set()
        for test in self.ab_tests:
            if test.name in seen:
                raise ValueError(f"A/B test names must be unique: {test.name!r} twice")
            seen.add(test.name)
            for arm in test.arms:
                if arm.adapter is not None and arm.adapter not in self.adapters:
                    known = ", ".join(sorted(self.adapters)) or "none"
                    raise ValueError(f"A/B test {test.name!r} arm {arm.name!r}: adapter {arm.adapter!r} is not in "
                                     f"engine.adapters (configured: {known}; null is the base model)")
        enabled = [t.name for t in self.ab_tests if t.enabled]
        if len(enabled) > 1:
            raise ValueError(f"at most one A/B test may be enabled at a time; enabled: {', '.join(enabled)}")
        return self

    @property
    def ab_test(self) -> AbTest | None:
        """The enabled A/B test, if any."""
        return next((t for t in self.ab_tests if t.enabled), None)
