"""Console sign-in, sessions and CSRF, through a real aiohttp server and a real KV (memory and Redis).

A tiny app mounts ConsoleAuth's routes plus a protected page, a protected write and an admin-only call, so these
tests need nothing of the console's pages.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher

from bot.config import Config
from bot.console.accounts import Accounts
from bot.console.auth import COOKIE, MSG_BAD_LOGIN, MSG_EXPIRED_FORM, MSG_TOO_MANY, PRE_COOKIE, ConsoleAuth
from bot.http import METRICS_KEY, error_middleware, json_response, read_body
from bot.metrics import Metrics
from bot.state.keys import Keys
from bot.state.kv import MemoryKV, RedisKV, SharedKV
from tests.conftest import make_config

PW = "correct horse battery"
# Production keeps argon2-cffi's defaults (tens of ms and 64 MiB a hash); the tests hash and verify hundreds of
# times, with the same code on cheaper parameters.
CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class CountingAccounts(Accounts):
    def __init__(self, path: Path) -> None:
        super().__init__(path, hasher=CHEAP)
        self.verifications = 0

    def verify(self, name: str, password: str) -> Any:
        self.verifications += 1
        return super().verify(name, password)


class World:
    """One test's setup: config, accounts file, clock, and any number of hub "processes" sharing the KV."""

    def __init__(self, backend: str, redis_url: str, key_prefix: str, tmp_path: Path, stack: AsyncExitStack) -> None:
        self.backend = backend
        self.redis_url = redis_url
        self.key_prefix = key_prefix
        self.path = tmp_path / "agents.yaml"
        self.stack = stack
        self.clock = Clock()
        self.accounts = CountingAccounts(self.path)
        self.memory_kv = MemoryKV()  # one process's memory: shared by the clients of a memory world
        self.accounts.add("alice", PW, display="小王")
        self.accounts.add("boss", PW + "!", role="admin")

    def config(self, **overrides: Any) -> Config:
        base: dict[str, Any] = {"state.key_prefix": self.key_prefix}
        if self.backend == "redis":
            base["state.url"] = self.redis_url
        return make_config({**base, **overrides})

    async def kv(self) -> SharedKV:
        if self.backend == "memory":
            return self.memory_kv
        client = aioredis.from_url(self.redis_url, decode_responses=True)
        self.stack.push_async_callback(client.aclose)
        return RedisKV(client)

    async def client(self, cfg: Config | None = None, accounts: Accounts | None = None) -> TestClient:
        cfg = cfg or self.config()
        auth = ConsoleAuth(cfg, await self.kv(), Keys(cfg.state.key_prefix), accounts or self.accounts,
                           clock=self.clock)
        app = web.Application(middlewares=[error_middleware])
        app[METRICS_KEY] = Metrics()
        app.add_routes(auth.routes())

        async def page(request: web.Request) -> web.Response:
            s = await auth.page_session(request)
            return json_response({"agent": s.agent, "role": s.role, "display": s.display, "csrf": s.csrf})

        async def write(request: web.Request) -> web.Response:
            await read_body(request, cfg.server.max_body_bytes)
            s = await auth.write_session(request)
            return json_response({"ok": True, "agent": s.agent})

        async def admin(request: web.Request) -> web.Response:
            s = await auth.write_session(request)
            auth.require_admin(s)
            return json_response({"ok": True})

        async def api(request: web.Request) -> web.Response:
            s = await auth.api_session(request)
            return json_response({"agent": s.agent})

        app.router.add_get("/console/test/page", page)
        app.router.add_post("/console/test/write", write)
        app.router.add_post("/console/test/admin", admin)
        app.router.add_get("/console/api/test", api)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        self.stack.push_async_callback(client.close)
        return client


