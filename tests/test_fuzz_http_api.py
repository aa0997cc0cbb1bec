"""A property-based fuzz of every HTTP operation in docs/openapi.yaml that takes input.

The operations come from the published description, so a route added there is fuzzed without touching
this file (and tests/test_openapi.py keeps the description and the app's routes the same). For each
one, hypothesis sends requests that are valid-shaped (from the operation's schemas and parameters,
with the credentials its ``security`` names) and hostile (a field swapped for a lone surrogate, a
number where text belongs or the reverse, "²", 10^400, NaN, JSON nested thousands deep, arbitrary
JSON, arbitrary bytes; query and path values with escapes that are not UTF-8, repeated parameters,
header bytes that are not UTF-8) over raw HTTP, to a real server with its state in a real Redis.

What must hold, for every request: no 500 (nor any 5xx the description does not give the operation,
such as a retry-later 503), every error is a JSON ``{"error", "message"}``, and the server still
answers a good question at the end.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.config import ROOT
from tests.conftest import make_config, start_server

SPEC = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text(encoding="utf-8"))
METHODS = ("get", "post", "put", "patch", "delete", "options")
API_KEY = "fuzz-api-key-0123456789"
ADMIN_TOKEN = "fuzz-admin-token-0123456789"
DINGTALK_SECRET = "fuzz-dingtalk-app-secret"
CLOSED = "http://127.0.0.1:9"  # platform APIs: a closed loopback port, so a reply attempt fails at once
EXAMPLES = 60
ORIGIN = SPEC["components"]["parameters"]["Origin"]["example"]  # configured as allowed below


# ---------------------------------------------------------------- the description
def resolve(node: Any) -> Any:
    """Follow local ``$ref``s and merge ``allOf`` (all the description uses)."""
    if isinstance(node, dict) and "$ref" in node:
        target: Any = SPEC
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return resolve(target)
    if isinstance(node, dict) and "allOf" in node:
        merged: dict[str, Any] = {k: v for k, v in node.items() if k != "allOf"}
        for part in map(resolve, node["allOf"]):
            for key, value in part.items():
                if key == "properties":
                    merged.setdefault("properties", {}).update(value)
                elif key == "required":
                    merged["required"] = [*merged.get("required", []), *value]
                else:
                    merged.setdefault(key, value)
        return merged
    return node


@dataclass(frozen=True)
class Operation:
    path: str
    method: str
    op_id: str
    body: dict[str, Any] | None  # the JSON body's schema
    raw_body: bool  # a non-JSON body (WeCom's XML): arbitrary bytes
    params: tuple[dict[str, Any], ...]
    security: tuple[str, ...]
    retry_later: frozenset[int]  # the 5xx answers the description gives the operation (503 busy, 502 platform)


def operations() -> list[Operation]:
    found = []
    for path, item in SPEC["paths"].items():
        shared = [resolve(p) for p in item.get("parameters", [])]
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            content = resolve(op.get("requestBody", {})).get("content", {})
            body = resolve(content["application/json"]["schema"]) if "application/json" in content else None
            params = tuple(shared + [resolve(p) for p in op.get("parameters", [])])
            security = tuple(name for req in op.get("security", []) for name in req)
            documented_5xx = frozenset(int(code) for code in op["responses"] if str(code).startswith("5"))
            found.append(Operation(path, method.upper(), op["operationId"], body, bool(content) and body is None,
                                   params, security, documented_5xx))
    return found


def takes_input(op: Operation) -> bool:
    return op.body is not None or op.raw_body or bool(op.params)


FUZZED = [op for op in operations() if takes_input(op)]


def test_every_operation_that_takes_input_is_fuzzed() -> None:
    """The routes a client can feed: every JSON body, every parameter (nothing skipped by name)."""
    ids = {op.op_id for op in FUZZED}
    assert {"chat", "webSession", "webMessage", "webStream", "webFeedback", "agentReply", "agentRelease",
            "adminGetConversation", "adminEraseConversation", "dingtalkCallback", "wecomAibotCallback"} <= ids
    assert all(op.body is not None for op in operations() if op.method == "POST" and op.path.startswith("/api/"))


# ---------------------------------------------------------------- hostile pieces
surrogate_text = st.builds(lambda a, s, b: a + s + b, st.text(max_size=5),
                           st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), st.text(max_size=5))
deep = st.integers(min_value=33, max_value=3000).flatmap(
    lambda n: st.sampled_from(["[" * n + "]" * n, '{"a":' * n + "1" + "}" * n]))
json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
# A JSON fragment where a field's value goes: each is something an entry point must refuse or take safely.
hostile_fragment = st.one_of(
    surrogate_text.map(json.dumps),  # "\ud800" escapes
    st.sampled_from(["1e999", "-1e999", "1" + "0" * 400, "-1" + "0" * 30, str(2**64), str(-(2**63) - 1), "NaN",
                     "Infinity", '"²"', '"١٢٣"', '"1_000"', '" 12 "', '"0x10"', "true", "false", "null", "0", "-1",
                     "{}", "[]", '""', '"' + "长" * 3000 + '"', '"a\\u0000b"', '"\\r\\nX-Injected: 1"']),
    deep,
    json_values.map(lambda v: json.dumps(v, ensure_ascii=False)),
)


def string_of(schema: dict[str, Any], example: str | None = None) -> st.SearchStrategy[str]:
    """Text of the schema; a parameter's documented example half the time (an Origin the server
    allows, an app it has), so requests get past the gate to the code behind it."""
    if example is not None:
        return st.one_of(st.just(example), st.just(example), st.just(example), string_of(schema))
    if "pattern" in schema:
        return st.from_regex(schema["pattern"].removeprefix("^").removesuffix("$"), fullmatch=True)
    return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 40), 40))


def valid(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A value of the schema's shape (no more precise than the checks need); its documented
    ``examples`` often, so a request gets past "no such channel" to the code behind it."""
    schema = resolve(schema)
    if schema.get("examples"):
        rest = {k: v for k, v in schema.items() if k != "examples"}
        return st.one_of(st.sampled_from(schema["examples"]), st.sampled_from(schema["examples"]), valid(rest))
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next(k for k in kind if k != "null")
    if kind == "string":
        return string_of(schema)
    if kind == "integer":
        return st.integers(min_value=schema.get("minimum", -(10**6)), max_value=schema.get("maximum", 10**13))
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "array":
        return st.lists(valid(schema.get("items", {})), max_size=3)
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries({k: valid(v) for k, v in props.items() if k in required},
                                     optional={k: valid(v) for k, v in props.items() if k not in required})
    return json_values


