"""The agent and admin API (/api/agent/*, /api/admin/*) fed hostile bodies, paths, query parameters
and headers: each gets a 4xx JSON error naming the field (never its value), nothing is erased by a
request that was refused, and the API keeps working right after."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from tests.adapters.rawhttp import error_of, raw_request
from tests.conftest import make_config, start_server

TOKEN = "admin-token-0123456789"
USER = "attack-user"
DEEP = "[" * 5000 + "]" * 5000


@pytest.fixture
async def server(redis_url: str, key_prefix: str) -> AsyncIterator[TestServer]:
    """The admin API over a real Redis, with one conversation (USER on /chat) to address."""
    srv = await start_server(make_config({"admin.token": TOKEN, "state.url": redis_url,
                                          "state.key_prefix": key_prefix}))
    async with aiohttp.ClientSession() as http, http.post(srv.make_url("/chat"),
                                                          json={"query": "如何重置密码", "user_id": USER}) as r:
        assert r.status == 200
    yield srv
    await srv.close()


async def call(server: TestServer, method: str, path: str, body: str | bytes | None = None,
               token: str = TOKEN) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.request(
            method, URL(f"http://{server.host}:{server.port}{path}", encoded=True), data=body,  # sent as written
            headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, await r.json()


async def still_works(server: TestServer) -> None:
    """The conversation is still there (nothing a refused request did erased it) and an agent can answer."""
    status, state = await call(server, "GET", f"/api/admin/conversations/api/{USER}")
    assert status == 200 and state["key"] == f"api::{USER}"
    status, body = await call(server, "POST", "/api/agent/reply",
                              json.dumps({"channel": "api", "user_id": USER, "text": "您好，我是人工客服"}))
    assert status == 200 and body["delivered"] is True


REPLY_ATTACKS = [
    pytest.param(DEEP, 400, "invalid_json", id="json_nested_5000_levels_is_400"),
    pytest.param('{"channel": "api", "user_id": "\\ud800", "text": "hi"}', 400, "invalid_json",
                 id="lone_surrogate_in_user_id_is_400"),
    pytest.param('{"channel": "\\udc00", "user_id": "u", "text": "hi"}', 400, "invalid_json",
                 id="lone_surrogate_in_channel_is_400"),
    pytest.param(f'{{"channel": "api", "user_id": "{USER}", "text": "\\ud800"}}', 400, "invalid_json",
                 id="lone_surrogate_in_text_is_400"),
    pytest.param(f'{{"channel": "api", "user_id": "{USER}", "text": "hi", "agent": "\\ud800"}}', 400,
                 "invalid_json", id="lone_surrogate_in_agent_is_400"),
    pytest.param(f'{{"channel": "api", "user_id": "{USER}", "text": "hi", "tenant": "\\ud800"}}', 400,
                 "invalid_json", id="lone_surrogate_in_tenant_is_400"),
    pytest.param('{"channel": "api", "user_id": 42, "text": "hi"}', 400, "invalid_user_id",
                 id="number_as_user_id_is_400"),
    pytest.param('{"channel": "api", "user_id": 1' + "0" * 40 + ', "text": "hi"}', 400, "invalid_user_id",
                 id="huge_number_as_user_id_is_400"),
    pytest.param('{"channel": ["api"], "user_id": "u", "text": "hi"}', 400, "invalid_channel",
                 id="list_as_channel_is_400"),
    pytest.param(f'{{"channel": "api", "user_id": "{USER}", "text": 5}}', 400, "invalid_text",
                 id="number_as_text_is_400"),
    pytest.param(f'{{"channel": "api", "user_id": "{USER}", "text": "hi", "agent": 7}}', 400, "invalid_agent",
                 id="number_as_agent_is_400"),
    pytest.param(f'{{"channel": "api", "user_id": "{USER}", "text": "hi", "tenant": 7}}', 400, "invalid_tenant",
                 id="number_as_tenant_is_400"),
    pytest.param(f'{{"channel": "api", "user_id": "{USER}", "text": "hi", "conversation_id": false}}', 400,
                 "invalid_conversation_id", id="boolean_as_conversation_id_is_400"),
    pytest.param('{"channel": "api", "user_id": "a\\r\\nINFO forged log line", "text": "hi"}', 400,
                 "invalid_user_id", id="control_characters_in_user_id_is_400"),
    pytest.param(json.dumps({"channel": "api", "user_id": USER, "text": "答" * 4001}, ensure_ascii=False), 400,
                 "invalid_text", id="text_4001_chars_is_400"),
    pytest.param('{"user_id": "u", "text": "hi"}', 400, "invalid_channel", id="missing_channel_is_400"),
    pytest.param('{"channel": "nope", "user_id": "u", "text": "hi"}', 404, "unknown_channel",
                 id="unknown_channel_is_404"),
    pytest.param("", 400, "invalid_json", id="empty_body_is_400"),
    pytest.param("[]", 400, "invalid_json", id="list_body_is_400"),
    pytest.param(b"\xff\xfe", 400, "invalid_json", id="body_not_utf8_is_400"),
]


@pytest.mark.parametrize(("body", "status", "code"), REPLY_ATTACKS)
async def test_hostile_agent_reply(server: TestServer, body: str, status: int, code: str) -> None:
    got, payload = await call(server, "POST", "/api/agent/reply", body)
    assert (got, payload["error"]) == (status, code), payload
    await still_works(server)


RELEASE_ATTACKS = [
    pytest.param(DEEP, "invalid_json", id="json_nested_5000_levels_is_400"),
    pytest.param(f'{{"channel": "api", "user_id": "{USER}", "notify": "yes"}}', "invalid_notify",
                 id="string_as_notify_is_400"),
    pytest.param(f'{{"channel": "api", "user_id": "{USER}", "notify": 1}}', "invalid_notify",
                 id="number_as_notify_is_400"),
    pytest.param('{"channel": "api", "user_id": "\\ud800"}', "invalid_json", id="lone_surrogate_in_user_id_is_400"),
    pytest.param('{"channel": "api", "user_id": ""}', "invalid_user_id", id="empty_user_id_is_400"),
]


@pytest.mark.parametrize(("body", "code"), RELEASE_ATTACKS)
async def test_hostile_agent_release(server: TestServer, body: str, code: str) -> None:
    got, payload = await call(server, "POST", "/api/agent/release", body)
    assert (got, payload["error"]) == (400, code), payload
    await still_works(server)
    status, released = await call(server, "POST", "/api/agent/release",
                                  json.dumps({"channel": "api", "user_id": USER}))
    assert status == 200 and released["released"] is True


QUERY_ATTACKS = [
    pytest.param("?tenant=a&tenant=b", "duplicate_tenant", id="tenant_twice_is_400"),
    pytest.param("?conversation_id=a&conversation_id=a", "duplicate_conversation_id",
                 id="conversation_id_twice_is_400"),
    pytest.param("?tenant=%ff", "invalid_tenant", id="tenant_percent_escape_not_utf8_is_400"),
    pytest.param("?conversation_id=%ED%A0%80", "invalid_conversation_id",
                 id="conversation_id_encoded_surrogate_is_400"),
    pytest.param("?tenant=" + "t" * 129, "invalid_tenant", id="tenant_129_chars_is_400"),
    pytest.param("?tenant=%0d%0aforged", "invalid_tenant", id="control_characters_in_tenant_is_400"),
]


@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize(("query", "code"), QUERY_ATTACKS)
async def test_hostile_admin_query(server: TestServer, method: str, query: str, code: str) -> None:
    got, payload = await call(server, method, f"/api/admin/conversations/api/{USER}{query}")
    assert (got, payload["error"]) == (400, code), payload
    await still_works(server)  # a refused DELETE erased nothing


@pytest.mark.parametrize("path", [
    pytest.param(f"/api/admin/conversations/api/{USER}%00", id="nul_in_user_id_is_400"),
    pytest.param("/api/admin/conversations/api%0a/u", id="newline_in_channel_is_400"),
    pytest.param("/api/admin/conversations/api/" + "u" * 129, id="user_id_129_chars_is_400"),
    pytest.param("/api/admin/conversations/api/%20%20", id="blank_user_id_is_400"),
])
async def test_hostile_admin_path(server: TestServer, path: str) -> None:
    got, payload = await call(server, "GET", path)
    assert got == 400 and payload["error"] in ("invalid_user_id", "invalid_channel"), payload
    await still_works(server)


async def test_path_escape_not_utf8_is_a_plain_unknown_user(server: TestServer) -> None:
    """yarl keeps ``%FF`` in a path as those three characters: an id nobody has, so 404, not a 500."""
    got, payload = await call(server, "GET", "/api/admin/conversations/api/%FF%FE")
    assert (got, payload["error"]) == (404, "not_found") and "%FF" not in payload["message"]
    await still_works(server)


@pytest.mark.parametrize(("headers", "status", "code"), [
    pytest.param([(b"Authorization", b"Bearer \xff\xfe")], 400, "invalid_authorization",
                 id="authorization_not_utf8_is_400"),
    pytest.param([(b"Authorization", b"Bearer " + TOKEN.encode())] * 2, 400, "duplicate_authorization",
                 id="authorization_twice_is_400"),
    pytest.param([(b"Authorization", "Bearer 管理员".encode())], 401, "unauthorized", id="utf8_wrong_token_is_401"),
    pytest.param([], 401, "unauthorized", id="no_authorization_is_401"),
])
@pytest.mark.parametrize(("method", "path"), [("GET", f"/api/admin/conversations/api/{USER}"),
                                              ("DELETE", f"/api/admin/conversations/api/{USER}"),
                                              ("POST", "/api/agent/reply"), ("POST", "/api/agent/release")])
async def test_hostile_authorization(server: TestServer, headers: list[tuple[bytes, bytes]], status: int, code: str,
                                     method: str, path: str) -> None:
    body = json.dumps({"channel": "api", "user_id": USER, "text": "hi"}).encode() if method == "POST" else b""
    got, payload = await raw_request(server, method, path.encode(), headers, body)
    assert (got, error_of(payload)["error"]) == (status, code)
    assert TOKEN not in payload.decode("utf-8", "replace")
    await still_works(server)


async def test_not_found_does_not_echo_the_address(server: TestServer) -> None:
    phone = "13800138000"
    got, payload = await call(server, "GET", f"/api/admin/conversations/api/{phone}?tenant=corp-secret-name")
    assert got == 404 and phone not in json.dumps(payload) and "corp-secret-name" not in json.dumps(payload)
    got, payload = await call(server, "POST", "/api/agent/reply",
                              json.dumps({"channel": phone, "user_id": "u", "text": "hi"}))
    assert got == 404 and phone not in json.dumps(payload)
