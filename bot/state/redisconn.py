"""How this process talks to Redis: bounded pools, explicit timeouts, a minimum server version.

Every call has a bound of our own choosing (``state.socket_timeout_s``, ``state.connect_timeout_s``,
``state.pool_timeout_s``) rather than whatever the installed redis-py happens to default to, so a
Redis that stops answering turns into :class:`~bot.state.base.StoreDown` / 503 within seconds instead
of hanging a request. Blocking reads (the widget event log's ``XREAD BLOCK``) get a pool of their own
(:func:`open_blocking_client`), so however many browsers hold streams open they can never take the
connections that dedup, state saves and rate counters need.

The commands the hub issues are all in Redis 6.2 (``SET KEEPTTL``, ``XADD MAXLEN ~``, ``XREAD``, Lua with
``TIME``); nothing from 7.x (``PEXPIRE NX``, ``LMPOP``, functions) is used. :func:`require_supported`
checks ``INFO server`` at start and refuses an older server with a message naming both versions,
instead of failing later, one command at a time.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from typing import Any

import redis.asyncio as aioredis

log = logging.getLogger(__name__)

MIN_VERSION = (6, 2, 0)
MAX_BLOCK_S = 2.0  # the longest a blocking read blocks; its socket timeout is this above the shared one
# Per process: the widget's XREAD and the console feed's XREAD, plus one while a dropped one is replaced.
BLOCKING_CONNECTIONS = 3

_VERSION = re.compile(r"([0-9]{1,5})\.([0-9]{1,5})(?:\.([0-9]{1,5}))?")  # ASCII digits only


class RedisTooOld(Exception):
    """The server is older than the commands the hub issues need (the CLI exits 2 with this message)."""


def parse_version(text: str) -> tuple[int, int, int]:
    """``"6.2.14"`` -> ``(6, 2, 14)``; raises ValueError for text that is not a version."""
    m = _VERSION.match(text.strip())
    if m is None:
        raise ValueError("not a Redis version")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def supported(version: tuple[int, int, int]) -> bool:
    return version >= MIN_VERSION


def _show(version: tuple[int, ...]) -> str:
    return ".".join(str(p) for p in version)


async def server_version(client: aioredis.Redis) -> tuple[int, int, int]:
    info = await client.info("server")
    return parse_version(str(info.get("redis_version", "")))


async def require_supported(client: aioredis.Redis) -> tuple[int, int, int] | None:
    """Refuse (:class:`RedisTooOld`) a server older than :data:`MIN_VERSION`. A server that cannot be
    asked now (down at start) is not refused: the hub starts, answers 503 meanwhile, and the commands
    it uses work on every version it would have accepted. Returns the version when it was read."""
    try:
        version = await server_version(client)
    except ValueError:
        log.warning("Redis did not report a readable redis_version; assuming it is at least %s", _show(MIN_VERSION))
        return None
    except (aioredis.RedisError, OSError) as exc:
        log.warning("could not ask Redis its version at start (%s); checking skipped", type(exc).__name__)
        return None
    refuse_unsupported(version)
    return version


def refuse_unsupported(version: tuple[int, int, int]) -> None:
    """:class:`RedisTooOld`, naming both versions, when ``version`` is below :data:`MIN_VERSION`."""
    if not supported(version):
        raise RedisTooOld(f"Redis {_show(version)} is too old: kefu-hub needs Redis {_show(MIN_VERSION)} or newer "
                          f"(state.url)")


def pool_options(*, socket_timeout_s: float, connect_timeout_s: float) -> dict[str, Any]:
    """Keyword arguments of a connection pool with every wait bounded."""
    return {
        "decode_responses": True,
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": connect_timeout_s,
        "socket_keepalive": True,
        "health_check_interval": 30,
    }


def open_client(url: str, *, max_connections: int, pool_timeout_s: float, socket_timeout_s: float,
                connect_timeout_s: float) -> aioredis.Redis:
    """The shared client: a blocking pool, so under a backlog a caller past the pool's size waits (up to
    ``pool_timeout_s``) for a connection instead of failing with MaxConnectionsError."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=pool_timeout_s,
        **pool_options(socket_timeout_s=socket_timeout_s, connect_timeout_s=connect_timeout_s))
    return aioredis.Redis.from_pool(pool)


def open_blocking_client(url: str, *, socket_timeout_s: float, connect_timeout_s: float) -> aioredis.Redis:
    """A client of its own for blocking reads (``XREAD BLOCK``), to the same server: at most
    :data:`BLOCKING_CONNECTIONS` connections, and a socket timeout :data:`MAX_BLOCK_S` above the shared one,
    so a read blocked for its full time still comes back before the socket gives up on it."""
    timeout = MAX_BLOCK_S + socket_timeout_s
    pool = aioredis.BlockingConnectionPool.from_url(
        _without(url, "max_connections", "timeout"), max_connections=BLOCKING_CONNECTIONS, timeout=timeout,
        **pool_options(socket_timeout_s=timeout, connect_timeout_s=connect_timeout_s))
    return aioredis.Redis.from_pool(pool)


def _without(url: str, *names: str) -> str:
    """``url`` less the named query options (redis-py lets a URL's options override the arguments)."""
    parts = urllib.parse.urlsplit(url)
    if not parts.query:
        return url
    kept = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True) if k not in names]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(kept)))
