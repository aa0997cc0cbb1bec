"""The widget API on a real server: tokens, CORS, limits, messages, SSE replay, history, feedback.

Each test runs with the in-process store and with a real Redis (``store_overrides``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from adapters.web import WebSender
from adapters.web.events import MemoryEventLog
from adapters.web.session import SessionTokens, new_session_id
from bot.app import SERVICES_KEY
from bot.services import Services
from bot.types import ConversationRef, Event, EventKind, Reply, ReplyChunk
from tests.conftest import make_config, start_server

from .conftest import SECRET, Web, WebServerFactory, auth, new_session, read_sse

RESET = "如何重置密码？"


def ref(sid: str) -> ConversationRef:
    return ConversationRef(channel="web", conversation_id=sid, user_id=sid)


async def send(http: aiohttp.ClientSession, server, token: str, text: str, client_id: str | None = None,
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"text": text}
    if client_id:
        body["client_id"] = client_id
    async with http.post(server.make_url("/api/web/messages"), json=body,
                         headers={**auth(token), **(headers or {})}) as resp:
        return resp.status, await resp.json()


async def history(http: aiohttp.ClientSession, server, token: str) -> dict[str, Any]:
    async with http.get(server.make_url("/api/web/history"), headers=auth(token)) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


# ---------------------------------------------------------------- static


async def test_demo_page_and_widget_are_served(web_server: WebServerFactory, http: aiohttp.ClientSession) -> None:
    server, _ = await web_server()
    async with http.get(server.make_url("/")) as resp:
        page = await resp.text()
        assert resp.status == 200
        assert "云朵商城" in page and 'src="/widget.js"' in page
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    async with http.get(server.make_url("/widget.js")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/javascript")
        assert "attachShadow" in await resp.text()


async def test_demo_page_can_be_turned_off(web_server: WebServerFactory, http: aiohttp.ClientSession) -> None:
    server, _ = await web_server({"web.demo_page": "false"})
    async with http.get(server.make_url("/")) as resp:
        assert resp.status == 404
    async with http.get(server.make_url("/widget.js")) as resp:
        assert resp.status == 200


# ---------------------------------------------------------------- sessions and tokens


async def test_session_is_renewed_only_with_its_token(
    web_server: WebServerFactory, http: aiohttp.ClientSession, store_overrides: dict
) -> None:
    server, _ = await web_server(store_overrides)
    first = await new_session(http, server)
    async with http.post(server.make_url("/api/web/session"), json={"token": first["token"]}) as resp:
        renewed = await resp.json()
    assert renewed["session_id"] == first["session_id"] and renewed["renewed"] is True
    forged = first["token"][:-4] + ("AAAA" if not first["token"].endswith("AAAA") else "BBBB")
    async with http.post(server.make_url("/api/web/session"), json={"token": forged}) as resp:
        fresh = await resp.json()
    assert fresh["session_id"] != first["session_id"] and fresh["renewed"] is False
    async with http.post(server.make_url("/api/web/session"), data=b"[1]") as resp:
        assert resp.status == 400


@pytest.mark.parametrize("path,method", [("/api/web/history", "GET"), ("/api/web/stream", "GET"),
                                         ("/api/web/messages", "POST"), ("/api/web/feedback", "POST")])
async def test_endpoints_refuse_missing_forged_and_expired_tokens(
    web_server: WebServerFactory, http: aiohttp.ClientSession, path: str, method: str
) -> None:
    server, _ = await web_server()
    good = await new_session(http, server)
    version, sid, exp, sig = good["token"].split(".")
    other = await new_session(http, server)
    cases = {
        "missing_token": {},
        "invalid_token": auth(".".join([version, other["session_id"], exp, sig])),  # someone else's session id
        "token_expired": auth(SessionTokens(SECRET, 60, clock=lambda: 1_000_000.0).issue(sid).token),
    }
    for code, headers in cases.items():
        async with http.request(method, server.make_url(path), headers=headers, json={"text": "hi"}) as resp:
            assert resp.status == 401, (code, await resp.text())
            assert (await resp.json())["error"] == code
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")


# ---------------------------------------------------------------- origins and CORS


async def test_cors_same_origin_allowed_listed_other_refused(
    web_server: WebServerFactory, http: aiohttp.ClientSession
) -> None:
    server, _ = await web_server({"web.allowed_origins": "[https://shop.example.com]"})
    url = server.make_url("/api/web/session")
    same = f"http://{server.host}:{server.port}"
    async with http.post(url, json={}, headers={"Origin": same}) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == same
    async with http.post(url, json={}, headers={"Origin": "https://shop.example.com"}) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == "https://shop.example.com"
        assert resp.headers["Vary"] == "Origin"
    async with http.post(url, json={}, headers={"Origin": "https://evil.example.net"}) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"] == "origin_not_allowed"
        assert "Access-Control-Allow-Origin" not in resp.headers
    # errors for an allowed origin carry CORS headers, so the widget can read its 401 / 429
    async with http.get(server.make_url("/api/web/history"), headers={"Origin": "https://shop.example.com"}) as resp:
        assert resp.status == 401
        assert resp.headers["Access-Control-Allow-Origin"] == "https://shop.example.com"


async def test_preflight(web_server: WebServerFactory, http: aiohttp.ClientSession) -> None:
    server, _ = await web_server({"web.allowed_origins": "[https://shop.example.com]"})
    ask = {"Origin": "https://shop.example.com", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization, content-type"}
    async with http.options(server.make_url("/api/web/messages"), headers=ask) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "https://shop.example.com"
        assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
        assert "Last-Event-ID" in resp.headers["Access-Control-Allow-Headers"]
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    async with http.options(server.make_url("/api/web/stream"),
                            headers={**ask, "Origin": "https://evil.example.net"}) as resp:
        assert resp.status == 403


async def test_any_origin_when_configured(web_server: WebServerFactory, http: aiohttp.ClientSession) -> None:
    server, _ = await web_server({"web.allowed_origins": '["*"]'})
    async with http.post(server.make_url("/api/web/session"), json={}, headers={"Origin": "https://a.example"}) as r:
        assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == "https://a.example"


# ---------------------------------------------------------------- rate limits


async def test_per_session_limit_answers_429_json(
    web_server: WebServerFactory, http: aiohttp.ClientSession, store_overrides: dict
) -> None:
    server, _ = await web_server({**store_overrides, "web.rate_per_session_per_min": 2})
    s = await new_session(http, server)
    assert (await send(http, server, s["token"], "你好"))[0] == 202
    assert (await send(http, server, s["token"], "在吗"))[0] == 202
    async with http.post(server.make_url("/api/web/messages"), json={"text": "还在吗"}, headers=auth(s["token"])) as r:
        assert r.status == 429
        assert r.headers["Retry-After"] == "60"
        assert (await r.json())["error"] == "rate_limited"
    other = await new_session(http, server)
    assert (await send(http, server, other["token"], "你好"))[0] == 202


async def test_per_ip_limit_answers_429(web_server: WebServerFactory, http: aiohttp.ClientSession) -> None:
    server, _ = await web_server({"web.rate_per_ip_per_min": 3})
    for _ in range(3):
        await new_session(http, server)
    async with http.post(server.make_url("/api/web/session"), json={}) as resp:
        assert resp.status == 429


async def test_forwarded_for_counts_only_when_trusted(
    web_server: WebServerFactory, http: aiohttp.ClientSession
) -> None:
    server, _ = await web_server({"web.rate_per_ip_per_min": 1, "web.trust_forwarded_for": "true"})
    for client in ("203.0.113.1", "203.0.113.2"):
        async with http.post(server.make_url("/api/web/session"), json={},
                             headers={"X-Forwarded-For": f"1.1.1.1, {client}"}) as resp:
            assert resp.status == 200
    async with http.post(server.make_url("/api/web/session"), json={},
                         headers={"X-Forwarded-For": "9.9.9.9, 203.0.113.1"}) as resp:
        assert resp.status == 429  # the spoofable first hop does not buy a new budget


# ---------------------------------------------------------------- messages and the stream


async def test_message_is_answered_over_sse_in_order(
    web_server: WebServerFactory, http: aiohttp.ClientSession, store_overrides: dict
) -> None:
    server, _ = await web_server(store_overrides)
    s = await new_session(http, server)
    async with http.get(server.make_url("/api/web/stream"), headers=auth(s["token"])) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        status, body = await send(http, server, s["token"], RESET, client_id="msg-0001")
        assert status == 202 and body == {"message_id": "msg-0001", "duplicate": False}
        events = []
        while not events or events[-1][1]["type"] != "done":
            events += await read_sse(stream, 1)
    kinds = [e["type"] for _, e in events]
    assert kinds[0] == "user" and kinds[-2:] == ["reply", "done"]
    deltas = [e for _, e in events if e["type"] == "delta"]
    assert len(deltas) >= 2  # a FAQ answer still reaches the widget piece by piece
    assert "".join(d["text"] for d in deltas) == events[-2][1]["text"]
    assert [d["offset"] for d in deltas] == [sum(len(x["text"]) for x in deltas[:i]) for i in range(len(deltas))]
    reply = events[-2][1]
    assert "忘记密码" in reply["text"] and reply["answer_id"] == "msg-0001" and reply["source"] == "faq"
    assert "meta" not in reply


async def test_redelivered_message_is_answered_once(web_server: WebServerFactory, http: aiohttp.ClientSession) -> None:
    server, web = await web_server()
    s = await new_session(http, server)
    assert (await send(http, server, s["token"], RESET, client_id="same-id-01"))[1]["duplicate"] is False
    assert (await send(http, server, s["token"], RESET, client_id="same-id-01"))[1]["duplicate"] is True
    await web.services.hub.drain(10)
    h = await history(http, server, s["token"])
    assert [m["role"] for m in h["messages"]] == ["user", "assistant"]


@pytest.mark.parametrize("body,code", [
    ({"text": ""}, "invalid_text"),
    ({"text": "   "}, "invalid_text"),
    ({"text": 5}, "invalid_text"),
    ({"text": "x" * 2001}, "message_too_long"),
    ({"text": "hi", "client_id": "../etc"}, "invalid_client_id"),
    ({"text": "hi", "context": {"a": 1}}, "invalid_context"),
])
async def test_bad_messages_get_clear_errors(
    web_server: WebServerFactory, http: aiohttp.ClientSession, body: dict, code: str
) -> None:
    server, _ = await web_server()
    s = await new_session(http, server)
    async with http.post(server.make_url("/api/web/messages"), json=body, headers=auth(s["token"])) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == code
    async with http.post(server.make_url("/api/web/messages"), data=b"{not json", headers=auth(s["token"])) as resp:
        assert resp.status == 400


async def test_stream_chunks_keep_order_and_resume_without_loss_or_duplicates(
    web_server: WebServerFactory, http: aiohttp.ClientSession, store_overrides: dict
) -> None:
    """Tokens from the hub's ``stream(chunk)`` path, a dropped connection, a resume with Last-Event-ID."""
    server, web = await web_server(store_overrides)
    s = await new_session(http, server)
    sid, token = s["session_id"], s["token"]
    event = Event(id=f"{sid}:llm-answer-1", kind=EventKind.MESSAGE, ref=ref(sid), text="会员怎么退？")
    tokens = ["会员", "开通", "后", "7 天内", "未使用", "权益", "可", "全额", "退款", "。"]
    so_far = ""
    async with http.get(server.make_url("/api/web/stream"), headers=auth(token)) as stream:
        for piece in tokens[:4]:
            so_far += piece
            await web.sender.stream(ReplyChunk(event.ref, event.id, so_far, piece))
        first = await read_sse(stream, 4)
    # the connection is gone; generation goes on
    for piece in tokens[4:]:
        so_far += piece
        await web.sender.stream(ReplyChunk(event.ref, event.id, so_far, piece))
    await web.sender.deliver(event, [Reply(event.ref, so_far, in_reply_to=event.id, source="llm",
                                        quick_replies=("查看退款进度", "转人工"))])
    last_id = first[-1][0]
    async with http.get(server.make_url("/api/web/stream"), headers={**auth(token), "Last-Event-ID": last_id}) as again:
        rest = await read_sse(again, len(tokens) - 4 + 2)
    events = [e for _, e in first + rest]
    deltas = [e for e in events if e["type"] == "delta"]
    assert [d["text"] for d in deltas] == tokens  # every token once, in order
    assert all(d["message_id"] == "llm-answer-1" for d in deltas)
    assert [e["type"] for e in events[-2:]] == ["reply", "done"]
    assert events[-2]["quick_replies"] == ["查看退款进度", "转人工"]
    ids = [i for i, _ in first + rest]
    assert len(set(ids)) == len(ids)
    # no synthetic chunks for an answer that was really streamed
    assert sum(1 for e in events if e["type"] == "delta") == len(tokens)