@pytest.fixture(params=["memory", "redis"])
async def world(request: pytest.FixtureRequest, redis_url: str, key_prefix: str,
                tmp_path: Path) -> AsyncIterator[World]:
    async with AsyncExitStack() as stack:
        yield World(request.param, redis_url, key_prefix, tmp_path, stack)
        if request.param == "redis":
            client = aioredis.from_url(redis_url, decode_responses=True)
            keys = [k async for k in client.scan_iter(match=f"{key_prefix}:*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()


@pytest.fixture
async def redis_world(redis_url: str, key_prefix: str, tmp_path: Path) -> AsyncIterator[World]:
    async with AsyncExitStack() as stack:
        yield World("redis", redis_url, key_prefix, tmp_path, stack)
        client = aioredis.from_url(redis_url, decode_responses=True)
        keys = [k async for k in client.scan_iter(match=f"{key_prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


# -- helpers ------------------------------------------------------------------------------------------------


def form_csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


async def sign_in(client: TestClient, name: str = "alice", password: str = PW, *, next_path: str | None = None,
                  headers: dict[str, str] | None = None) -> Any:
    client.session.cookie_jar.clear(lambda m: m.key == COOKIE)  # signed in, the login page would redirect
    page = await client.get("/console/login", headers=headers)
    assert page.status == 200
    data = {"name": name, "password": password, "csrf": form_csrf(await page.text())}
    if next_path is not None:
        data["next"] = next_path
    return await client.post("/console/login", data=data, allow_redirects=False, headers=headers)


def cookie(client: TestClient, name: str = COOKIE) -> str | None:
    for morsel in client.session.cookie_jar:
        if morsel.key == name:
            return morsel.value
    return None


def set_cookies(resp: Any) -> dict[str, str]:
    """Raw Set-Cookie headers by cookie name (to check their attributes as the browser gets them)."""
    out = {}
    for header in resp.headers.getall("Set-Cookie", []):
        out[header.split("=", 1)[0]] = header
    return out


async def csrf_of(client: TestClient) -> str:
    resp = await client.get("/console/test/page", allow_redirects=False)
    assert resp.status == 200
    return (await resp.json())["csrf"]


async def page_status(client: TestClient, token: str | None = None) -> int:
    headers = {"Cookie": f"{COOKIE}={token}"} if token else None
    resp = await client.get("/console/test/page", allow_redirects=False, headers=headers)
    return resp.status


# -- sign-in ------------------------------------------------------------------------------------------------


async def test_login_page_dom_and_pre_cookie(world: World) -> None:
    client = await world.client()
    resp = await client.get("/console/login")
    html = await resp.text()
    assert resp.status == 200 and resp.content_type == "text/html"
    assert '<html lang="zh-CN">' in html
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert 'href="/console/static/console.css"' in html
    assert '<form id="login"' in html and 'name="name"' in html and 'type="password" name="password"' in html
    assert 'type="hidden" name="next"' in html and 'type="submit"' in html and "登录" in html
    assert form_csrf(html) == cookie(client, PRE_COOKIE)
    pre = set_cookies(resp)[PRE_COOKIE]
    assert "HttpOnly" in pre and "SameSite=Strict" in pre and "Path=/console" in pre and "Secure" not in pre
    assert resp.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]


async def test_sign_in_sets_session_cookie_and_redirects(world: World) -> None:
    client = await world.client()
    assert await page_status(client) == 303
    resp = await sign_in(client)
    assert resp.status == 303 and resp.headers["Location"] == "/console/inbox"
    session = set_cookies(resp)[COOKIE]
    assert "HttpOnly" in session and "SameSite=Strict" in session and "Path=/console" in session
    assert "Secure" not in session  # plain http, no trusted proxy
    assert len(cookie(client) or "") >= 43
    me = await (await client.get("/console/test/page")).json()
    assert me["agent"] == "alice" and me["role"] == "agent" and me["display"] == "小王"
    assert (await (await client.get("/console/api/test")).json()) == {"agent": "alice"}


async def test_session_record_is_keyed_by_digest_and_holds_no_token(redis_world: World) -> None:
    client = await redis_world.client()
    await sign_in(client)
    token = cookie(client)
    assert token
    raw = aioredis.from_url(redis_world.redis_url, decode_responses=True)
    try:
        found = [k async for k in raw.scan_iter(match=f"{redis_world.key_prefix}:console:session:*")]
        digest = hashlib.sha256(token.encode()).hexdigest()
        assert found == [Keys(redis_world.key_prefix).console_session(digest)]
        value = await raw.get(found[0])
        assert token not in value and token not in found[0]
        assert json.loads(value)["agent"] == "alice"
    finally:
        await raw.aclose()


@pytest.mark.parametrize("overrides, headers, secure", [
    ({"console.cookie_secure": "always"}, {}, True),
    ({"console.cookie_secure": "never", "web.trust_forwarded_for": "true"}, {"X-Forwarded-Proto": "https"}, False),
    ({"web.trust_forwarded_for": "true"}, {"X-Forwarded-Proto": "https"}, True),
    ({"web.trust_forwarded_for": "true"}, {"X-Forwarded-Proto": "http"}, False),
    ({}, {"X-Forwarded-Proto": "https"}, False),  # a proxy header nobody vouches for
])
async def test_secure_attribute(world: World, overrides: dict[str, str], headers: dict[str, str],
                                secure: bool) -> None:
    client = await world.client(world.config(**overrides))
    page = await client.get("/console/login", headers=headers)
    csrf = form_csrf(await page.text())
    pre = set_cookies(page)[PRE_COOKIE].split(";")[0].split("=", 1)[1]
    resp = await client.post("/console/login", data={"name": "alice", "password": PW, "csrf": csrf},
                             headers={**headers, "Cookie": f"{PRE_COOKIE}={pre}"}, allow_redirects=False)
    assert resp.status == 303
    for name in (COOKIE, PRE_COOKIE):
        assert ("Secure" in set_cookies(resp)[name]) is secure
        assert "HttpOnly" in set_cookies(resp)[name] and "SameSite=Strict" in set_cookies(resp)[name]


async def test_wrong_password_and_unknown_name_look_the_same(world: World) -> None:
    client = await world.client()
    wrong = await sign_in(client, "alice", "not the password")
    unknown = await sign_in(client, "zhangsan", PW)
    pages = []
    for resp, name in ((wrong, "alice"), (unknown, "zhangsan")):
        assert resp.status == 401
        html = await resp.text()
        assert f'class="flash-error" role="alert">{MSG_BAD_LOGIN}<' in html
        assert COOKIE not in set_cookies(resp)
        pages.append(re.sub(r'value="[^"]*"', 'value=""', html).replace(name, ""))
    assert pages[0] == pages[1]
    assert await page_status(client) == 303


async def test_rate_limit_per_name_checked_before_verifying(world: World) -> None:
    client = await world.client(world.config(**{"console.login_failures": "2", "console.login_window_s": "600"}))
    for _ in range(2):
        assert (await sign_in(client, "alice", "wrong password")).status == 401
    before = world.accounts.verifications
    blocked = await sign_in(client, "ALICE ", PW)  # the right password; the name counts case-blind
    assert blocked.status == 429
    assert blocked.headers["Retry-After"] == "600"
    assert MSG_TOO_MANY in await blocked.text()
    assert world.accounts.verifications == before  # refused before argon2 ran
    assert COOKIE not in set_cookies(blocked)
    assert (await sign_in(client, "boss", PW + "!")).status == 303  # another name from the same address is fine


async def test_rate_limit_per_address_across_names(world: World) -> None:
    client = await world.client(world.config(**{"console.login_failures": "2"}))
    for i in range(8):  # 4 x login_failures, each name failing once only
        assert (await sign_in(client, f"guess{i}", "whatever1")).status == 401
    blocked = await sign_in(client, "alice", PW)
    assert blocked.status == 429 and "Retry-After" in blocked.headers
    other = await world.client(world.config(**{"console.login_failures": "2", "web.trust_forwarded_for": "true"}))
    # behind a trusted proxy the address is the last X-Forwarded-For hop: another client is not blocked
    assert (await sign_in(other, "alice", PW, headers={"X-Forwarded-For": "203.0.113.9"})).status == 303


async def test_success_resets_the_name_counter(world: World) -> None:
    client = await world.client(world.config(**{"console.login_failures": "2"}))
    assert (await sign_in(client, "alice", "wrong password")).status == 401
    assert (await sign_in(client, "alice", PW)).status == 303
    assert (await sign_in(client, "alice", "wrong password")).status == 401
    assert (await sign_in(client, "alice", PW)).status == 303


async def test_redirect_to_login_and_back_to_next(world: World) -> None:
    client = await world.client()
    resp = await client.get("/console/test/page?x=1", allow_redirects=False)
    assert resp.status == 303
    location = resp.headers["Location"]
    assert location.startswith("/console/login?next=")
    login = await client.get(location)
    assert 'name="next" value="/console/test/page?x=1"' in await login.text()
    done = await sign_in(client, next_path="/console/test/page?x=1")
    assert done.headers["Location"] == "/console/test/page?x=1"
    again = await client.get("/console/login?next=/console/faq", allow_redirects=False)  # already signed in
    assert again.status == 303 and again.headers["Location"] == "/console/faq"


@pytest.mark.parametrize("target", ["//evil.example/console", "https://evil.example/console", "/\\evil.example",
                                    "/consolex", "javascript:alert(1)", "/console/login", "/console/\u4e2d",
                                    "/console/\r\nSet-Cookie: x=1", ""])
async def test_next_open_redirect_refused(world: World, target: str) -> None:
    client = await world.client()
    resp = await sign_in(client, next_path=target)
    assert resp.status == 303 and resp.headers["Location"] == "/console/inbox"


async def test_login_form_csrf(world: World) -> None:
    client = await world.client()
    page = await client.get("/console/login")
    csrf = form_csrf(await page.text())
    data = {"name": "alice", "password": PW}
    wrong = await client.post("/console/login", data={**data, "csrf": csrf[::-1]}, allow_redirects=False)
    assert wrong.status == 403 and MSG_EXPIRED_FORM in await wrong.text()
    client.session.cookie_jar.clear()
    no_cookie = await client.post("/console/login", data={**data, "csrf": csrf}, allow_redirects=False)
    assert no_cookie.status == 403 and COOKIE not in set_cookies(no_cookie)
    page = await client.get("/console/login")
    csrf = form_csrf(await page.text())
    foreign = await client.post("/console/login", data={**data, "csrf": csrf}, allow_redirects=False,
                                headers={"Origin": "https://evil.example"})
    assert foreign.status == 403
    page = await client.get("/console/login")
    ok = await client.post("/console/login", data={**data, "csrf": form_csrf(await page.text())},
                           allow_redirects=False, headers={"Origin": str(client.make_url("")).rstrip("/")})
    assert ok.status == 303


async def test_bad_form_bodies(world: World) -> None:
    client = await world.client(world.config(**{"server.max_body_bytes": "512"}))
    page = await client.get("/console/login")
    csrf = form_csrf(await page.text())
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    dup = await client.post("/console/login", data=f"csrf={csrf}&name=a&name=b&password=x", headers=form)
    assert dup.status == 400 and (await dup.json())["error"] == "duplicate_field"
    bad = await client.post("/console/login", data=f"csrf={csrf}&name=%ff&password=x", headers=form)
    assert bad.status == 400 and (await bad.json())["error"] == "invalid_form"
    raw = await client.post("/console/login", data=b"name=\xff\xfe&password=x", headers=form)
    assert raw.status == 400
    big = await client.post("/console/login", data="password=" + "x" * 600, headers=form)
    assert big.status == 413


# -- CSRF on writes -----------------------------------------------------------------------------------------


async def test_write_needs_session_and_csrf(world: World) -> None:
    client = await world.client()
    signed_out = await client.post("/console/test/write", json={})
    assert signed_out.status == 401 and (await signed_out.json())["error"] == "signed_out"
    await sign_in(client)
    csrf = await csrf_of(client)
    missing = await client.post("/console/test/write", json={})
    assert missing.status == 403 and (await missing.json())["error"] == "csrf"
    forged = csrf[:-1] + ("B" if csrf[-1] == "A" else "A")
    wrong = await client.post("/console/test/write", json={}, headers={"X-CSRF-Token": forged})
    assert wrong.status == 403 and (await wrong.json())["error"] == "csrf"
    ok = await client.post("/console/test/write", json={}, headers={"X-CSRF-Token": csrf})
    assert ok.status == 200 and (await ok.json())["agent"] == "alice"
    own = str(client.make_url("")).rstrip("/")
    same = await client.post("/console/test/write", json={}, headers={"X-CSRF-Token": csrf, "Origin": own})
    assert same.status == 200
    ref = await client.post("/console/test/write", json={},
                            headers={"X-CSRF-Token": csrf, "Referer": own + "/console/inbox"})
    assert ref.status == 200


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Referer": "https://evil.example/console/inbox"},
    {"Origin": "http://127.0.0.1:1"},  # another port is another origin
])
async def test_foreign_origin_refused(world: World, headers: dict[str, str]) -> None:
    client = await world.client()
    await sign_in(client)
    csrf = await csrf_of(client)
    resp = await client.post("/console/test/write", json={}, headers={"X-CSRF-Token": csrf, **headers})
    assert resp.status == 403 and (await resp.json())["error"] == "csrf"


async def test_origin_behind_trusted_proxy(world: World) -> None:
    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "kefu.example.com",
               "Origin": "https://kefu.example.com"}
    trusting = await world.client(world.config(**{"web.trust_forwarded_for": "true",
                                                  "console.cookie_secure": "never"}))
    await sign_in(trusting)
    csrf = await csrf_of(trusting)
    ok = await trusting.post("/console/test/write", json={}, headers={"X-CSRF-Token": csrf, **proxied})
    assert ok.status == 200
    plain = await world.client()
    await sign_in(plain)
    csrf = await csrf_of(plain)
    refused = await plain.post("/console/test/write", json={}, headers={"X-CSRF-Token": csrf, **proxied})
    assert refused.status == 403


