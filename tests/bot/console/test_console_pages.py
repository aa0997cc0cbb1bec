"""The console's pages, JSON calls and event stream over HTTP (no browser: tests/bot/console/test_console_browser.py
drives Chromium). A real hub with its state in Redis, the WeCom app channel on the loopback fake, accounts written
through bot/console/accounts.py (fixtures in tests/bot/console/conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from bot.console import web as console_web

from .conftest import LI, RESET_ID, WANG, Account, ConsoleHub, ConsoleHubFactory, eventually

_CSRF_FIELD = re.compile(r'<input[^>]*name="csrf"[^>]*value="([^"]+)"|<input[^>]*value="([^"]+)"[^>]*name="csrf"')
_CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)"')
NO_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=None)
HTML = {"Accept": "text/html,application/xhtml+xml"}


@asynccontextmanager
async def signed_in(hub: ConsoleHub, account: Account) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """A client signed in through the form, with the session's CSRF token (from the page's meta) for writes."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(hub.url("/console/login")) as resp:
            match = _CSRF_FIELD.search(await resp.text())
        assert match
        form = {"name": account.name, "password": account.password, "csrf": match.group(1) or match.group(2),
                "next": "/console/inbox"}
        async with http.post(hub.url("/console/login"), data=form, allow_redirects=False) as resp:
            assert resp.status == 303, resp.status
        async with http.get(hub.url("/console/inbox")) as resp:
            assert resp.status == 200
            token = _CSRF_META.search(await resp.text())
        assert token
        yield http, token.group(1)


async def handed_off(hub: ConsoleHub, user: str, text: str = "转人工") -> str:
    """The customer asks for a person in WeCom; the conversation's key once it is on the board."""
    await hub.say(user, text)
    await hub.settle()
    rows = await eventually(lambda: _rows_of(hub, user), what=f"{user} in the inbox")
    return rows[0].key


async def _rows_of(hub: ConsoleHub, user: str) -> list[Any]:
    return [r for r in await hub.services.desk.waiting() if r.ref.user_id == user]


def assert_console_headers(resp: aiohttp.ClientResponse) -> None:
    assert resp.headers["Content-Security-Policy"] == console_web.CSP
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    assert "'unsafe-inline'" not in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Referrer-Policy"] == "same-origin"
    assert "no-store" in resp.headers["Cache-Control"]


async def post(http: aiohttp.ClientSession, hub: ConsoleHub, path: str, body: Any, token: str | None,
               **headers: str) -> tuple[int, Any]:
    if token is not None:
        headers["X-CSRF-Token"] = token
    data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    async with http.post(hub.url(path), data=data, headers=headers) as resp:
        text = await resp.text()
        assert resp.content_type == "application/json", (resp.status, text[:200])
        return resp.status, json.loads(text)


async def read_frames(resp: aiohttp.ClientResponse, out: asyncio.Queue[tuple[str, dict[str, Any]]]) -> None:
    """SSE frames as (event, data); the retry line and comments become ("retry", {}) and ("comment", {})."""
    kind, data = "message", []
    while True:
        raw = await resp.content.readline()
        if not raw:
            await out.put(("eof", {}))
            return
        line = raw.decode().rstrip("\r\n")
        if line.startswith("retry:"):
            await out.put(("retry", {"ms": int(line[6:])}))
        elif line.startswith(":"):
            await out.put(("comment", {}))
        elif line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and data:
            await out.put((kind, json.loads("\n".join(data))))
            kind, data = "message", []


async def next_frame(frames: asyncio.Queue[tuple[str, dict[str, Any]]], kind: str) -> dict[str, Any]:
    async with asyncio.timeout(15):  # only stops a broken test
        while True:
            got, data = await frames.get()
            if got == kind:
                return data


