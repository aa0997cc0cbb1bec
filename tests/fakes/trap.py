"""Any server an outbound call must not reach, or that answers as an attacker's would.

Every request is recorded in ``calls`` (by path name) before it is answered, so a test can assert that
nothing reached it. ``/redirect`` answers 302 to ``elsewhere``, ``/text`` a 200 that is not JSON,
``/html502`` a proxy's error page, ``/hang`` nothing until ``release`` is set; any other name answers
``{"errcode": 0}`` like a platform that accepted the message.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestServer


class Trap:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.bodies: list[bytes] = []
        self.elsewhere = ""
        self.release = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{name:.*}", self.handle)
        self.server = TestServer(app, host="127.0.0.1")

    async def start(self) -> Trap:
        await self.server.start_server()
        return self

    async def close(self) -> None:
        self.release.set()
        await self.server.close()

    def url(self, name: str, host: str = "127.0.0.1", query: str = "session=SESSIONSECRET") -> str:
        """The URL of ``/name`` with a credential-like query; ``host`` may name the same server otherwise."""
        base = str(self.server.make_url(f"/{name}")).replace("127.0.0.1", host)
        return f"{base}?{query}" if query else base

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.calls.append(name)
        self.bodies.append(await request.read())
        if name == "redirect":
            raise web.HTTPFound(self.elsewhere)
        if name == "text":
            return web.Response(text="OK")
        if name == "html502":
            return web.Response(status=502, text="<html>bad gateway</html>", content_type="text/html")
        if name == "hang":
            await self.release.wait()
        return web.json_response({"errcode": 0, "errmsg": "ok"})
