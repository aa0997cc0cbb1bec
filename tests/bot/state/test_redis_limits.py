"""Redis use is bounded: every call has a timeout of ours, blocking reads have a pool of their own, and the
server's version is checked at start (Redis 6.2 is enough: no command or option the hub issues is newer).

All against real servers: the shared Redis, and a private one that is paused (SIGSTOP) to play a Redis
that accepts connections and never answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import urllib.parse
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from adapters.web.events import RedisEventLog
from bot.config import Config
from bot.services import Services
from bot.state.base import StoreDown
from bot.state.keys import Keys
from bot.state.kv import RedisKV
from bot.state.redis import RedisStore
from bot.state.redisconn import (
    BLOCKING_CONNECTIONS,
    MAX_BLOCK_S,
    MIN_VERSION,
    RedisTooOld,
    parse_version,
    refuse_unsupported,
    require_supported,
    supported,
)
from tests.conftest import make_config, start_server
from tests.services import PrivateRedis

# ---------------------------------------------------------------- the version check


@pytest.mark.parametrize(("text", "version"), [("6.2.0", (6, 2, 0)), ("6.2", (6, 2, 0)), ("7.0.15", (7, 0, 15)),
                                               ("6.0.20", (6, 0, 20)), ("255.255.255-rc1", (255, 255, 255))])
def test_versions_are_read_as_numbers(text: str, version: tuple[int, int, int]) -> None:
    assert parse_version(text) == version


@pytest.mark.parametrize("text", ["", "seven", "v7.0", "٧.٠.١"])
def test_text_that_is_no_version_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_version(text)


@pytest.mark.parametrize(("version", "ok"), [((6, 2, 0), True), ((6, 2, 14), True), ((7, 2, 4), True),
                                             ((6, 1, 99), False), ((6, 0, 20), False), ((5, 0, 14), False)])
def test_6_2_is_the_minimum(version: tuple[int, int, int], ok: bool) -> None:
    assert MIN_VERSION == (6, 2, 0)
    assert supported(version) is ok


def test_a_redis_6_0_is_refused_naming_both_versions() -> None:
    with pytest.raises(RedisTooOld) as err:
        refuse_unsupported((6, 0, 16))
    assert "6.0.16" in str(err.value) and "6.2.0" in str(err.value)


async def test_the_real_server_is_read_and_accepted(redis_client: aioredis.Redis) -> None:
    info = await redis_client.info("server")
    version = await require_supported(redis_client)
    assert version == parse_version(info["redis_version"]) and supported(version)


async def test_a_redis_down_at_start_is_not_refused() -> None:
    """Down is not old: the hub starts, answers 503 meanwhile, and works once Redis is back."""
    client = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    try:
        assert await require_supported(client) is None
    finally:
        await client.aclose()


async def test_services_start_checks_the_version(redis_config: Config) -> None:
    services = Services(redis_config)
    try:
        await services.start()  # the shared Redis is new enough: no RedisTooOld
    finally:
        await services.close()


# ---------------------------------------------------------------- timeouts and pools


async def test_every_pool_has_timeouts_of_ours_and_blocking_reads_have_their_own(redis_url: str,
                                                                                  key_prefix: str) -> None:
    cfg = make_config({"state.url": redis_url, "state.key_prefix": key_prefix, "state.socket_timeout_s": 3,
                       "state.connect_timeout_s": 1.5, "state.max_connections": 7})
    services = Services(cfg)
    try:
        assert services.redis is not None and services.redis_blocking is not None
        shared = services.redis.connection_pool
        blocking = services.redis_blocking.connection_pool
        assert shared is not blocking
        assert shared.connection_kwargs["socket_timeout"] == 3
        assert shared.connection_kwargs["socket_connect_timeout"] == 1.5
        assert shared.max_connections == 7
        assert blocking.max_connections == BLOCKING_CONNECTIONS
        assert blocking.connection_kwargs["socket_connect_timeout"] == 1.5
        # a blocking read blocks for at most MAX_BLOCK_S, and its socket waits longer than that
        assert blocking.connection_kwargs["socket_timeout"] > MAX_BLOCK_S
        log = RedisEventLog(services.redis, services.keys, 10, 60, blocking=services.redis_blocking)
        assert log.reader.block_s <= MAX_BLOCK_S < blocking.connection_kwargs["socket_timeout"]
        await log.close()
    finally:
        await services.close()


async def test_a_pool_cap_in_the_url_does_not_widen_the_blocking_pool(redis_url: str, key_prefix: str) -> None:
    url = redis_url + ("&" if "?" in redis_url else "?") + "max_connections=50"
    services = Services(make_config({"state.url": url, "state.key_prefix": key_prefix}))
    try:
        assert services.redis is not None and services.redis_blocking is not None
        assert services.redis.connection_pool.max_connections == 50
        assert services.redis_blocking.connection_pool.max_connections == BLOCKING_CONNECTIONS
    finally:
        await services.close()


@contextlib.contextmanager
def paused(server: PrivateRedis) -> Iterator[None]:
    """The server stops answering (its socket still accepts), then carries on where it was."""
    assert server._proc is not None
    os.kill(server._proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server._proc.pid, signal.SIGCONT)


async def test_a_redis_that_stops_answering_is_store_down_not_a_hang(private_redis: PrivateRedis) -> None:
    store = RedisStore.from_url(private_redis.url, Keys("hung"), 60, 86400, socket_timeout_s=0.5,
                                connect_timeout_s=0.5, pool_timeout_s=0.5)
    kv = RedisKV(store.client)
    try:
        await store.load("api::someone")  # connected and working
        with paused(private_redis):
            async with asyncio.timeout(30):  # only stops a broken test: the socket timeout answers first
                with pytest.raises(StoreDown):
                    await store.load("api::someone")
                with pytest.raises((RedisError, OSError)):
                    await kv.hit("hung:rate:x", 60)
                with pytest.raises((RedisError, OSError)):
                    await store.first_seen("hung-event")
        assert (await store.load("api::someone")).version == 0  # and it serves again once Redis does
        assert await kv.hit("hung:rate:x", 60) == 1
    finally:
        await store.close()


async def test_chat_against_a_redis_that_stops_answering_is_503_then_serves(private_redis: PrivateRedis) -> None:
    cfg = make_config({"state.url": private_redis.url, "state.socket_timeout_s": 0.5,
                       "state.connect_timeout_s": 0.5, "state.pool_timeout_s": 0.5})
    server = await start_server(cfg)
    try:
        async with aiohttp.ClientSession() as http:
            with paused(private_redis):
                async with asyncio.timeout(60), http.post(server.make_url("/chat"), json={"query": "如何重置"}) as r:
                    assert r.status == 503, await r.text()
                    assert (await r.json())["error"] in ("unavailable", "overloaded")
            async with http.post(server.make_url("/chat"), json={"query": "如何重置密码"}) as r:
                assert r.status == 200, await r.text()
    finally:
        await server.close()


# ---------------------------------------------------------------- Redis 6.2 is enough

_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')


class Monitor:
    """MONITOR on a raw socket: every command the server runs (scripts' included), as argument lists."""

    def __init__(self, url: str) -> None:
        u = urllib.parse.urlparse(url)
        self.addr = (u.hostname or "127.0.0.1", u.port or 6379)
        self.lines: list[list[str]] = []
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Monitor:
        reader, writer = await asyncio.open_connection(*self.addr)
        self._writer = writer
        writer.write(b"MONITOR\r\n")
        await writer.drain()
        assert (await reader.readline()).startswith(b"+OK")
        self._task = asyncio.create_task(self._read(reader))
        return self

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            text = line.decode("utf-8", "replace")
            self.lines.append([bytes(a, "utf-8").decode("unicode_escape", "replace") for a in _ARG.findall(text)])

    async def __aexit__(self, *_exc: object) -> None:
        await asyncio.sleep(0.2)  # the last commands' lines
        assert self._task is not None and self._writer is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._writer.close()


def _newer_tokens(arguments: list[dict[str, Any]], newer: bool = False) -> set[str]:
    """Option tokens of a command's documented arguments that came after 6.2."""
    out: set[str] = set()
    for arg in arguments:
        since = arg.get("since")
        late = newer or (since is not None and parse_version(since) > MIN_VERSION)
        if late and arg.get("token"):
            out.add(arg["token"].upper())
        out |= _newer_tokens(arg.get("arguments") or [], late)
    return out


async def _working_day(redis_url: str, key_prefix: str, redis_client: aioredis.Redis) -> None:
    """``/chat``, a widget session with its stream, a streamed answer, history, feedback, rate counters and
    the shared KV, against the Redis at ``redis_url``."""
    cfg = make_config({"state.url": redis_url, "state.key_prefix": key_prefix, "web.session_secret": "s" * 32})
    server = await start_server(cfg)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(server.make_url("/chat"), json={"query": "如何重置密码", "user_id": "六点二"}) as r:
                assert r.status == 200
                assert (await r.json())["answer"]
            async with http.post(server.make_url("/chat"), json={"query": "如何重置密码", "user_id": "六点二"}) as r:
                assert r.status == 200  # the second turn loads and saves the first one's state
            async with http.post(server.make_url("/api/web/session"), json={}) as r:
                token = (await r.json())["token"]
            auth = {"Authorization": f"Bearer {token}"}
            async with http.get(server.make_url("/api/web/stream"), headers=auth) as stream:
                await stream.content.readline()
                async with http.post(server.make_url("/api/web/messages"), headers=auth,
                                     json={"text": "如何重置密码", "client_id": "redis62-msg"}) as r:
                    assert r.status == 202
                async with http.post(server.make_url("/api/web/messages"), headers=auth,
                                     json={"text": "如何重置密码", "client_id": "redis62-msg"}) as r:
                    assert r.status in (200, 202)  # the widget's retry of the same message: deduplicated
                async with asyncio.timeout(15):
                    while b'"done"' not in await stream.content.readline():
                        pass
            async with http.get(server.make_url("/api/web/history"), headers=auth) as r:
                messages = (await r.json())["messages"]
                assert [m["text"] for m in messages if m.get("role") == "user"] == ["如何重置密码"]
                answer_id = next(m["answer_id"] for m in messages if m.get("answer_id"))
            async with http.post(server.make_url("/api/web/feedback"), headers=auth,
                                 json={"answer_id": answer_id, "rating": "up"}) as r:
                assert r.status == 200
        kv = RedisKV(redis_client)
        assert await kv.set_nx(f"{key_prefix}:lock", "1", 5)
        await kv.list_push(f"{key_prefix}:list", "x", max_len=3, ttl_s=5)
        assert await kv.list_take(f"{key_prefix}:list")
    finally:
        await server.close()


async def test_a_working_day_on_a_real_redis_6_2(redis_6_2_url: str, key_prefix: str) -> None:
    """The oldest supported Redis, for real: everything the MONITOR check below inspects also runs there."""
    client = aioredis.from_url(redis_6_2_url, decode_responses=True)
    try:
        version = parse_version((await client.info("server"))["redis_version"])
        assert version[:2] == (6, 2)
        await _working_day(redis_6_2_url, key_prefix, client)
    finally:
        await client.aclose()


async def test_every_command_the_hub_issues_is_in_redis_6_2(redis_url: str, key_prefix: str,
                                                            redis_client: aioredis.Redis) -> None:
    """Everything a working day does, seen by MONITOR, checked against the server's own COMMAND DOCS: no
    command, and no option of one, newer than 6.2."""
    async with Monitor(redis_url) as monitor:
        await _working_day(redis_url, key_prefix, redis_client)

    ours = [args for args in monitor.lines if args and any(key_prefix in a for a in args[1:])]
    assert len(ours) > 20, "MONITOR saw the session"
    names = sorted({args[0].lower() for args in ours})
    docs = await redis_client.execute_command("COMMAND DOCS", *names)
    problems = []
    for args in ours:
        name = args[0].lower()
        doc = docs.get(name)
        assert doc is not None, f"{name} is no command this Redis documents"
        if parse_version(doc["since"]) > MIN_VERSION:
            problems.append(f"{name.upper()} (since {doc['since']})")
        late = _newer_tokens(doc.get("arguments") or [])
        used = {a.upper() for a in args[1:]} & late
        if used:
            problems.append(f"{name.upper()} {' '.join(sorted(used))} (after {'.'.join(map(str, MIN_VERSION))})")
    assert not problems, sorted(set(problems))


def test_monitor_check_would_catch_pexpire_nx() -> None:
    """The check is not vacuous: the documented 7.0 condition options of PEXPIRE are found."""
    doc = [{"name": "key", "type": "key"}, {"name": "milliseconds", "type": "integer"},
           {"name": "condition", "type": "oneof", "since": "7.0.0",
            "arguments": [{"name": "nx", "type": "pure-token", "token": "NX"}]}]
    assert _newer_tokens(doc) == {"NX"}