@st.composite
def json_body(draw: st.DrawFn, schema: dict[str, Any]) -> bytes:
    """Mostly the schema's shape with some fields swapped for hostile fragments; sometimes anything."""
    choice = draw(st.sampled_from(["valid", "valid", "mutated", "mutated", "mutated", "any_json", "raw"]))
    if choice == "any_json":
        return json.dumps(draw(json_values)).encode()
    if choice == "raw":
        return draw(st.one_of(st.binary(max_size=64), deep.map(str.encode),
                              st.sampled_from([b"", b"null", b"[]", b'"x"', b"{", b"\xff\xfe{}"])))
    value = draw(valid(schema))
    fragments = {k: json.dumps(v, ensure_ascii=False) for k, v in value.items()}
    if choice == "mutated":
        names = sorted({*fragments, *resolve(schema).get("properties", {})})
        for name in draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True)):
            fragments[name] = draw(hostile_fragment)
        if draw(st.booleans()):
            fragments[draw(surrogate_text | st.text(max_size=8))] = draw(hostile_fragment)  # an unread field
    return ("{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in fragments.items()) + "}").encode()


# query / path values: text percent-encoded, or bytes escaped as they are (so %ff and %ED%A0%80 occur)
encoded_value = st.one_of(
    st.text(max_size=30).map(lambda t: urllib.parse.quote(t, safe="")),
    st.binary(max_size=12).map(lambda b: urllib.parse.quote_from_bytes(b, safe="")),
    st.sampled_from(["", "%ff", "%ED%A0%80", "%C0%AF", "%00", "%0d%0a", "%2F", "..", "1-0", "%C2%B2-0", "%D9%A1-0",
                     "18446744073709551616-0", "9" * 200]),
)


def header_safe(raw: bytes) -> bytes:
    """Bytes HTTP allows in a header value (control characters end the request in aiohttp's parser,
    before any route); the high bytes that are not UTF-8 stay."""
    return bytes(c for c in raw if c >= 0x20 and c != 0x7F)


header_bytes = st.binary(max_size=40).map(header_safe)


@st.composite
def parameters(draw: st.DrawFn, op: Operation) -> tuple[str, list[str], list[tuple[bytes, bytes]]]:
    """The path with its parameters filled, query pairs and headers: valid, absent, hostile or repeated."""
    path, query, headers = op.path, [], []
    for p in op.params:
        name = p["name"]
        mode = draw(st.sampled_from(["valid", "valid", "valid", "hostile", "absent", "twice"]))
        schema, example = resolve(p["schema"]), p.get("example")
        if p["in"] == "path":
            value = (urllib.parse.quote(draw(string_of(schema, example)), safe="")
                     if mode == "valid" else draw(encoded_value)) or "x"
            path = path.replace("{" + name + "}", value)
            continue
        if mode == "absent":
            continue
        if p["in"] == "query":
            values = [urllib.parse.quote(draw(string_of(schema, example)), safe="") if mode == "valid"
                      else draw(encoded_value) for _ in range(2 if mode == "twice" else 1)]
            query += [f"{urllib.parse.quote(name)}={v}" for v in values]
        elif p["in"] == "header":
            values_b = [header_safe(draw(string_of(schema, example)).encode()) if mode == "valid"
                        else draw(header_bytes)
                        for _ in range(2 if mode == "twice" else 1)]
            headers += [(name.encode(), v) for v in values_b]
    return path, query, headers


