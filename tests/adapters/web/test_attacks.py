"""The widget API (/api/web/*) as an attacker calls it: hostile bodies, headers, cursors and query
parameters each get a 4xx JSON error (with the CORS headers an allowed page needs to read it), never a
500, and the same server keeps serving the visitor right after."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.adapters.rawhttp import error_of, raw_request

from .conftest import Web, WebServerFactory, auth, new_session

SHOP = "https://shop.example"
RESET = "如何重置密码？"
DEEP = "[" * 5000 + "]" * 5000


@pytest.fixture
async def site(web_server: WebServerFactory, redis_url: str, key_prefix: str) -> tuple[TestServer, Web]:
    """A server in production shape: state and the event log in a real Redis, one allowed origin."""
    return await web_server({"state.url": redis_url, "state.key_prefix": key_prefix,
                             "web.allowed_origins": f"[{SHOP}]"})


async def still_serves(http: aiohttp.ClientSession, server: TestServer, token: str) -> None:
    """A good message is accepted and the history answers: the attack left nothing broken."""
    async with http.post(server.make_url("/api/web/messages"), json={"text": RESET}, headers=auth(token)) as resp:
        assert resp.status == 202, await resp.text()
    async with http.get(server.make_url("/api/web/history"), headers=auth(token)) as resp:
        assert resp.status == 200, await resp.text()


async def post(http: aiohttp.ClientSession, server: TestServer, path: str, body: str | bytes,
               token: str | None) -> tuple[int, dict[str, Any], aiohttp.typedefs.LooseHeaders]:
    headers = {"Origin": SHOP, **(auth(token) if token else {})}
    async with http.post(server.make_url(path), data=body, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers


# ---------------------------------------------------------------- bodies
MESSAGE_ATTACKS = [
    pytest.param(DEEP, "invalid_json", id="json_nested_5000_levels_is_400"),
    pytest.param('{"text": "\\ud800"}', "invalid_json", id="lone_surrogate_in_text_is_400"),
    pytest.param('{"text": "hi", "client_id": "\\ud800abcdefgh"}', "invalid_json",
                 id="lone_surrogate_in_client_id_is_400"),
    pytest.param('{"text": "hi", "context": "\\udc00 page"}', "invalid_json", id="lone_surrogate_in_context_is_400"),
    pytest.param('{"text": 5}', "invalid_text", id="number_as_text_is_400"),
    pytest.param('{"text": "  "}', "invalid_text", id="blank_text_is_400"),
    pytest.param('{"text": "hi", "client_id": 12345678}', "invalid_client_id", id="number_as_client_id_is_400"),
    pytest.param('{"text": "hi", "client_id": 1' + "0" * 40 + "}", "invalid_client_id",
                 id="huge_number_as_client_id_is_400"),
    pytest.param('{"text": "hi", "client_id": "../../etc/passwd"}', "invalid_client_id",
                 id="path_as_client_id_is_400"),
    pytest.param('{"text": "hi", "context": 5}', "invalid_context", id="number_as_context_is_400"),
    pytest.param('{"text": "hi", "context": ["x"]}', "invalid_context", id="list_as_context_is_400"),
    pytest.param(json.dumps({"text": "长" * 2001}, ensure_ascii=False), "message_too_long",
                 id="text_2001_chars_is_400"),
    pytest.param("", "invalid_json", id="empty_body_is_400"),
    pytest.param("null", "invalid_json", id="null_body_is_400"),
    pytest.param(b"\xff{}", "invalid_json", id="body_not_utf8_is_400"),
    pytest.param('{"text": Infinity}', "invalid_json", id="infinity_is_400"),
]


@pytest.mark.parametrize(("body", "code"), MESSAGE_ATTACKS)
async def test_hostile_message_body(site: tuple[TestServer, Web], http: aiohttp.ClientSession, body: str,
                                    code: str) -> None:
    server, _ = site
    token = (await new_session(http, server))["token"]
    status, payload, headers = await post(http, server, "/api/web/messages", body, token)
    assert (status, payload["error"]) == (400, code), payload
    assert headers["Access-Control-Allow-Origin"] == SHOP  # the widget can read why
    await still_serves(http, server, token)


SESSION_ATTACKS = [
    pytest.param(DEEP, 400, "invalid_json", id="json_nested_5000_levels_is_400"),
    pytest.param('{"token": "\\ud800"}', 400, "invalid_json", id="lone_surrogate_in_token_is_400"),
    pytest.param('{"token": 5}', 400, "invalid_token", id="number_as_token_is_400"),
    pytest.param('{"token": ["v1"]}', 400, "invalid_token", id="list_as_token_is_400"),
    pytest.param(json.dumps({"token": "v1." + "a" * 600}), 400, "invalid_token", id="token_600_chars_is_400"),
    pytest.param("[]", 400, "invalid_json", id="list_body_is_400"),
]


@pytest.mark.parametrize(("body", "status", "code"), SESSION_ATTACKS)
async def test_hostile_session_body(site: tuple[TestServer, Web], http: aiohttp.ClientSession, body: str,
                                    status: int, code: str) -> None:
    server, _ = site
    got, payload, headers = await post(http, server, "/api/web/session", body, None)
    assert (got, payload["error"]) == (status, code), payload
    assert headers["Access-Control-Allow-Origin"] == SHOP
    await still_serves(http, server, (await new_session(http, server))["token"])


@pytest.mark.parametrize("expiry", ["²", "١٧٩٩٩٩٩٩٩٩", "9" * 400, "-1", "1e10", ""])
async def test_forged_token_with_a_strange_expiry_starts_a_new_session(
    site: tuple[TestServer, Web], http: aiohttp.ClientSession, expiry: str
) -> None:
    """A token whose expiry int() would refuse or choke on is just not ours: a fresh session, no 500."""
    server, _ = site
    forged = f"v1.{'a' * 32}.{expiry}.c2lnbmF0dXJl"
    status, body, _ = await post(http, server, "/api/web/session", json.dumps({"token": forged}), None)
    assert status == 200 and body["renewed"] is False and body["session_id"] != "a" * 32
    async with http.get(server.make_url("/api/web/history"), headers=auth(forged)) as resp:
        assert resp.status == 401 and (await resp.json())["error"] == "invalid_token"
    await still_serves(http, server, body["token"])


FEEDBACK_ATTACKS = [
    pytest.param(DEEP, "invalid_json", id="json_nested_5000_levels_is_400"),
    pytest.param('{"answer_id": "\\ud800", "rating": "up"}', "invalid_json", id="lone_surrogate_in_answer_id_is_400"),
    pytest.param('{"answer_id": "fb-000001", "rating": "\\udfff"}', "invalid_json",
                 id="lone_surrogate_in_rating_is_400"),
    pytest.param('{"answer_id": 12345, "rating": "up"}', "invalid_answer_id", id="number_as_answer_id_is_400"),
    pytest.param('{"answer_id": "fb-000001", "rating": 1}', "invalid_rating", id="number_as_rating_is_400"),
    pytest.param('{"answer_id": "fb-000001", "rating": ["up"]}', "invalid_rating", id="list_as_rating_is_400"),
    pytest.param('{"answer_id": "fb-000001", "rating": {"up": 1}}', "invalid_rating", id="object_as_rating_is_400"),
    pytest.param('{"answer_id": "fb-000001", "rating": true}', "invalid_rating", id="boolean_as_rating_is_400"),
    pytest.param('{"answer_id": "fb-000001"}', "invalid_rating", id="missing_rating_is_400"),
    pytest.param('{"answer_id": "' + "a" * 81 + '", "rating": "up"}', "invalid_answer_id",
                 id="answer_id_81_chars_is_400"),
    pytest.param("", "invalid_json", id="empty_body_is_400"),
]


@pytest.mark.parametrize(("body", "code"), FEEDBACK_ATTACKS)
async def test_hostile_feedback_body(site: tuple[TestServer, Web], http: aiohttp.ClientSession, body: str,
                                     code: str) -> None:
    server, web = site
    token = (await new_session(http, server))["token"]
    async with http.post(server.make_url("/api/web/messages"), json={"text": RESET, "client_id": "fb-000001"},
                         headers=auth(token)) as resp:
        assert resp.status == 202
    await web.services.hub.drain(10)
    status, payload, headers = await post(http, server, "/api/web/feedback", body, token)
    assert (status, payload["error"]) == (400, code), payload
    assert headers["Access-Control-Allow-Origin"] == SHOP
    status, payload, _ = await post(http, server, "/api/web/feedback",
                                    json.dumps({"answer_id": "fb-000001", "rating": "up"}), token)
    assert status == 200 and payload["ok"] is True  # the real vote still counts


# ---------------------------------------------------------------- headers
@pytest.mark.parametrize(("path", "method"), [("/api/web/session", "POST"), ("/api/web/messages", "POST"),
                                              ("/api/web/history", "GET"), ("/api/web/feedback", "POST"),
                                              ("/api/web/stream", "GET"), ("/api/web/session", "OPTIONS")])
async def test_origin_not_utf8_is_400_and_not_echoed(site: tuple[TestServer, Web], http: aiohttp.ClientSession,
                                                      path: str, method: str) -> None:
    server, _ = site
    status, payload = await raw_request(server, method, path.encode(), [(b"Origin", b"https://\xff\xfe.example")],
                                        b"{}" if method == "POST" else b"")
    assert (status, error_of(payload)["error"]) == (400, "invalid_origin")
    await still_serves(http, server, (await new_session(http, server))["token"])


async def test_origin_twice_is_400(site: tuple[TestServer, Web], http: aiohttp.ClientSession) -> None:
    server, _ = site
    status, payload = await raw_request(server, "POST", b"/api/web/session",
                                        [(b"Origin", SHOP.encode()), (b"Origin", b"https://evil.example")], b"{}")
    assert (status, error_of(payload)["error"]) == (400, "duplicate_origin")
    await still_serves(http, server, (await new_session(http, server))["token"])


async def test_refused_origin_is_not_echoed(site: tuple[TestServer, Web], http: aiohttp.ClientSession) -> None:
    server, _ = site
    async with http.post(server.make_url("/api/web/session"), json={},
                         headers={"Origin": "https://evil.example/<script>"}) as resp:
        assert resp.status == 403
        assert "evil" not in await resp.text()


@pytest.mark.parametrize(("value", "code"), [
    pytest.param(b"Bearer \xff\xfe", "invalid_authorization", id="authorization_not_utf8_is_400"),
    pytest.param(b"Bearer v1.\xc3", "invalid_authorization", id="token_with_a_broken_byte_is_400"),
])
async def test_hostile_authorization(site: tuple[TestServer, Web], http: aiohttp.ClientSession, value: bytes,
                                     code: str) -> None:
    server, _ = site
    for path, method in (("/api/web/messages", "POST"), ("/api/web/history", "GET"), ("/api/web/stream", "GET")):
        status, payload = await raw_request(server, method, path.encode(),
                                            [(b"Authorization", value), (b"Origin", SHOP.encode())], b'{"text":"hi"}')
        assert (status, error_of(payload)["error"]) == (400, code)
    await still_serves(http, server, (await new_session(http, server))["token"])


async def test_authorization_twice_is_400(site: tuple[TestServer, Web], http: aiohttp.ClientSession) -> None:
    server, _ = site
    token = (await new_session(http, server))["token"]
    status, payload = await raw_request(server, "POST", b"/api/web/messages",
                                        [(b"Authorization", f"Bearer {token}".encode())] * 2, b'{"text":"hi"}')
    assert (status, error_of(payload)["error"]) == (400, "duplicate_authorization")
    await still_serves(http, server, token)


@pytest.mark.parametrize("token", [f"v1.{'a' * 32}.²³.sig", f"v1.{'a' * 32}.{'9' * 5000}.sig",
                                   f"v1.{'a' * 32}.1.{'s' * 5000}", "v1." + "." * 3000, "v1" * 3000])
async def test_malformed_tokens_are_401(site: tuple[TestServer, Web], http: aiohttp.ClientSession,
                                        token: str) -> None:
    server, _ = site
    async with http.get(server.make_url("/api/web/history"), headers=auth(token)) as resp:
        assert resp.status == 401 and (await resp.json())["error"] == "invalid_token"
    await still_serves(http, server, (await new_session(http, server))["token"])


async def test_forwarded_for_not_utf8_is_400_when_trusted(web_server: WebServerFactory,
                                                          http: aiohttp.ClientSession) -> None:
    server, _ = await web_server({"web.trust_forwarded_for": "true"})
    status, payload = await raw_request(server, "POST", b"/api/web/session", [(b"X-Forwarded-For", b"10.0.0.\xff")],
                                        b"{}")
    assert (status, error_of(payload)["error"]) == (400, "invalid_x_forwarded_for")
    status, _ = await raw_request(server, "POST", b"/api/web/session",  # two headers are one list
                                  [(b"X-Forwarded-For", b"10.0.0.1"), (b"X-Forwarded-For", b"10.0.0.2")], b"{}")
    assert status == 200
    await still_serves(http, server, (await new_session(http, server))["token"])


# ---------------------------------------------------------------- stream cursors
async def stream_status(server: TestServer, headers: list[tuple[bytes, bytes]], target: bytes) -> tuple[int, bytes]:
    """The status of a stream request; a 200 stream is cut after its first bytes."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        lines = [b"GET " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close",
                 *(name + b": " + value for name, value in headers)]
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status = int(head.split(b" ", 2)[1])
        if status != 200:  # the JSON error, whole (the connection closes after it)
            return status, await asyncio.wait_for(reader.read(), 10)
        return status, await asyncio.wait_for(reader.readuntil(b"retry:"), 10)  # the stream's first event
    finally:
        writer.close()


