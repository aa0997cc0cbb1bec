"""Live updates across gateway processes, without a browser: two hubs on one Redis, an agent connected to one.

A handoff can arrive at any gateway (WeCom spreads its callbacks over them); the agent's event stream is held by
whichever gateway their browser reached. So a conversation handed off through gateway B must reach an agent
connected to gateway A at once, and what the agent does through A (take) must show on B. An FAQ edit made through
one process changes the answer the other gives, without a restart.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from .conftest import BOSS, RESET_ID, RESET_QUESTION, WANG, Account, ConsoleHub, ConsoleHubFactory, eventually

_CSRF_FIELD = re.compile(r'<input[^>]*name="csrf"[^>]*value="([^"]+)"|<input[^>]*value="([^"]+)"[^>]*name="csrf"')
_CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)"')


@asynccontextmanager
async def signed_in(hub: ConsoleHub, account: Account) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """A client of one gateway signed in through its form (pre-session cookie + hidden csrf field), with the
    session's CSRF token for writes."""
    jar = aiohttp.CookieJar(unsafe=True)  # the hub is on 127.0.0.1: an IP address host keeps its cookies only so
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        async with http.get(hub.url("/console/login")) as resp:
            assert resp.status == 200, resp.status
            match = _CSRF_FIELD.search(await resp.text())
        assert match, "the sign-in form carries a csrf field"
        form = {"name": account.name, "password": account.password, "csrf": match.group(1) or match.group(2),
                "next": "/console/inbox"}
        async with http.post(hub.url("/console/login"), data=form, allow_redirects=False) as resp:
            assert resp.status == 303, (resp.status, await resp.text())
            assert resp.headers["Location"].endswith("/console/inbox")
        async with http.get(hub.url("/console/inbox")) as resp:
            assert resp.status == 200
            token = _CSRF_META.search(await resp.text())
        assert token, "every console page carries the csrf-token meta"
        yield http, token.group(1)


async def read_events(resp: aiohttp.ClientResponse, queue: asyncio.Queue[tuple[str, str, dict[str, Any]]]) -> None:
    """Parse an SSE stream into (event, id, data) until it ends; comments (heartbeats) are skipped."""
    kind, event_id, data = "message", "", []
    while True:
        raw = await resp.content.readline()
        if not raw:
            return
        line = raw.decode("utf-8").rstrip("\r\n")
        if line == "":
            if data:
                await queue.put((kind, event_id, json.loads("\n".join(data))))
            kind, event_id, data = "message", "", []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                kind = value
            elif name == "id":
                event_id = value
            elif name == "data":
                data.append(value)


async def next_event(queue: asyncio.Queue[tuple[str, str, dict[str, Any]]], kind: str,
                     within_s: float = 15) -> tuple[str, str, dict[str, Any]]:
    """The next event of ``kind`` (others, e.g. ``message`` after a handoff, are passed over)."""
    async with asyncio.timeout(within_s):
        while True:
            event = await queue.get()
            if event[0] == kind:
                return event


async def test_a_handoff_through_gateway_b_reaches_an_agent_on_gateway_a(console_hub: ConsoleHubFactory) -> None:
    a = await console_hub()
    b = await console_hub()
    async with signed_in(a, WANG) as (http, token):
        async with http.get(a.url("/console/events"), headers={"Accept": "text/event-stream"},
                            timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as stream:
            assert stream.status == 200
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            events: asyncio.Queue[tuple[str, str, dict[str, Any]]] = asyncio.Queue()
            reader = asyncio.create_task(read_events(stream, events))
            try:
                await b.say("zhangsan", "转人工")  # the callback reaches gateway B only
                _, event_id, data = await next_event(events, "handoff")
                key = data["key"]
                assert key.endswith(":zhangsan") and key.startswith("wecom:") and event_id
                # ... and gateway A lists it (the board is shared), with the channel and reason
                async with http.get(a.url("/console/api/inbox")) as resp:
                    assert resp.status == 200
                    rows = (await resp.json())
                rows = rows["rows"] if isinstance(rows, dict) else rows
                row = next(r for r in rows if r["key"] == key)
                assert row["reason"] == "requested" and not row.get("taken_by")

                # a second message through B: a message event on A's stream, never the customer's text in it
                await b.say("zhangsan", "我的手机号是13812345678，快点处理")
                _, _, data = await next_event(events, "message")
                assert data["key"] == key and "13812345678" not in json.dumps(data, ensure_ascii=False)

                # the agent takes it through A; the customer's gateway-B side sees the owner in the board
                async with http.post(a.url("/console/api/take"), json={"key": key},
                                     headers={"X-CSRF-Token": token}) as resp:
                    assert resp.status == 200, await resp.text()
                _, _, data = await next_event(events, "taken")
                assert data["key"] == key
                waiting = await b.services.desk.waiting()
                assert next(w for w in waiting if w.key == key).taken_by == WANG.name

                # the agent's reply goes out once, whichever process delivers it
                async with http.post(a.url("/console/api/reply"), json={"key": key, "text": "您好，我来帮您查"},
                                     headers={"X-CSRF-Token": token}) as resp:
                    assert resp.status == 200, await resp.text()
                await a.received("zhangsan", "您好，我来帮您查")
                await next_event(events, "reply")
                assert a.sent("zhangsan").count("您好，我来帮您查") == 1

                async with http.post(a.url("/console/api/release"), json={"key": key},
                                     headers={"X-CSRF-Token": token}) as resp:
                    assert resp.status == 200, await resp.text()
                await next_event(events, "released")
                assert all(w.key != key for w in await b.services.desk.waiting())
            finally:
                reader.cancel()


async def test_an_faq_edit_on_one_process_changes_the_answer_of_another(console_hub: ConsoleHubFactory) -> None:
    a = await console_hub()
    b = await console_hub()
    await b.say("qianliu", RESET_QUESTION)
    await b.settle()
    new_answer = "【在线修改】请在“我的-设置-安全中心”里重置密码，验证手机号后即可完成。"
    async with signed_in(a, BOSS) as (http, token):
        async with http.post(a.url("/console/api/faq/answer"), json={"faq_id": RESET_ID, "answer": new_answer},
                             headers={"X-CSRF-Token": token}) as resp:
            assert resp.status == 200, await resp.text()
    # B picks the change up (feed "faq" at once, else within console.faq_poll_s); no restart of either
    await eventually(lambda: any(e.id == RESET_ID and e.answer == new_answer for e in b.services.curation.entries()),
                     what="gateway B's FAQ entries carrying the edit")
    before = len(b.sent("qianliu"))
    await b.say("qianliu", RESET_QUESTION)
    await eventually(lambda: new_answer in b.sent("qianliu")[before:], what="gateway B answering with the edit")
