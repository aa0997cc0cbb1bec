"""End to end: a conversation full of personal data leaves none of it behind, in Redis, a log or a team notice.

A real app with its state in a real Redis runs two customers: one on ``/chat`` (phone, e-mail, an ID, a bank
card, a landline; a refund that collects the order number; a handoff that notifies a loopback webhook
standing in for the team's ticket system; an agent's reply that quotes the phone back) and one on the web
widget (the same kinds, other spellings: +86 and groups, full-width digits, a lower-case x; a thumbs-down).
The log is captured at DEBUG through the filter ``serve`` installs; then every key under the test's prefix
is read whatever its type (strings, hashes, lists, sets, sorted sets, streams), and with the notice must
hold none of the data, as written or as bare digits. What the dialogue needs stays: the order number is in
the conversation's slots (only there, in the state, for the idle TTL) and in the notice the agent reads.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import unicodedata
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.app import SERVICES_KEY
from bot.config import Config
from bot.logsafe import SecretFilter
from bot.privacy.logfilter import PiiFilter
from bot.types import ConversationRef
from tests.conftest import make_config, start_server

ADMIN = "capture-admin-token-0123456789"
SESSION_SECRET = "capture-session-secret-0123456789"
ORDER = "YD2405120001"
# (as the customer writes it, the bare form that must not appear either)
CHAT_PII = {
    "mobile": ("13812345678", "13812345678"),
    "email": ("zhang.san@example.com", "zhang.san@example.com"),
    "id": ("11010519491231002X", "11010519491231002X"),
    "card": ("6222 0212 3456 7890 128", "6222021234567890128"),
    "landline": ("010-62345678转8", "01062345678"),
}
WEB_PII = {
    "mobile": ("+86 139-8765-4321", "13987654321"),
    "id": ("440305 19820101 000x", "44030519820101000X"),
    "card": ("４５３９１４８８０３４３６４６７", "4539148803436467"),
    "email": ("Li.Si@Mail.Example.CN", "li.si@mail.example.cn"),
}


class Hook:
    """Loopback receiver for the handoff webhook (the team's ticket system)."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(await request.json())
        return web.json_response({"ok": True})


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    h = Hook()
    app = web.Application()
    app.router.add_post("/hook", h.handle)
    h.server = TestServer(app, host="127.0.0.1")
    await h.server.start_server()
    yield h
    await h.server.close()


@pytest.fixture
def log_text() -> AsyncIterator[io.StringIO]:
    """The root log at DEBUG through the filters ``serve`` installs (bot/__main__.py ``_logging``)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(SecretFilter([ADMIN, SESSION_SECRET]))
    handler.addFilter(PiiFilter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield out
    root.removeHandler(handler)
    root.setLevel(level)


def _config(redis_url: str, key_prefix: str, hook: Hook) -> Config:
    assert hook.server is not None
    return make_config({"state.url": redis_url, "state.key_prefix": key_prefix, "admin.token": ADMIN,
                        "web.session_secret": SESSION_SECRET,
                        "dialogue.handoff_webhook_url": str(hook.server.make_url("/hook"))})


async def _chat(http: aiohttp.ClientSession, server: TestServer, user: str, query: str) -> dict[str, Any]:
    async with http.post(server.make_url("/chat"), json={"query": query, "user_id": user}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def _widget_say(http: aiohttp.ClientSession, server: TestServer, token: str, text: str) -> str:
    client_id = uuid.uuid4().hex
    headers = {"Authorization": f"Bearer {token}"}
    async with http.post(server.make_url("/api/web/messages"), json={"text": text, "client_id": client_id},
                         headers=headers) as resp:
        assert resp.status == 202, await resp.text()
    for _ in range(200):  # until the answer is in (the widget would be told on its SSE stream)
        async with http.get(server.make_url("/api/web/history"), headers=headers) as resp:
            history = await resp.json()
        if client_id not in history["pending"]:
            return client_id
        await asyncio.sleep(0.05)
    raise AssertionError("the widget's message was not answered")


async def _dump(client: aioredis.Redis, key_prefix: str) -> dict[str, str]:
    """Every key under the prefix and all it holds, as text."""
    out: dict[str, str] = {}
    async for raw_key in client.scan_iter(match=f"{key_prefix}*", count=500):
        key = raw_key.decode()
        kind = (await client.type(raw_key)).decode()
        if kind == "string":
            parts: list[Any] = [await client.get(raw_key)]
        elif kind == "hash":
            parts = [x for kv in (await client.hgetall(raw_key)).items() for x in kv]
        elif kind == "list":
            parts = await client.lrange(raw_key, 0, -1)
        elif kind == "set":
            parts = list(await client.smembers(raw_key))
        elif kind == "zset":
            parts = [m for m, _ in await client.zrange(raw_key, 0, -1, withscores=True)]
        elif kind == "stream":
            parts = [x for _, fields in await client.xrange(raw_key) for kv in fields.items() for x in kv]
        else:
            raise AssertionError(f"{key}: a key of type {kind} this test does not read")
        out[key] = " ".join(p.decode("utf-8", "replace") if isinstance(p, bytes) else str(p) for p in parts)
    return out


def _leaks(where: str, text: str, pii: dict[str, tuple[str, str]]) -> list[str]:
    """The kinds of personal data found in ``text``, as written or bare (NFKC, separators dropped)."""
    plain = unicodedata.normalize("NFKC", text)
    bare = re.sub(r"[\s\-.()+\u200b]", "", plain).upper()
    found = []
    for kind, (written, compact) in pii.items():
        if written in text or compact.upper() in bare or compact.lower() in plain.lower():
            found.append(f"{where}: {kind}")
    return found


async def test_a_conversation_full_of_personal_data_leaves_none_behind(
    redis_url: str, key_prefix: str, hook: Hook, log_text: io.StringIO
) -> None:
    server = await start_server(_config(redis_url, key_prefix, hook))
    client = aioredis.from_url(redis_url)
    user = f"cust-{uuid.uuid4().hex[:12]}"
    try:
        async with aiohttp.ClientSession() as http:
            mobile, email, rid, card, landline = (CHAT_PII[k][0] for k in ("mobile", "email", "id", "card",
                                                                             "landline"))
            await _chat(http, server, user, f"你好，我的手机号是{mobile}，邮箱 {email}")
            asked = await _chat(http, server, user, "我要退款")
            assert "订单号" in asked["answer"]
            await _chat(http, server, user, f"订单号 {ORDER}，身份证 {rid}")
            await _chat(http, server, user, f"银行卡 {card}，退到这张卡")
            handed = await _chat(http, server, user, f"转人工，我的座机 {landline}")
            assert handed["answer"]
            await _chat(http, server, user, f"再说一次手机 {mobile}")  # while a person has it: recorded only
            async with http.post(server.make_url("/api/agent/reply"), headers={"Authorization": f"Bearer {ADMIN}"},
                                 json={"channel": "api", "user_id": user,
                                       "text": f"已为您登记手机 {mobile}，退款 3 个工作日内到账"}) as resp:
                assert resp.status == 200, await resp.text()

            async with http.post(server.make_url("/api/web/session"), json={}) as resp:
                token = (await resp.json())["token"]
            w_mobile, w_id, w_card, w_email = (WEB_PII[k][0] for k in ("mobile", "id", "card", "email"))
            first = await _widget_say(http, server, token, f"我的手机 {w_mobile}，邮箱 {w_email}")
            await _widget_say(http, server, token, f"身份证 {w_id}，卡号 {w_card}，怎么修改绑定的手机号？")
            async with http.post(server.make_url("/api/web/feedback"), headers={"Authorization": f"Bearer {token}"},
                                 json={"answer_id": first, "rating": "down"}) as resp:
                assert resp.status == 200, await resp.text()
            async with http.get(server.make_url("/api/web/history"),
                                headers={"Authorization": f"Bearer {token}"}) as resp:
                reloaded = await resp.json()
            await asyncio.sleep(0.2)  # the feedback event's turn

        stored = await _dump(client, key_prefix)
        services = server.app[SERVICES_KEY]
        state = await services.store.load(ConversationRef("api", user, user).key)
    finally:
        await server.close()
        await client.aclose()

    everything = {**CHAT_PII, **{f"web {k}": v for k, v in WEB_PII.items()}}
    leaks = [leak for key, value in stored.items() for leak in _leaks(key, value, everything)]
    leaks += _leaks("log", log_text.getvalue(), everything)
    assert len(hook.received) == 1, "one handoff, one notice"
    notice = hook.received[0]["title"] + "\n" + hook.received[0]["text"]
    leaks += _leaks("notice", notice, everything)
    assert not leaks, leaks

    # What the dialogue needs is kept, only in the state's slots and for the agent.
    assert state.slots.get("order_id") == ORDER
    assert ORDER in notice and "[身份证号]" in notice and "[银行卡号]" in notice, notice
    assert any(f"{key_prefix}:state:" in key and ORDER in value for key, value in stored.items())
    assert sum(ORDER in value for value in stored.values()) == 1 + sum(
        ORDER in value for key, value in stored.items() if ":state:" not in key)
    assert any("[手机号]" in t.text for t in state.history)  # the record is kept, redacted
    # The widget's reload shows the visitor's words redacted (the tab that sent them shows them as typed).
    users = [m["text"] for m in reloaded["messages"] if m["role"] == "user"]
    assert users and all("[手机号]" in t or "[身份证号]" in t for t in users)
    # A sanity check that the log was captured at all.
    assert "DEBUG" in log_text.getvalue() or "INFO" in log_text.getvalue()