async def test_bad_last_event_id_is_400(web_server: WebServerFactory, http: aiohttp.ClientSession) -> None:
    server, _ = await web_server()
    s = await new_session(http, server)
    async with http.get(server.make_url("/api/web/stream"),
                        headers={**auth(s["token"]), "Last-Event-ID": "not-an-id"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "invalid_event_id"


async def test_an_id_from_the_future_reads_from_the_end_of_the_log(
    web_server: WebServerFactory, http: aiohttp.ClientSession, store_overrides: dict
) -> None:
    """A Last-Event-ID no log gave out (far in the future) does not leave the stream deaf to what comes next."""
    server, web = await web_server(store_overrides)
    s = await new_session(http, server)
    async with http.get(server.make_url("/api/web/stream"),
                        headers={**auth(s["token"]), "Last-Event-ID": "99999999999999-0"}) as stream:
        await stream.content.readline()
        await web.sender.deliver(None, [Reply(ref(s["session_id"]), "还在吗？", source="agent")])
        (_, event), = await read_sse(stream, 1, within_s=5)
    assert event["text"] == "还在吗？"


async def test_shutdown_ends_open_streams_at_once(
    web_server: WebServerFactory, http: aiohttp.ClientSession, store_overrides: dict
) -> None:
    server, web = await web_server({**store_overrides, "web.heartbeat_s": 30})
    s = await new_session(http, server)
    async with http.get(server.make_url("/api/web/stream"), headers=auth(s["token"])) as stream:
        await stream.content.readline()
        await asyncio.sleep(0.1)  # waiting for events
        await web.inbound.shutdown()
        async with asyncio.timeout(2):  # not after the 30 s heartbeat
            while await stream.content.readline():
                pass


async def test_open_streams_per_session_are_bounded(web_server: WebServerFactory, http: aiohttp.ClientSession) -> None:
    server, _ = await web_server({"web.max_streams_per_session": 1})
    s = await new_session(http, server)
    async with http.get(server.make_url("/api/web/stream"), headers=auth(s["token"])) as first:
        await first.content.readline()
        async with http.get(server.make_url("/api/web/stream"), headers=auth(s["token"])) as second:
            assert second.status == 429
    await asyncio.sleep(0.05)
    async with http.get(server.make_url("/api/web/stream"), headers=auth(s["token"])) as third:
        assert third.status == 200


async def test_proactive_reply_reaches_the_stream(web_server: WebServerFactory, http: aiohttp.ClientSession) -> None:
    server, web = await web_server()
    s = await new_session(http, server)
    async with http.get(server.make_url("/api/web/stream"), headers=auth(s["token"])) as stream:
        await web.sender.deliver(None, [Reply(ref(s["session_id"]), "人工客服小云为您服务", source="agent")])
        (_, event), = await read_sse(stream, 1)
    assert event["type"] == "reply" and event["message_id"] is None and event["source"] == "agent"
    assert event["answer_id"].startswith("p")


async def streamed_marks(web: Web, sid: str) -> set[str]:
    """The answers the event log remembers as streamed (message ids), in memory or in Redis."""
    if isinstance(web.events, MemoryEventLog):
        item = web.events._logs.get(sid)
        return set(item.streamed) if item is not None else set()
    assert web.services.redis is not None
    return set(await web.services.redis.hkeys(web.services.keys.web_streamed(ref(sid).key)))


async def test_an_evicted_turn_is_the_oldest_not_one_still_streaming(
    web_server: WebServerFactory, http: aiohttp.ClientSession, store_overrides: dict
) -> None:
    """Past the bound on remembered turns (memory mode; Redis keeps them until the conversation expires) the
    oldest is forgotten, never a turn still in flight: its answer must not be sent again from offset 0
    (the widget would restart it)."""
    server, web = await web_server(store_overrides)
    if isinstance(web.events, MemoryEventLog):
        web.events.max_marks = 3
    sid = (await new_session(http, server))["session_id"]
    live = Event(id=f"{sid}:live-0001", kind=EventKind.MESSAGE, ref=ref(sid), text="会员怎么退？")
    await web.sender.stream(ReplyChunk(live.ref, live.id, "会员", "会员"))
    for n in range(6):  # other turns that never deliver (a shutdown), while the live one keeps streaming
        await web.sender.stream(ReplyChunk(live.ref, f"{sid}:stale-{n:04d}", "x", "x"))
        await web.sender.stream(ReplyChunk(live.ref, live.id, "会员" + "可" * (n + 1), "可"))
    marks = await streamed_marks(web, sid)
    assert "live-0001" in marks
    if isinstance(web.events, MemoryEventLog):
        assert len(marks) == 3 and "stale-0000" not in marks
    await web.sender.deliver(live, [Reply(live.ref, "会员可退", in_reply_to=live.id, source="llm")])
    deltas = [e for _, e in await web.events.entries(sid)
              if e["type"] == "delta" and e["message_id"] == "live-0001"]
    assert [d["offset"] for d in deltas] == [0, 2, 3, 4, 5, 6, 7]  # no synthetic restart at offset 0
    assert "live-0001" not in await streamed_marks(web, sid)


async def test_an_answer_streamed_by_one_worker_is_delivered_by_another(
    web_server: WebServerFactory, http: aiohttp.ClientSession, redis_url: str, key_prefix: str, faq_path: str
) -> None:
    """A turn redelivered to another worker: what the first streamed is known there (Redis), so the answer
    is not streamed again from the start; the gateway's SSE sees both workers' events, in order, once."""
    shared = {"state.url": redis_url, "state.key_prefix": key_prefix}
    gateway, gw = await web_server(shared)
    cfg = make_config({"faq.path": faq_path, "web.session_secret": SECRET, **shared})
    workers = [await start_server(cfg, Services(cfg, role="worker")) for _ in range(2)]
    try:
        senders = [w.app[SERVICES_KEY].hub.sink("web") for w in workers]
        assert all(isinstance(s, WebSender) for s in senders) and senders[0] is not senders[1]
        async with http.get(workers[0].make_url("/api/web/stream")) as resp:
            assert resp.status == 404  # a worker serves no widget routes
        s = await new_session(http, gateway)
        sid = s["session_id"]
        event = Event(id=f"{sid}:moved-0001", kind=EventKind.MESSAGE, ref=ref(sid), text="会员怎么退？")
        async with http.get(gateway.make_url("/api/web/stream"), headers=auth(s["token"])) as stream:
            await senders[0].stream(ReplyChunk(event.ref, event.id, "会员", "会员"))  # worker 0, then it dies
            await senders[1].deliver(event, [Reply(event.ref, "会员开通 7 天内可退", in_reply_to=event.id,
                                                   source="llm")])
            got = await read_sse(stream, 3)
        assert [e["type"] for _, e in got] == ["delta", "reply", "done"]
        assert got[0][1]["offset"] == 0 and got[0][1]["text"] == "会员"
        assert "moved-0001" not in await streamed_marks(gw, sid)
    finally:
        for w in workers:
            await w.close()


async def test_redis_down_answers_503_the_widget_retries(
    web_server: WebServerFactory, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis unreachable: 503 ``unavailable`` with Retry-After (the widget shows "busy" and offers to
    send again), never a 500, including when the message's event-log append is what fails."""
    server, web = await web_server({"state.url": "redis://127.0.0.1:1/0"})
    async with http.post(server.make_url("/api/web/session"), json={}) as resp:  # the per-address limit needs Redis
        assert resp.status == 503 and resp.headers["Retry-After"] == "5"
        assert (await resp.json())["error"] == "unavailable"

    async def no_limit(*_args: Any) -> None:
        return None

    monkeypatch.setattr(web.inbound.limits, "check_ip", no_limit)  # so the request reaches the event log
    monkeypatch.setattr(web.inbound.limits, "check_session", no_limit)
    token = web.inbound.tokens.issue(new_session_id()).token
    async with http.post(server.make_url("/api/web/messages"), json={"text": "你好", "client_id": "down-0001"},
                         headers=auth(token)) as resp:
        assert resp.status == 503 and resp.headers["Retry-After"] == "5"
        assert (await resp.json())["error"] == "unavailable"
    for path in ("/api/web/history", "/api/web/stream"):
        async with http.get(server.make_url(path), headers=auth(token)) as resp:
            assert resp.status == 503 and (await resp.json())["error"] == "unavailable"
    assert web.services.metrics.events_accepted.labels("web")._value.get() == 0


# ---------------------------------------------------------------- history


async def test_history_restores_the_conversation(
    web_server: WebServerFactory, http: aiohttp.ClientSession, store_overrides: dict
) -> None:
    server, web = await web_server(store_overrides)
    s = await new_session(http, server)
    await send(http, server, s["token"], RESET, client_id="hist-0001")
    await send(http, server, s["token"], "多少钱包邮？", client_id="hist-0002")
    await web.services.hub.drain(10)
    h = await history(http, server, s["token"])
    assert [(m["role"], m.get("message_id") or m.get("answer_id")) for m in h["messages"]] == [
        ("user", "hist-0001"), ("assistant", "hist-0001"), ("user", "hist-0002"), ("assistant", "hist-0002")]
    assert h["messages"][0]["text"] == RESET and "忘记密码" in h["messages"][1]["text"]
    assert h["pending"] == []
    # the cursor is the end of the log: a stream opened there replays nothing already shown
    async with http.get(server.make_url("/api/web/stream"),
                        headers={**auth(s["token"]), "Last-Event-ID": h["cursor"]}) as stream:
        await web.sender.deliver(None, [Reply(ref(s["session_id"]), "新消息", source="agent")])
        (_, event), = await read_sse(stream, 1)
        assert event["text"] == "新消息"
    # another visitor sees nothing of it
    other = await new_session(http, server)
    assert (await history(http, server, other["token"]))["messages"] == []


async def test_history_includes_an_answer_still_streaming(
    web_server: WebServerFactory, http: aiohttp.ClientSession, store_overrides: dict
) -> None:
    server, web = await web_server(store_overrides)
    s = await new_session(http, server)
    sid = s["session_id"]
    await web.events.append(sid, {"type": "user", "message_id": "inflight-1", "text": "讲讲会员权益"})
    event_ref = ref(sid)
    await web.sender.stream(ReplyChunk(event_ref, f"{sid}:inflight-1", "云朵会员", "云朵会员"))
    await web.sender.stream(ReplyChunk(event_ref, f"{sid}:inflight-1", "云朵会员全年免邮", "全年免邮"))
    h = await history(http, server, s["token"])
    assert h["messages"] == [
        {"role": "user", "text": "讲讲会员权益", "ts": None, "message_id": "inflight-1", "pending": True},
        {"role": "assistant", "text": "云朵会员全年免邮", "message_id": "inflight-1", "streaming": True},
    ]
    assert h["pending"] == ["inflight-1"]


# ---------------------------------------------------------------- feedback


async def test_feedback_is_stored_as_training_events(
    web_server: WebServerFactory, http: aiohttp.ClientSession, redis_url: str, key_prefix: str,
    redis_client: aioredis.Redis,
) -> None:
    server, web = await web_server({"state.url": redis_url, "state.key_prefix": key_prefix})
    s = await new_session(http, server)
    await send(http, server, s["token"], RESET, client_id="fb-000001")
    await web.services.hub.drain(10)
    for rating in ("down", "up"):
        async with http.post(server.make_url("/api/web/feedback"), headers=auth(s["token"]),
                             json={"answer_id": "fb-000001", "rating": rating}) as resp:
            assert resp.status == 200, await resp.text()
    await web.services.hub.drain(10)
    keys = web.services.keys
    records = await redis_client.xrange(keys.feedback_stream())
    assert [r[1]["rating"] for r in records] == ["down", "up"]
    rec = records[-1][1]
    assert rec["question"] == RESET and "忘记密码" in rec["answer"] and rec["source"] == "faq"
    assert rec["channel"] == "web" and rec["conversation"] == f"web::{s['session_id']}"
    assert isinstance(json.loads(rec["meta"]), dict)  # the reply's meta (intent, node ...) for A/B analysis
    h = await history(http, server, s["token"])
    assert h["messages"][1]["feedback"] == "up"  # a reloaded widget shows the chosen thumb
    assert web.services.metrics.events_accepted.labels("web")._value.get() == 3  # message + 2 feedback events


async def test_feedback_errors(web_server: WebServerFactory, http: aiohttp.ClientSession) -> None:
    server, web = await web_server()
    s = await new_session(http, server)
    await send(http, server, s["token"], RESET, client_id="fb-000002")
    await web.services.hub.drain(10)
    cases = [({"answer_id": "nope-1234", "rating": "up"}, 404, "unknown_answer"),
             ({"answer_id": "fb-000002", "rating": "meh"}, 400, "invalid_rating"),
             ({"answer_id": "<script>", "rating": "up"}, 400, "invalid_answer_id")]
    for body, status, code in cases:
        async with http.post(server.make_url("/api/web/feedback"), headers=auth(s["token"]), json=body) as resp:
            assert resp.status == status
            assert (await resp.json())["error"] == code
    other = await new_session(http, server)  # cannot rate someone else's answer
    async with http.post(server.make_url("/api/web/feedback"), headers=auth(other["token"]),
                         json={"answer_id": "fb-000002", "rating": "up"}) as resp:
        assert resp.status == 404
