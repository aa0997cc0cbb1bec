"""POST /chat as an attacker sends it: every hostile body or header gets a 4xx JSON error naming the
field (never its value), and the same server answers a good question right after."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.adapters.rawhttp import error_of, raw_request
from tests.conftest import make_config, start_server

KEY = "chat-key-0123456789"
GOOD = '{"query": "如何重置密码"}'


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    srv = await start_server(make_config({"api.keys": f"[{KEY}]"}))
    yield srv
    await srv.close()


async def post(server: TestServer, body: bytes | str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    hdrs = {"Authorization": f"Bearer {KEY}", **(headers or {})}
    async with aiohttp.ClientSession() as s, s.post(server.make_url("/chat"), data=body, headers=hdrs) as r:
        return r.status, await r.json()


async def still_answers(server: TestServer) -> None:
    status, body = await post(server, GOOD)
    assert status == 200 and "忘记密码" in body["answer"], body


ATTACKS = [
    pytest.param("[" * 5000 + "]" * 5000, "invalid_json", id="json_nested_5000_levels_is_400"),
    pytest.param('{"query": ' + '{"a":' * 3000 + "1" + "}" * 3000 + "}", "invalid_json",
                 id="json_object_nested_3000_levels_is_400"),
    pytest.param('{"query": "\\ud800"}', "invalid_json", id="lone_surrogate_in_query_is_400"),
    pytest.param('{"query": "hi", "context": "\\udc00"}', "invalid_json", id="lone_surrogate_in_context_is_400"),
    pytest.param('{"query": "hi", "user_id": "\\ud800x"}', "invalid_json", id="lone_surrogate_in_user_id_is_400"),
    pytest.param('{"query": "hi", "\\ud800": 1}', "invalid_json", id="lone_surrogate_in_a_key_is_400"),
    pytest.param('{"query": "hi", "extra": ["\\udfff"]}', "invalid_json",
                 id="lone_surrogate_in_an_unread_field_is_400"),
    pytest.param('{"query": 42}', "invalid_query", id="number_as_query_is_400"),
    pytest.param('{"query": ["如何重置密码"]}', "invalid_query", id="list_as_query_is_400"),
    pytest.param('{"query": "hi", "user_id": 12345}', "invalid_user_id", id="number_as_user_id_is_400"),
    pytest.param('{"query": "hi", "user_id": true}', "invalid_user_id", id="boolean_as_user_id_is_400"),
    pytest.param('{"query": "hi", "user_id": 1e400}', "invalid_json", id="infinite_number_as_user_id_is_400"),
    pytest.param('{"query": "hi", "user_id": 1' + "0" * 30 + "}", "invalid_user_id",
                 id="huge_number_as_user_id_is_400"),
    pytest.param('{"query": "hi", "user_id": "a\\nFAKE LOG LINE"}', "invalid_user_id",
                 id="control_characters_in_user_id_is_400"),
    pytest.param('{"query": "hi", "user_id": "' + "u" * 129 + '"}', "invalid_user_id", id="user_id_129_chars_is_400"),
    pytest.param('{"query": "hi", "context": 5}', "invalid_context", id="number_as_context_is_400"),
    pytest.param('{"query": "hi", "context": {"role": "system"}}', "invalid_context", id="object_as_context_is_400"),
    pytest.param(json.dumps({"query": "长" * 2001}, ensure_ascii=False), "query_too_long",
                 id="query_2001_chars_is_400"),
    pytest.param(json.dumps({"query": "hi", "context": "忽" * 4001}, ensure_ascii=False), "context_too_long",
                 id="context_4001_chars_is_400"),
    pytest.param('{"query": NaN}', "invalid_json", id="nan_is_400"),
    pytest.param("", "invalid_json", id="empty_body_is_400"),
    pytest.param("null", "invalid_json", id="null_body_is_400"),
    pytest.param('"如何重置密码"', "invalid_json", id="string_body_is_400"),
    pytest.param(b"\xff\xfe{}", "invalid_json", id="body_not_utf8_is_400"),
    pytest.param("query=如何重置密码", "invalid_json", id="form_encoded_body_is_400"),
    pytest.param('{"query": "hi"} trailing', "invalid_json", id="trailing_garbage_is_400"),
]


@pytest.mark.parametrize(("body", "code"), ATTACKS)
async def test_hostile_body(server: TestServer, body: str | bytes, code: str) -> None:
    status, payload = await post(server, body)
    assert (status, payload["error"]) == (400, code), payload
    assert set(payload) == {"error", "message"}
    await still_answers(server)


async def test_query_of_2000_chinese_characters_is_taken(server: TestServer) -> None:
    """The cap is in characters: 2000 Chinese characters (6000 UTF-8 bytes) are a legitimate question."""
    status, body = await post(server, json.dumps({"query": "请" * 2000}, ensure_ascii=False))
    assert status == 200 and body["answer"]


async def test_body_over_the_limit_is_413(server: TestServer) -> None:
    status, payload = await post(server, json.dumps({"query": "x" * 70_000}))
    assert (status, payload["error"]) == (413, "body_too_large")
    await still_answers(server)


async def test_json_sent_as_text_plain_is_read_as_json(server: TestServer) -> None:
    """The Content-Type is not what decides: a JSON body is read as JSON whatever it says."""
    status, body = await post(server, GOOD, {"Content-Type": "text/plain"})
    assert status == 200 and body["answer"]


@pytest.mark.parametrize(("headers", "status", "code"), [
    pytest.param([(b"Authorization", b"Bearer \xff\xfe")], 400, "invalid_authorization",
                 id="authorization_not_utf8_is_400"),
    pytest.param([(b"Authorization", b"Bearer " + KEY.encode() + b"\xc3")], 400, "invalid_authorization",
                 id="valid_key_plus_a_broken_byte_is_400"),
    pytest.param([(b"Authorization", b"Bearer " + KEY.encode())] * 2, 400, "duplicate_authorization",
                 id="authorization_twice_is_400"),
    pytest.param([(b"Authorization", "Bearer sécret".encode())], 401, "unauthorized", id="utf8_wrong_key_is_401"),
    pytest.param([(b"Authorization", b"Bearer")], 401, "unauthorized", id="bearer_without_key_is_401"),
    pytest.param([(b"Authorization", b"Basic " + KEY.encode())], 401, "unauthorized", id="basic_scheme_is_401"),
    pytest.param([], 401, "unauthorized", id="no_authorization_is_401"),
])
async def test_hostile_authorization(server: TestServer, headers: list[tuple[bytes, bytes]], status: int,
                                     code: str) -> None:
    got, payload = await raw_request(server, "POST", b"/chat", headers, GOOD.encode())
    assert (got, error_of(payload)["error"]) == (status, code)
    assert KEY not in payload.decode("utf-8", "replace")
    await still_answers(server)


async def test_content_type_not_utf8_is_ignored(server: TestServer) -> None:
    status, payload = await raw_request(server, "POST", b"/chat", [
        (b"Authorization", b"Bearer " + KEY.encode()), (b"Content-Type", b"application/\xff")], GOOD.encode())
    assert status == 200 and json.loads(payload)["answer"]


async def test_errors_do_not_echo_the_value(server: TestServer) -> None:
    secret = "13800138000-我的手机号"
    for body in ({"query": "hi", "user_id": secret * 10}, {"query": "hi", "context": [secret]},
                 {"query": {"text": secret}}):
        status, payload = await post(server, json.dumps(body, ensure_ascii=False))
        assert status == 400 and secret not in json.dumps(payload, ensure_ascii=False)
    await still_answers(server)