# ---------------------------------------------------------------- the server
@dataclass
class Site:
    server: TestServer
    web_token: str

    def credentials(self, op: Operation) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        for scheme in op.security:
            if scheme == "apiKey":
                out.append((b"Authorization", f"Bearer {API_KEY}".encode()))
            elif scheme == "webSession":
                out.append((b"Authorization", f"Bearer {self.web_token}".encode()))
            elif scheme == "adminToken":
                out.append((b"Authorization", f"Bearer {ADMIN_TOKEN}".encode()))
            elif scheme == "dingtalkSign":
                ts = str(int(time.time() * 1000))
                digest = hmac.new(DINGTALK_SECRET.encode(), f"{ts}\n{DINGTALK_SECRET}".encode(), hashlib.sha256)
                out += [(b"timestamp", ts.encode()), (b"sign", base64.b64encode(digest.digest()))]
        return out


@pytest.fixture
async def site(redis_url: str, key_prefix: str) -> AsyncIterator[Site]:
    """Every channel on, state in Redis, rate limits out of the way (they answer 429 correctly, but
    would stop the fuzz from reaching the decoders), platform APIs on a closed port."""
    config = make_config({
        "state.url": redis_url, "state.key_prefix": key_prefix,
        "api.keys": f"[{API_KEY}]", "api.rate_per_client_per_min": 1_000_000,
        "admin.token": ADMIN_TOKEN,
        "web.session_secret": "fuzz-web-secret-0123456789", "web.allowed_origins": f"[{ORIGIN}]",
        "web.rate_per_session_per_min": 1_000_000,
        "web.rate_per_ip_per_min": 1_000_000, "web.heartbeat_s": 1,
        "wecom.corp_id": "wwfuzz0123456789", "wecom.token": "fuzzToken", "wecom.aes_key": "a" * 43,
        "wecom.secret": "fuzz-wecom-secret", "wecom.agent_id": 1000002, "wecom.api_base": CLOSED,
        "wecom.apps.shop.token": "fuzzShopToken", "wecom.apps.shop.aes_key": "c" * 43,
        "wecom.aibot_token": "fuzzAibot", "wecom.aibot_aes_key": "b" * 43,
        "dingtalk.app_key": "fuzz-app-key", "dingtalk.app_secret": DINGTALK_SECRET, "dingtalk.api_base": CLOSED,
    })
    server = await start_server(config)
    try:
        async with aiohttp.ClientSession() as http, http.post(server.make_url("/api/web/session"), json={}) as r:
            assert r.status == 200
            token = (await r.json())["token"]
        yield Site(server, token)
        async with aiohttp.ClientSession() as http, http.post(  # still serving after everything above
                server.make_url("/chat"), json={"query": "如何重置密码"},
                headers={"Authorization": f"Bearer {API_KEY}"}) as r:
            assert r.status == 200 and "忘记密码" in (await r.json())["answer"]
    finally:
        await server.close()


async def send(server: TestServer, method: str, target: str, headers: list[tuple[bytes, bytes]],
               body: bytes) -> tuple[int, bytes, bytes]:
    """One raw HTTP/1.1 request; (status, head, body). An event stream is cut once its head arrives."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        lines = [f"{method} {target} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close",
                 b"Content-Length: " + str(len(body)).encode(), *(k + b": " + v for k, v in headers)]
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        status = int(head.split(b" ", 2)[1])
        if b"text/event-stream" in head.lower():
            return status, head, b""
        payload = await asyncio.wait_for(reader.read(), 30)
        if b"transfer-encoding: chunked" in head.lower():
            payload = dechunk(payload)
        return status, head, payload
    finally:
        writer.close()


def dechunk(raw: bytes) -> bytes:
    out, rest = b"", raw
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2:]
    return out


@st.composite
def requests(draw: st.DrawFn, op: Operation) -> tuple[str, list[tuple[bytes, bytes]], bytes]:
    path, query, headers = draw(parameters(op))
    if op.body is not None:
        body = draw(json_body(op.body))
    elif op.raw_body:
        body = draw(st.binary(max_size=256) | st.sampled_from([b"<xml><Encrypt>x</Encrypt></xml>", b"<!DOCTYPE"]))
    else:
        body = b""
    target = path + ("?" + "&".join(query) if query else "")
    return target, headers, body


@pytest.mark.parametrize("op", FUZZED, ids=[f"{op.method} {op.path}" for op in FUZZED])
async def test_no_input_gets_a_500_or_a_non_json_error(site: Site, op: Operation) -> None:
    loop = asyncio.get_running_loop()
    seen: dict[int, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                     HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        """Hypothesis drives this in a worker thread; each request runs on the server's own loop."""
        target, headers, body = data.draw(requests(op))
        request = send(site.server, op.method, target, site.credentials(op) + headers, body)
        status, head, payload = asyncio.run_coroutine_threadsafe(request, loop).result(60)
        seen[status] = seen.get(status, 0) + 1
        assert status < 500 or status in op.retry_later, (status, target, body[:200], payload[:300])
        if status >= 400:
            assert b"application/json" in head.lower(), (status, target, head, payload[:300])
            error = json.loads(payload)
            assert set(error) == {"error", "message"} and isinstance(error["error"], str), error

    await asyncio.to_thread(run)
    assert seen, "no request was sent"