async def test_require_admin(world: World) -> None:
    agent = await world.client()
    await sign_in(agent)
    resp = await agent.post("/console/test/admin", headers={"X-CSRF-Token": await csrf_of(agent)})
    assert resp.status == 403 and (await resp.json())["error"] == "forbidden"
    admin = await world.client()
    await sign_in(admin, "boss", PW + "!")
    resp = await admin.post("/console/test/admin", headers={"X-CSRF-Token": await csrf_of(admin)})
    assert resp.status == 200


# -- sign-out and the end of sessions -----------------------------------------------------------------------


async def test_logout_ends_the_session_on_every_process(redis_world: World) -> None:
    a = await redis_world.client()
    b = await redis_world.client()  # another gateway process: its own KV connection, same Redis
    await sign_in(a)
    token = cookie(a)
    assert token and await page_status(b, token) == 200
    csrf = await csrf_of(a)
    refused = await b.post("/console/logout", data={"csrf": "wrong"}, headers={"Cookie": f"{COOKIE}={token}"},
                           allow_redirects=False)
    assert refused.status == 403 and await page_status(a) == 200  # a foreign page cannot sign agents out
    out = await b.post("/console/logout", data={"csrf": csrf}, headers={"Cookie": f"{COOKIE}={token}"},
                       allow_redirects=False)
    assert out.status == 303 and out.headers["Location"] == "/console/login"
    assert "Max-Age=0" in set_cookies(out)[COOKIE] and "Path=/console" in set_cookies(out)[COOKIE]
    assert await page_status(a, token) == 303
    assert await page_status(b, token) == 303
    again = await a.post("/console/logout", data={"csrf": csrf}, allow_redirects=False)  # already out: no error
    assert again.status == 303


