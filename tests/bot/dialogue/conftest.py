"""Fixtures for the dialogue tests: a running hub with the admin API and a
loopback webhook receiver."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import make_config, start_server

from .helpers import ADMIN_TOKEN, Admin, Webhook


@pytest.fixture
async def webhook() -> AsyncIterator[Webhook]:
    hook = Webhook()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    hook.server = TestServer(app, host="127.0.0.1")
    await hook.server.start_server()
    yield hook
    await hook.server.close()


@pytest.fixture
async def server(webhook: Webhook) -> AsyncIterator[TestServer]:
    """The default configuration (memory state) with the admin API and the webhook on; agents on duty
    around the clock, so what a waiting customer hears does not depend on when the tests run
    (tests/bot/dialogue/test_handoff_care.py checks the hours with a fake clock)."""
    always = {f"handoff.hours.{day}": "00:00-24:00" for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
    srv = await start_server(make_config({"admin.token": ADMIN_TOKEN, "dialogue.handoff_webhook_url": webhook.url,
                                          **always}))
    yield srv
    await srv.close()


@pytest.fixture
def admin(http: aiohttp.ClientSession, server: TestServer) -> Admin:
    return Admin(http, server)

