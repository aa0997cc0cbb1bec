"""Fixtures shared by the channel tests: the loopback fake DingTalk platform."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestServer

from tests.adapters.dingtalk.dingtalk_fake import FakeDingTalk


@pytest.fixture
async def fake_dingtalk() -> AsyncIterator[FakeDingTalk]:
    fake = FakeDingTalk()
    fake.server = TestServer(fake.app(), host="127.0.0.1")
    await fake.server.start_server()
    yield fake
    await fake.server.close()