async def test_logout_with_header_token(world: World) -> None:
    client = await world.client()
    await sign_in(client)
    resp = await client.post("/console/logout", headers={"X-CSRF-Token": await csrf_of(client)},
                             allow_redirects=False)
    assert resp.status == 303
    assert await page_status(client) == 303


async def test_sign_in_again_replaces_the_old_session(world: World) -> None:
    client = await world.client()
    await sign_in(client)
    first = cookie(client)
    page = await client.get("/console/login", allow_redirects=False)
    assert page.status == 303  # signed in already: no form, straight on
    other = await world.client()
    page = await other.get("/console/login")
    data = {"name": "alice", "password": PW, "csrf": form_csrf(await page.text())}
    resp = await other.post("/console/login", data=data, headers={"Cookie": f"{COOKIE}={first}"}, allow_redirects=False)
    assert resp.status == 303 and cookie(other) not in (None, first)
    assert await page_status(other) == 200
    assert await page_status(client) == 303  # the cookie it came with (the first client's) is worth nothing now


async def test_idle_expiry(world: World) -> None:
    client = await world.client(world.config(**{"console.session_idle_s": "100", "console.session_max_s": "1000"}))
    await sign_in(client)
    world.clock.now += 99
    assert await page_status(client) == 200  # used: the idle time starts again
    world.clock.now += 99
    assert await page_status(client) == 200
    world.clock.now += 101
    assert await page_status(client) == 303
    world.clock.now += 1
    assert await page_status(client) == 303  # ended, not just refused once


