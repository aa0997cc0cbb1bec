"""Helpers for the dialogue tests: a customer on /chat, the admin API, and a
loopback receiver standing in for the team's webhook (an external system)."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

ADMIN_TOKEN = "test-admin-token"


class Chat:
    """Talks to a running hub as one customer through POST /chat."""

    def __init__(self, http: aiohttp.ClientSession, server: TestServer, user_id: str) -> None:
        self.http = http
        self.server = server
        self.user_id = user_id

    async def say(self, query: str) -> dict[str, Any]:
        async with self.http.post(self.server.make_url("/chat"), json={"query": query, "user_id": self.user_id}) as r:
            assert r.status == 200, await r.text()
            return await r.json()


class Admin:
    def __init__(self, http: aiohttp.ClientSession, server: TestServer, token: str = ADMIN_TOKEN) -> None:
        self.http = http
        self.server = server
        self.headers = {"Authorization": f"Bearer {token}"}

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        async with self.http.request(method, self.server.make_url(path), json=body, headers=self.headers) as r:
            return r.status, await r.json()

    async def state(self, user_id: str, channel: str = "api") -> tuple[int, Any]:
        return await self.request("GET", f"/api/admin/conversations/{channel}/{user_id}")


class Webhook:
    """Loopback receiver for the generic handoff webhook."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.status = 200
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(await request.json())
        return web.json_response({"ok": True}, status=self.status)

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/hook"))


def chat(http: aiohttp.ClientSession, server: TestServer, user_id: str = "alice") -> Chat:
    return Chat(http, server, user_id)