CURSOR_ATTACKS = [
    pytest.param([(b"Last-Event-ID", "١٢٣-0".encode())], b"", "invalid_event_id", id="arabic_indic_digits_is_400"),
    pytest.param([(b"Last-Event-ID", "²-0".encode())], b"", "invalid_event_id", id="superscript_digits_is_400"),
    pytest.param([(b"Last-Event-ID", b"18446744073709551616-0")], b"", "invalid_event_id",
                 id="milliseconds_past_64_bits_is_400"),
    pytest.param([(b"Last-Event-ID", b"1-18446744073709551616")], b"", "invalid_event_id",
                 id="sequence_past_64_bits_is_400"),
    pytest.param([(b"Last-Event-ID", b"9" * 5000 + b"-0")], b"", "invalid_last_event_id",
                 id="cursor_5000_digits_is_400"),
    pytest.param([(b"Last-Event-ID", b"1-0\xff")], b"", "invalid_last_event_id", id="cursor_not_utf8_is_400"),
    pytest.param([(b"Last-Event-ID", b"1-0"), (b"Last-Event-ID", b"2-0")], b"", "duplicate_last_event_id",
                 id="cursor_header_twice_is_400"),
    pytest.param([], b"?after=1-0&after=2-0", "duplicate_after", id="after_twice_is_400"),
    pytest.param([], b"?after=%ff-0", "invalid_after", id="after_percent_escape_not_utf8_is_400"),
    pytest.param([], b"?after=%ED%A0%80-0", "invalid_after", id="after_encoded_surrogate_is_400"),
    pytest.param([], b"?after=-1-0", "invalid_event_id", id="negative_cursor_is_400"),
]


