"""Fixtures for the agent console's end-to-end tests: accounts, a real hub with Redis and the fake WeCom API, Chromium.

The hub is the whole app (``create_app``) on a loopback port with its state in the shared Redis under the test's own
key prefix, the WeCom app channel pointed at the loopback fake (tests/adapters/wecom/fake_wecom.py), the dialogue
graph on, service hours round the clock (a handoff must behave the same at 3 a.m. as at noon) and the archive in a
SQLite file of the test. Chromium is Debian's ``/usr/bin/chromium`` driven by Playwright, as for the web widget.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import os
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
import yaml
from aiohttp.test_utils import TestServer

from bot.config import ROOT, Config
from bot.services import Services
from tests.adapters.wecom.fake_wecom import FakeWecom, Sender, new_aes_key, text_xml
from tests.conftest import make_config, start_server

CORP_ID = "ww0123456789abcdef"
TOKEN = "kefuToken"
SECRET = "app-secret"
AGENT_ID = 1000002
WEB_SECRET = "console-test-secret-0123456789abcdef"

CHROMIUM = os.environ.get("KEFU_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@dataclass(frozen=True)
class Account:
    name: str
    password: str
    role: str
    display: str


WANG = Account("wang", "wang-pass-2024", "agent", "小王")
LI = Account("li", "li-pass-20240", "agent", "小李")
BOSS = Account("boss", "boss-pass-2024", "admin", "管理员")
ACCOUNTS = (WANG, LI, BOSS)

FAQ = yaml.safe_load((ROOT / "config" / "faq.yaml").read_text(encoding="utf-8"))
RESET_ID = "account-reset-password"
RESET_QUESTION = "如何重置密码？"
RESET_ANSWER = next(e["answer"] for e in FAQ["entries"] if e["id"] == RESET_ID)


async def eventually(check: Callable[[], Any], *, within_s: float = 15.0, what: str = "the condition") -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy; the bound only stops a broken test."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: not seen within {within_s} s")
        await asyncio.sleep(0.05)


@pytest.fixture
def agents_path(tmp_path: Path) -> Path:
    """Two agents and one admin, written through the console's own account store (argon2 hashes, mode 0600)."""
    from bot.console.accounts import Accounts

    path = tmp_path / "agents.yaml"
    accounts = Accounts(path)
    for a in ACCOUNTS:
        accounts.add(a.name, a.password, role=a.role, display=a.display)  # type: ignore[arg-type]
    return path


@pytest.fixture
def faq_copy(tmp_path: Path) -> Path:
    """The real FAQ in a file of the test's own: curation must never touch the checkout's config/faq.yaml."""
    path = tmp_path / "faq.yaml"
    shutil.copyfile(ROOT / "config" / "faq.yaml", path)
    return path


@pytest.fixture
async def fake_wecom() -> AsyncIterator[FakeWecom]:
    fake = FakeWecom()
    fake.server = TestServer(fake.app(), host="127.0.0.1")
    await fake.server.start_server()
    yield fake
    if fake.send_gate is not None:
        fake.send_gate.set()
    await fake.server.close()


def sent_to(fake: FakeWecom, user: str) -> list[str]:
    """Every text the hub sent to one WeCom user through message/send, in order."""
    out = []
    for call in fake.sends:
        body = call.body or {}
        if body.get("touser") != user:
            continue
        out.append(body["text"]["content"] if body.get("msgtype") == "text" else body["markdown"]["content"])
    return out