async def test_absolute_expiry(world: World) -> None:
    client = await world.client(world.config(**{"console.session_idle_s": "100", "console.session_max_s": "250"}))
    await sign_in(client)
    for step in (90, 90, 60):  # used well within the idle time every time
        world.clock.now += step
        assert await page_status(client) == 200
    world.clock.now += 11  # 251 s after sign-in
    assert await page_status(client) == 303


async def test_kv_ttl_slides_and_stops_at_the_absolute_end(redis_world: World) -> None:
    client = await redis_world.client(redis_world.config(**{"console.session_idle_s": "100",
                                                            "console.session_max_s": "250"}))
    await sign_in(client)
    token = cookie(client)
    assert token
    key = Keys(redis_world.key_prefix).console_session(hashlib.sha256(token.encode()).hexdigest())
    raw = aioredis.from_url(redis_world.redis_url, decode_responses=True)
    try:
        assert 0 < await raw.pttl(key) <= 100_000  # Redis itself forgets an idle session
        await raw.pexpire(key, 5_000)
        assert await page_status(client) == 200
        assert await raw.pttl(key) > 5_000  # refreshed on use
        redis_world.clock.now += 90
        assert await page_status(client) == 200
        redis_world.clock.now += 90
        assert await page_status(client) == 200
        redis_world.clock.now += 40  # 30 s before the absolute end
        assert await page_status(client) == 200
        assert 0 < await raw.pttl(key) <= 30_000
        await raw.delete(key)  # what Redis does when the TTL runs out
        assert await page_status(client) == 303
    finally:
        await raw.aclose()