@pytest.mark.parametrize(("headers", "query", "code"), CURSOR_ATTACKS)
async def test_hostile_stream_cursor(web_server: WebServerFactory, store_overrides: dict[str, Any],
                                     http: aiohttp.ClientSession, headers: list[tuple[bytes, bytes]], query: bytes,
                                     code: str) -> None:
    server, _ = await web_server(store_overrides)
    token = (await new_session(http, server))["token"]
    status, payload = await stream_status(server, [(b"Authorization", f"Bearer {token}".encode()), *headers],
                                          b"/api/web/stream" + query)
    assert status == 400, payload
    assert code.encode() in payload
    status, first = await stream_status(server, [(b"Authorization", f"Bearer {token}".encode())], b"/api/web/stream")
    assert status == 200 and first.endswith(b"retry:")
    await still_serves(http, server, token)


async def test_largest_stream_id_reads_from_the_end_of_the_log(web_server: WebServerFactory,
                                                               store_overrides: dict[str, Any],
                                                               http: aiohttp.ClientSession) -> None:
    """The top of both 64-bit halves is a valid id but none we gave out: the stream starts at the end."""
    server, _ = await web_server(store_overrides)
    token = (await new_session(http, server))["token"]
    top = b"18446744073709551615-18446744073709551615"
    status, first = await stream_status(server, [(b"Authorization", f"Bearer {token}".encode()),
                                                 (b"Last-Event-ID", top)], b"/api/web/stream")
    assert status == 200 and first.endswith(b"retry:")
    await still_serves(http, server, token)