@dataclass
class ConsoleHub:
    """One running hub process (a gateway that also answers), how WeCom reaches it, and what it sent."""

    server: TestServer
    services: Services
    config: Config
    sender: Sender
    http: aiohttp.ClientSession
    fake: FakeWecom
    msg_ids: itertools.count = field(default_factory=lambda: itertools.count(700001))

    @property
    def base(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def url(self, path: str) -> str:
        return self.base + path

    async def say(self, user: str, text: str) -> None:
        """The customer ``user`` writes ``text`` in the WeCom app: an encrypted, signed callback, as WeCom sends."""
        params, body = self.sender.app_post(text_xml(user, text, str(next(self.msg_ids))))
        async with self.http.post(self.url("/wecom/callback"), params=params, data=body.encode()) as resp:
            await resp.read()
            assert resp.status == 200, resp.status

    async def settle(self) -> None:
        """Wait until every accepted message is answered."""
        assert await self.services.hub.drain(30)

    def sent(self, user: str) -> list[str]:
        return sent_to(self.fake, user)

    async def received(self, user: str, expected: str, *, within_s: float = 15.0) -> str:
        """Wait until the fake WeCom got a text for ``user`` containing ``expected``; returns that text."""
        return await eventually(lambda: next((t for t in self.sent(user) if expected in t), None),
                                within_s=within_s, what=f"a WeCom send to {user} with {expected!r}")


ConsoleHubFactory = Callable[..., Awaitable[ConsoleHub]]


@pytest.fixture
async def console_hub(
    fake_wecom: FakeWecom, redis_url: str, key_prefix: str, redis_client: aioredis.Redis,
    agents_path: Path, faq_copy: Path, tmp_path: Path,
) -> AsyncIterator[ConsoleHubFactory]:
    """Start hubs (each one a gateway process running turns too) sharing the test's Redis prefix, WeCom app,
    accounts and archive; overrides are dotted config keys. Request it before ``browser`` so the browser, and
    its open event streams, close first."""
    del redis_client  # requested so the test's keys are removed afterwards
    aes = new_aes_key()
    started: list[ConsoleHub] = []
    session = aiohttp.ClientSession()
    msg_ids = itertools.count(700001)
    hours = {f"handoff.hours.{d}": "00:00-24:00" for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}

    async def start(overrides: dict[str, Any] | None = None) -> ConsoleHub:
        values: dict[str, Any] = {
            "state.url": redis_url, "state.key_prefix": key_prefix,
            "wecom.corp_id": CORP_ID, "wecom.token": TOKEN, "wecom.aes_key": aes, "wecom.secret": SECRET,
            "wecom.agent_id": AGENT_ID, "wecom.api_base": fake_wecom.url, "wecom.replay_window_s": 0,
            "wecom.retry_backoff_s": 0.01,
            "web.session_secret": WEB_SECRET,
            "dialogue.enabled": "true",
            "faq.path": str(faq_copy),
            "console.enabled": "true", "console.agents_path": str(agents_path), "console.faq_poll_s": 0.5,
            "archive.enabled": "true", "archive.url": f"sqlite:///{tmp_path}/archive.db",
            "archive.flush_interval_s": 0.1,
            **hours,
        }
        values.update(overrides or {})
        config = make_config({k: v for k, v in values.items() if v is not None})  # None: keep the default
        services = Services(config)
        server = await start_server(config, services)
        hub = ConsoleHub(server, services, config, Sender(TOKEN, aes, CORP_ID), session, fake_wecom, msg_ids)
        started.append(hub)
        return hub

    yield start
    for hub in reversed(started):
        await hub.server.close()
    await session.close()


@pytest.fixture
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"!!! BROWSER TEST SKIPPED: {CHROMIUM} is missing. Run `bash scripts/browser-deps.sh` "
                    "(apt-get install chromium fonts-noto-cjk; `make test` does it) to test the agent console !!!")
    return CHROMIUM


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Any]:
    """Request it after ``console_hub``: it then closes first, so no open event stream holds the server's shutdown."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("!!! BROWSER TEST SKIPPED: the playwright package is missing (pip install -e '.[dev]') !!!")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=FLAGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Agent:
    """One signed-in browser context (its own cookie jar: one person at one desk)."""

    ctx: Any
    page: Any
    problems: list[str]
    account: Account


async def sign_in(browser: Any, hub: ConsoleHub, account: Account, **context: Any) -> Agent:
    """Open a fresh context, go to /console (the sign-in form), fill it in and land on the inbox."""
    context.setdefault("viewport", {"width": 1280, "height": 800})
    ctx = await browser.new_context(locale="zh-CN", base_url=hub.base, **context)
    page = await ctx.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

    def console_error(msg: Any) -> None:  # a CSP violation or a script error; refused calls (409, 401) are expected
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            problems.append(f"console: {msg.text}")

    page.on("console", console_error)

    async def accept(dialog: Any) -> None:  # a confirm() before release, if the page asks
        await dialog.accept()

    page.on("dialog", accept)
    await page.goto("/console")
    await page.wait_for_url(re.compile(r"/console/login"), timeout=10_000)
    await page.fill("form#login input[name=name]", account.name)
    await page.fill("form#login input[name=password]", account.password)
    await page.click("form#login button[type=submit]")
    await page.wait_for_url(re.compile(r"/console/inbox"), timeout=10_000)
    return Agent(ctx, page, problems, account)


async def session_keys(redis: aioredis.Redis, prefix: str) -> list[str]:
    return [k async for k in redis.scan_iter(match=f"{prefix}:console:session:*") if not k.endswith(":ended")]