async def test_removed_agent_session_ends(world: World) -> None:
    client = await world.client()
    await sign_in(client)
    assert await page_status(client) == 200
    assert Accounts(world.path, hasher=CHEAP).remove("alice")  # the CLI, another process
    assert await page_status(client) == 303
    Accounts(world.path, hasher=CHEAP).add("alice", PW, display="小王")  # back, but that old session stays ended
    assert await page_status(client) == 303


async def test_role_change_ends_session(world: World) -> None:
    client = await world.client()
    await sign_in(client)
    assert (await (await client.get("/console/test/page")).json())["role"] == "agent"
    Accounts(world.path, hasher=CHEAP).add("alice", "a new password", role="admin")
    assert await page_status(client) == 303
    assert (await sign_in(client, "alice", "a new password")).status == 303
    assert (await (await client.get("/console/test/page")).json())["role"] == "admin"


async def test_display_change_keeps_session(world: World) -> None:
    client = await world.client()
    await sign_in(client)
    Accounts(world.path, hasher=CHEAP).add("alice", PW, display="王小二")
    assert (await (await client.get("/console/test/page")).json())["display"] == "王小二"


async def test_garbage_cookie_and_record(redis_world: World) -> None:
    client = await redis_world.client()
    assert await page_status(client, "x" * 43) == 303
    assert await page_status(client, "bad;cookie") == 303
    token = "A" * 43
    key = Keys(redis_world.key_prefix).console_session(hashlib.sha256(token.encode()).hexdigest())
    raw = aioredis.from_url(redis_world.redis_url, decode_responses=True)
    try:
        await raw.set(key, "{not json", ex=60)
        assert await page_status(client, token) == 303
        assert await raw.exists(key) == 0
    finally:
        await raw.aclose()


# -- the accounts file and the logs -------------------------------------------------------------------------


async def test_broken_accounts_file_means_no_accounts_logged_once(world: World,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    client = await world.client()
    await sign_in(client)
    hashes = re.findall(r"\$argon2id\$\S+", world.path.read_text())
    world.path.write_text("agents: {broken\n" + world.path.read_text(), encoding="utf-8")
    caplog.set_level(logging.DEBUG)
    assert await page_status(client) == 303  # treated as no accounts: the session ends
    page = await client.get("/console/login")
    assert "add-agent" in await page.text()  # the sign-in page says how to add one
    for _ in range(2):
        assert (await sign_in(client)).status == 401
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert str(world.path) in errors[0].getMessage()
    assert hashes and not any(h in caplog.text for h in hashes)


async def test_no_secrets_in_logs(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = await world.client(world.config(**{"console.login_failures": "1"}))
    assert (await sign_in(client, "alice", "Wr0ng-Passw0rd!")).status == 401
    assert (await sign_in(client, "Typed-Passw0rd-As-Name", PW)).status == 401
    assert (await sign_in(client, "alice", PW)).status == 429
    assert (await sign_in(client, "boss", PW + "!")).status == 303
    token = cookie(client)
    csrf = await csrf_of(client)
    await client.post("/console/test/write", json={}, headers={"X-CSRF-Token": csrf})
    await client.post("/console/logout", data={"csrf": csrf}, allow_redirects=False)
    text = caplog.text
    for secret in (PW, "Wr0ng-Passw0rd!", "Typed-Passw0rd-As-Name", token, csrf, "$argon2"):
        assert secret and secret not in text
    assert "console sign-in by boss" in text  # staff names are fine to log
    assert any(r.levelno == logging.WARNING and "sign-in failed" in r.getMessage() for r in caplog.records)


def test_api_session_signature_is_usable_from_pages() -> None:
    """page_session/api_session/write_session/require_admin exist with the contract's names."""
    names: list[Callable[..., Any]] = [ConsoleAuth.page_session, ConsoleAuth.api_session, ConsoleAuth.write_session,
                                       ConsoleAuth.require_admin, ConsoleAuth.routes]
    assert all(callable(n) for n in names)
