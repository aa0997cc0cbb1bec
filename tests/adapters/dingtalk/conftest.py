"""Fixtures for the DingTalk tests: the loopback fake platform and configs pointing at it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.config import Config
from tests.adapters.dingtalk.dingtalk_fake import APP_KEY, APP_SECRET, FakeDingTalk
from tests.conftest import make_config


@pytest.fixture
def dingtalk_config(
    redis_url: str, key_prefix: str, redis_client: aioredis.Redis, fake_dingtalk: FakeDingTalk
) -> Callable[..., Config]:
    """Config factory: Redis state with this test's prefix, DingTalk pointed at the fake."""

    def build(overrides: dict[str, Any] | None = None) -> Config:
        return make_config({
            "state.url": redis_url,
            "state.key_prefix": key_prefix,
            "dingtalk.app_key": APP_KEY,
            "dingtalk.app_secret": APP_SECRET,
            "dingtalk.api_base": fake_dingtalk.url,
            "dingtalk.webhook_hosts": "[oapi.dingtalk.com, 127.0.0.1]",
            **(overrides or {}),
        })

    return build