# ---------------------------------------------------------------- signed out
async def test_signed_out_pages_go_to_sign_in_and_calls_answer_401(console_hub: ConsoleHubFactory) -> None:
    hub = await console_hub()
    async with aiohttp.ClientSession() as http:
        async with http.get(hub.url("/console"), allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/console/inbox"
        for path in ("/console/inbox", "/console/faq", "/console/dashboard", "/console/c?key=wecom::x"):
            async with http.get(hub.url(path), allow_redirects=False) as resp:
                assert resp.status == 303, path
                assert resp.headers["Location"].startswith("/console/login?next=/console/"), path
        for path in ("/console/api/inbox", "/console/api/c?key=wecom::x", "/console/events"):
            async with http.get(hub.url(path)) as resp:
                assert resp.status == 401 and (await resp.json())["error"] == "signed_out", path
        status, body = await post(http, hub, "/console/api/take", {"key": "wecom::x"}, "forged")
        assert status == 401 and body["error"] == "signed_out"


# ---------------------------------------------------------------- pages
async def test_every_page_renders_for_a_signed_in_agent(console_hub: ConsoleHubFactory) -> None:
    hub = await console_hub()
    key = await handed_off(hub, "zhaoliu")
    async with signed_in(hub, WANG) as (http, token):
        pages = {"/console/inbox": "收件箱", "/console/faq": "FAQ 维护", "/console/dashboard": "数据看板",
                 console_web._conversation_href(key): "回复客户"}
        for path, label in pages.items():
            async with http.get(hub.url(path)) as resp:
                assert resp.status == 200, path
                assert resp.content_type == "text/html"
                assert_console_headers(resp)
                html = await resp.text()
            assert '<html lang="zh-CN">' in html
            assert f'<meta name="csrf-token" content="{token}">' in html
            assert label in html and "kefu-hub 坐席工作台" in html
            for link in ('href="/console/inbox"', 'href="/console/dashboard"', 'href="/console/faq"'):
                assert link in html
            assert '<span id="me" title="wang">小王</span>' in html
            assert re.search(r'<form class="logout-form" method="post" action="/console/logout">\s*'
                             rf'<input type="hidden" name="csrf" value="{token}">', html)
            assert 'id="logout"' in html
            assert "<script>" not in html and "<style" not in html and " style=" not in html  # the CSP forbids them
        async with http.get(hub.url("/console/inbox")) as resp:
            html = await resp.text()
        assert f'data-key="{key}"' in html and "企业微信" in html and "客户要求转人工" in html
        assert 'class="open button" href="/console/c?key=' in html
        async with http.get(hub.url(console_web._conversation_href(key))) as resp:
            html = await resp.text()
        assert 'id="history"' in html and 'data-role="user"' in html and "转人工" in html
        assert 'id="take"' in html and 'id="release"' in html and 'id="reply-text"' in html and 'id="send"' in html
        assert 'class="canned"' in html  # config/canned.yaml
        for asset, kind in (("console.js", "text/javascript"), ("console.css", "text/css")):
            async with http.get(hub.url(f"/console/static/{asset}")) as resp:
                assert resp.status == 200 and resp.content_type == kind
                etag = resp.headers["ETag"]
            async with http.get(hub.url(f"/console/static/{asset}"), headers={"If-None-Match": etag}) as resp:
                assert resp.status == 304
        async with http.get(hub.url("/console/static/../auth.py")) as resp:
            assert resp.status == 404
        async with http.get(hub.url("/console/static/login.html")) as resp:
            assert resp.status == 404 and (await resp.json())["error"] == "not_found"


async def test_customer_text_is_escaped_in_pages(console_hub: ConsoleHubFactory) -> None:
    hub = await console_hub()
    key = await handed_off(hub, "mallory")
    await hub.say("mallory", '<img src=x onerror="alert(1)"><script>alert(2)</script>')
    await hub.settle()
    async with signed_in(hub, WANG) as (http, _token):
        for path in ("/console/inbox", console_web._conversation_href(key)):
            async with http.get(hub.url(path)) as resp:
                html = await resp.text()
            assert "<img src=x" not in html and "<script>alert" not in html, path
            assert "&lt;script&gt;alert(2)&lt;/script&gt;" in html, path


async def test_an_unknown_conversation_and_a_bad_key_are_4xx(console_hub: ConsoleHubFactory) -> None:
    hub = await console_hub()
    async with signed_in(hub, WANG) as (http, _token):
        async with http.get(hub.url("/console/c?key=wecom::nobody")) as resp:
            assert resp.status == 404 and resp.content_type == "application/json"
        async with http.get(hub.url("/console/c?key=wecom::nobody"), headers=HTML) as resp:
            assert resp.status == 404 and resp.content_type == "text/html"
            assert "没有这个会话" in await resp.text()
            assert_console_headers(resp)
        for query in ("key=%ff", "key=a&key=b", "", "key=%0a", "key=" + "x" * 700):
            async with http.get(hub.url("/console/api/c?" + query)) as resp:
                assert resp.status == 400, query
                assert set(await resp.json()) == {"error", "message"}
            async with http.get(hub.url("/console/c?" + query), headers=HTML) as resp:
                assert resp.status == 400, query


# ---------------------------------------------------------------- take / reply / release
async def test_take_reply_release_need_the_csrf_token_and_one_agent_holds_a_conversation(
        console_hub: ConsoleHubFactory) -> None:
    hub = await console_hub()
    key = await handed_off(hub, "zhangsan")
    async with signed_in(hub, WANG) as (wang, token), signed_in(hub, LI) as (li, li_token):
        async with wang.get(hub.url("/console/api/inbox")) as resp:
            assert resp.status == 200
            assert_console_headers(resp)
            rows = (await resp.json())["rows"]
        row = next(r for r in rows if r["key"] == key)
        assert row["channel"] == "wecom" and row["channel_label"] == "企业微信"
        assert row["reason_text"] == "客户要求转人工" and row["taken_by"] is None and row["wait_text"]

        for path, body in (("/console/api/take", {"key": key}), ("/console/api/reply", {"key": key, "text": "hi"}),
                           ("/console/api/release", {"key": key})):
            status, error = await post(wang, hub, path, body, None)
            assert status == 403 and error["error"] == "csrf", path
            status, error = await post(wang, hub, path, body, li_token)  # another session's token
            assert status == 403 and error["error"] == "csrf", path
        assert not hub.sent("zhangsan") or "hi" not in hub.sent("zhangsan")

        status, body = await post(wang, hub, "/console/api/take", {"key": key}, token)
        assert status == 200 and body["conversation"]["owner"] == "小王"
        assert body["conversation"]["owner_name"] == "wang"

        status, body = await post(li, hub, "/console/api/take", {"key": key}, li_token)
        assert status == 409 and body == {"error": "taken", "agent": "小王", "message": "已被 小王 接手"}
        status, body = await post(li, hub, "/console/api/reply", {"key": key, "text": "我来"}, li_token)
        assert status == 409 and body["error"] == "taken"
        status, body = await post(li, hub, "/console/api/release", {"key": key}, li_token)
        assert status == 409 and body["error"] == "taken"
        status, body = await post(li, hub, "/console/api/take", {"key": key, "force": True}, li_token)
        assert status == 403 and body["error"] == "forbidden"  # only an admin may take over

        status, body = await post(wang, hub, "/console/api/reply", {"key": key, "text": "您好，我是小王"}, token)
        assert status == 200 and body["delivered"] is True
        await hub.received("zhangsan", "您好，我是小王")
        turns = body["conversation"]["history"]
        assert turns[-1]["role"] == "agent" and turns[-1]["text"] == "您好，我是小王" and turns[-1]["agent"] == "小王"
        status, body = await post(wang, hub, "/console/api/reply", {"key": key, "text": "   "}, token)
        assert status == 400 and body["message"] == "回复内容不能为空"

        async with wang.get(hub.url("/console/api/c"), params={"key": key}) as resp:
            assert resp.status == 200
            conv = (await resp.json())["conversation"]
        assert conv["state"]["handed_off"] is True and conv["row"]["taken_by"] == "wang"

        status, body = await post(wang, hub, "/console/api/release", {"key": key}, token)
        assert status == 200 and body["released"] is True
        assert body["conversation"]["state"]["handed_off"] is False
        assert all(r.key != key for r in await hub.services.desk.waiting())
        status, body = await post(wang, hub, "/console/api/take", {"key": key}, token)
        assert status == 409 and body["error"] == "not_waiting"
        status, body = await post(wang, hub, "/console/api/take", {"key": "wecom::nobody"}, token)
        assert status == 404


async def test_a_delivery_failure_is_a_502_naming_the_channel(console_hub: ConsoleHubFactory) -> None:
    hub = await console_hub()
    key = await handed_off(hub, "lisi")
    async with signed_in(hub, WANG) as (http, token):
        hub.fake.send_script.extend([40003] * 10)  # WeCom refuses every send: invalid user
        status, body = await post(http, hub, "/console/api/reply", {"key": key, "text": "您好"}, token)
        assert status == 502 and body["error"] == "delivery_failed", body
        assert "企业微信" in body["message"] and "wecom" in body["message"]


# ---------------------------------------------------------------- hostile bodies
BAD_BODIES: list[tuple[str, bytes]] = [
    ("not json", b"{nope"),
    ("array", b"[]"),
    ("string", b'"key"'),
    ("empty", b""),
    ("not utf-8", b'{"key": "\xff"}'),
    ("lone surrogate", b'{"key": "\\ud800", "text": "x"}'),
    ("number key", b'{"key": 12, "text": "x"}'),
    ("text number", b'{"key": "wecom::a", "text": 5}'),
    ("null key", b'{"key": null}'),
    ("unknown field", b'{"key": "wecom::a", "text": "x", "extra": 1}'),
    ("control chars in key", b'{"key": "wecom::\\n", "text": "x"}'),
    ("deep", b'{"key":' + b"[" * 5000 + b"]" * 5000 + b"}"),
    ("bool force", b'{"key": "wecom::a", "force": "yes"}'),
    ("faq id number", b'{"faq_id": 1, "answer": "x", "text": "x", "question": "x"}'),
    ("huge", b'{"key": "' + b"x" * (70 * 1024) + b'"}'),
]
WRITES = ["/console/api/take", "/console/api/reply", "/console/api/release", "/console/api/faq/answer",
          "/console/api/faq/paraphrase", "/console/api/faq/paraphrase/remove", "/console/api/faq/pin",
          "/console/api/faq/unpin"]


async def test_bad_bodies_are_answered_4xx_never_500(console_hub: ConsoleHubFactory) -> None:
    hub = await console_hub()
    async with signed_in(hub, WANG) as (http, token):
        for path in WRITES:
            for name, body in BAD_BODIES:
                status, error = await post(http, hub, path, body, token)
                assert 400 <= status < 500, (path, name, status, error)
                assert set(error) == {"error", "message"}, (path, name)
                if name == "huge":
                    assert status == 413
        status, _ = await post(http, hub, "/console/api/take", {"key": "wecom::a"}, "x" * 5000)
        assert status == 403
        status, _ = await post(http, hub, "/console/api/take", {"key": "wecom::a"}, token,
                               Origin="https://evil.example")
        assert status == 403
        async with http.get(hub.url("/console/api/inbox")) as resp:  # still serving
            assert resp.status == 200


# ---------------------------------------------------------------- live events
async def test_the_event_stream_carries_feed_events_and_ends_with_the_session(console_hub: ConsoleHubFactory) -> None:
    hub = await console_hub({"web.heartbeat_s": 0.2})
    async with signed_in(hub, WANG) as (http, token):
        async with http.get(hub.url("/console/events"), timeout=NO_TIMEOUT) as stream:
            assert stream.status == 200
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            assert_console_headers(stream)
            frames: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
            reader = asyncio.create_task(read_frames(stream, frames))
            try:
                assert (await next_frame(frames, "retry"))["ms"] == 3000
                await next_frame(frames, "comment")  # a heartbeat
                await hub.services.feed.publish("handoff", "wecom::someone", reason="requested")
                data = await next_frame(frames, "handoff")
                assert data == {"kind": "handoff", "key": "wecom::someone", "reason": "requested"}
                await hub.services.feed.publish("taken", "wecom::someone", agent="li")
                assert (await next_frame(frames, "taken"))["agent"] == "li"
                async with http.post(hub.url("/console/logout"), data={"csrf": token}, allow_redirects=False) as r:
                    assert r.status == 303
                await next_frame(frames, "signed_out")  # the next heartbeat finds the session ended
                await next_frame(frames, "eof")
            finally:
                reader.cancel()


async def test_the_number_of_streams_is_bounded(console_hub: ConsoleHubFactory,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console_web, "MAX_STREAMS", 2)
    hub = await console_hub()
    async with signed_in(hub, WANG) as (http, _token):
        first = await http.get(hub.url("/console/events"), timeout=NO_TIMEOUT)
        second = await http.get(hub.url("/console/events"), timeout=NO_TIMEOUT)
        try:
            assert first.status == second.status == 200
            async with http.get(hub.url("/console/events")) as third:
                assert third.status == 503 and (await third.json())["error"] == "streams_full"
                assert third.headers["Retry-After"]
        finally:
            first.close()
            second.close()

        async def reopened() -> bool:
            async with http.get(hub.url("/console/events"), timeout=NO_TIMEOUT) as again:
                return again.status == 200

        assert await eventually(reopened, what="a place freed by a closed stream")


async def test_open_streams_end_at_shutdown(console_hub: ConsoleHubFactory) -> None:
    hub = await console_hub()
    async with signed_in(hub, WANG) as (http, _token):
        async with http.get(hub.url("/console/events"), timeout=NO_TIMEOUT) as stream:
            frames: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
            reader = asyncio.create_task(read_frames(stream, frames))
            await next_frame(frames, "retry")
            closing = asyncio.create_task(hub.server.close())
            await next_frame(frames, "eof")
            await closing
            reader.cancel()


# ---------------------------------------------------------------- FAQ
async def test_faq_writes_change_the_entries_and_are_logged(console_hub: ConsoleHubFactory) -> None:
    hub = await console_hub()
    async with signed_in(hub, WANG) as (http, token):
        async with http.get(hub.url("/console/faq")) as resp:
            html = await resp.text()
        assert f'data-id="{RESET_ID}"' in html and 'form id="pin"' in html and 'id="faq-history"' in html
        async with http.get(hub.url("/console/faq"), params={"q": "重置密码"}) as resp:
            assert resp.status == 200 and f'data-id="{RESET_ID}"' in await resp.text()

        answer = "请在登录页点「忘记密码」，按短信验证码重设（控制台修改）。"
        status, body = await post(http, hub, "/console/api/faq/answer", {"faq_id": RESET_ID, "answer": answer}, token)
        assert status == 200 and body["ok"] is True, body
        assert body["entry"]["answer"] == answer and body["change"]["action"] == "edit_answer"
        assert body["change"]["agent"] == "小王"

        status, body = await post(http, hub, "/console/api/faq/paraphrase",
                                  {"faq_id": RESET_ID, "text": "密码忘了咋整"}, token)
        assert status == 200 and "密码忘了咋整" in body["entry"]["paraphrases"]
        status, body = await post(http, hub, "/console/api/faq/paraphrase/remove",
                                  {"faq_id": RESET_ID, "text": "密码忘了咋整"}, token)
        assert status == 200 and "密码忘了咋整" not in body["entry"]["paraphrases"]

        pin = {"question": "发票怎么开到公司抬头", "answer": "在订单页申请发票，选择「单位」抬头。"}
        status, body = await post(http, hub, "/console/api/faq/pin", pin, token)
        assert status == 200 and body["entry"]["id"].startswith("pin-") and body["entry"]["pinned"] is True
        pinned = body["entry"]["id"]
        async with http.get(hub.url("/console/faq")) as resp:
            html = await resp.text()
        assert f'data-id="{pinned}"' in html and "发票怎么开到公司抬头" in html and "修改答案" in html
        status, body = await post(http, hub, "/console/api/faq/unpin", {"faq_id": pinned}, token)
        assert status == 200 and body["entry"] is None

        status, body = await post(http, hub, "/console/api/faq/answer", {"faq_id": "no-such", "answer": "x"}, token)
        assert status == 404
        status, body = await post(http, hub, "/console/api/faq/answer", {"faq_id": RESET_ID, "answer": " "}, token)
        assert status == 400 and body["error"] == "invalid_change"
        status, body = await post(http, hub, "/console/api/faq/unpin", {"faq_id": RESET_ID}, token)
        assert status == 400  # only pinned answers can be unpinned
        status, body = await post(http, hub, "/console/api/faq/answer", {"faq_id": RESET_ID, "answer": "x"}, None)
        assert status == 403


async def test_without_the_archive_faq_editing_and_the_dashboard_say_so(console_hub: ConsoleHubFactory) -> None:
    hub = await console_hub({"archive.enabled": "false"})
    assert hub.services.curation is None and hub.services.archive is None
    async with signed_in(hub, WANG) as (http, token):
        async with http.get(hub.url("/console/faq")) as resp:
            assert resp.status == 200
            html = await resp.text()
        assert "FAQ 编辑需要启用会话归档（archive.enabled）" in html and f'data-id="{RESET_ID}"' in html
        status, body = await post(http, hub, "/console/api/faq/answer", {"faq_id": RESET_ID, "answer": "新答案"}, token)
        assert status == 503 and "archive.enabled" in body["message"]
        async with http.get(hub.url("/console/dashboard")) as resp:
            assert resp.status == 200
            html = await resp.text()
        assert "未启用会话归档" in html and 'class="stat"' not in html


# ---------------------------------------------------------------- dashboard
async def test_the_dashboard_of_an_empty_archive_and_its_day_picker(console_hub: ConsoleHubFactory) -> None:
    hub = await console_hub()
    async with signed_in(hub, WANG) as (http, _token):
        async with http.get(hub.url("/console/dashboard")) as resp:
            assert resp.status == 200
            html = await resp.text()
        for name in ("conversations", "faq", "model", "agent", "handoffs", "up", "down"):
            assert re.search(rf'<div class="stat" data-name="{name}">.*?<span class="value">0</span>', html, re.S), name
        assert '<svg id="chart"' in html or re.search(r'<svg[^>]*id="chart"', html)
        assert 'style="' not in html  # the chart's inline style would be refused by the CSP
        assert 'id="unanswered"' in html and 'name="day"' in html
        assert "今日每小时对话量" in html
        async with http.get(hub.url("/console/dashboard"), params={"day": "2024-02-29"}) as resp:
            past = await resp.text()
            assert resp.status == 200 and "2024-02-29 每小时对话量" in past and "今日" not in past
        for bad in ("2024-02-30", "yesterday", "２０２４-01-01", "2024-1-1"):
            async with http.get(hub.url("/console/dashboard"), params={"day": bad}) as resp:
                assert resp.status == 400 and (await resp.json())["error"] == "invalid_day", bad
            async with http.get(hub.url("/console/dashboard"), params={"day": bad}, headers=HTML) as resp:
                assert resp.status == 400 and "日期格式不正确" in await resp.text()
