"""A loopback fake of DingTalk (sessionWebhook receiver, OpenAPI, Stream gateway)
and helpers to build signed callbacks. Only the external platform is faked: the
hub, the adapter and Redis are the real ones."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

APP_KEY = "dingtestappkey"
APP_SECRET = "test-secret-钉钉-0123456789"
BOT_USER = "$:LWCP_v1:$bot"


def documented_sign(timestamp: str, secret: str = APP_SECRET) -> str:
    """base64(HmacSHA256(key=appSecret, msg=timestamp + "\\n" + appSecret)), written out here
    from DingTalk's documentation rather than taken from the code under test."""
    mac = hmac.new(secret.encode("utf-8"), (timestamp + "\n" + secret).encode("utf-8"), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode("ascii")


def signed_headers(ts_ms: int | None = None, secret: str = APP_SECRET) -> dict[str, str]:
    ts = str(int(time.time() * 1000) if ts_ms is None else ts_ms)
    return {"timestamp": ts, "sign": documented_sign(ts, secret), "Content-Type": "application/json"}


LIVENESS_S = 30.0  # a guard against hanging tests, never a timing assertion


class FakeDingTalk:
    """Records every call the hub makes to 'DingTalk' and answers like it does."""

    def __init__(self) -> None:
        self.webhook_calls: list[tuple[str, dict[str, Any]]] = []
        self.token_requests: list[dict[str, Any]] = []
        self.robot_sends: list[tuple[str, dict[str, Any]]] = []
        self.card_calls: list[tuple[str, str, dict[str, Any]]] = []
        self.opens: list[dict[str, Any]] = []
        self.acks: list[dict[str, Any]] = []
        self.frames: asyncio.Queue[dict[str, Any] | str | bytes] = asyncio.Queue()  # str/bytes: sent verbatim
        self.open_failures = 0  # connections/open answers 500 this many times
        self.close_after_acks = 0  # the gateway drops the socket after this many ACKs (0: never)
        self.fail_paths: set[str] = set()  # OpenAPI paths that answer 500
        self.webhook_gate: asyncio.Event | None = None  # when set, webhook replies wait for it
        self.token = "tok-0"
        self.ws_connections = 0
        self.server: TestServer | None = None
        self._changed = asyncio.Event()

    def _poke(self) -> None:
        self._changed.set()

    async def wait_for(self, cond: Callable[[], bool]) -> None:
        """Wait until the recorded traffic satisfies ``cond``."""
        async with asyncio.timeout(LIVENESS_S):
            while not cond():
                self._changed.clear()
                await self._changed.wait()

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    def webhook(self, name: str = "s1") -> str:
        return f"{self.url}/webhook/{name}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/webhook/{name}", self._webhook)
        app.router.add_post("/v1.0/oauth2/accessToken", self._token)
        app.router.add_post("/v1.0/robot/oToMessages/batchSend", self._robot)
        app.router.add_post("/v1.0/robot/groupMessages/send", self._robot)
        app.router.add_post("/v1.0/card/instances", self._card)
        app.router.add_post("/v1.0/card/instances/deliver", self._card)
        app.router.add_put("/v1.0/card/instances", self._card)
        app.router.add_put("/v1.0/card/streaming", self._card)
        app.router.add_post("/v1.0/gateway/connections/open", self._open)
        app.router.add_get("/gateway", self._gateway)
        return app

    async def _webhook(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.webhook_gate is not None:
            await self.webhook_gate.wait()
        self.webhook_calls.append((request.match_info["name"], body))
        self._poke()
        if request.match_info["name"] == "broken":
            return web.json_response({"errcode": 300001, "errmsg": "session expired"})
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    async def _token(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.token_requests.append(body)
        self._poke()
        if body != {"appKey": APP_KEY, "appSecret": APP_SECRET}:
            return web.json_response({"code": "invalidClientIdOrSecret"}, status=400)
        return web.json_response({"accessToken": self.token, "expireIn": 7200})

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("x-acs-dingtalk-access-token") == self.token

    async def _robot(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"code": "InvalidAuthentication", "message": "token invalid"}, status=401)
        self.robot_sends.append((request.path, await request.json()))
        self._poke()
        return web.json_response({"processQueryKey": uuid.uuid4().hex})

    async def _card(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"code": "InvalidAuthentication"}, status=401)
        self.card_calls.append((request.method, request.path, await request.json()))
        self._poke()
        if request.path in self.fail_paths:
            return web.json_response({"code": "system.error"}, status=500)
        return web.json_response({"success": True, "result": {}})

    async def _open(self, request: web.Request) -> web.Response:
        self.opens.append(await request.json())
        self._poke()
        if self.open_failures > 0:
            self.open_failures -= 1
            return web.json_response({"code": "system.busy"}, status=500)
        return web.json_response({"endpoint": self.url.replace("http://", "ws://") + "/gateway",
                                  "ticket": f"ticket-{len(self.opens)}"})

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        if not request.query.get("ticket", "").startswith("ticket-"):
            raise web.HTTPForbidden()
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.ws_connections += 1
        self._poke()
        acks_here = 0

        async def pump() -> None:
            while not ws.closed:
                frame = await self.frames.get()
                if isinstance(frame, bytes):
                    await ws.send_bytes(frame)
                else:
                    await ws.send_str(frame if isinstance(frame, str) else json.dumps(frame))

        sender = asyncio.create_task(pump())
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self.acks.append(json.loads(msg.data))
                    self._poke()
                    acks_here += 1
                    if self.close_after_acks and acks_here >= self.close_after_acks:
                        await ws.close()
        finally:
            sender.cancel()
        return ws

    def push_callback(self, data: dict[str, Any], message_id: str | None = None) -> str:
        """Queue a robot-message CALLBACK frame as DingTalk's gateway sends it."""
        message_id = message_id or uuid.uuid4().hex
        self.frames.put_nowait({
            "specVersion": "1.0",
            "type": "CALLBACK",
            "headers": {"topic": "/v1.0/im/bot/messages/get", "messageId": message_id,
                        "contentType": "application/json", "time": str(int(time.time() * 1000)), "appId": "a"},
            "data": json.dumps(data, ensure_ascii=False),
        })
        return message_id


def robot_message(
    msg_id: str,
    text: str = "如何重置密码？",
    *,
    group: bool = False,
    webhook: str = "",
    expires_ms: int | None = None,
    msgtype: str = "text",
    staff_id: str = "manager4521",
    **extra: Any,
) -> dict[str, Any]:
    """A robot message shaped like DingTalk's (HTTP callback body = Stream frame data)."""
    now = int(time.time() * 1000)
    data: dict[str, Any] = {
        "msgtype": msgtype,
        "msgId": msg_id,
        "createAt": str(now),
        "conversationType": "2" if group else "1",
        "conversationId": "cidGroup123==" if group else f"cidSingle-{staff_id}",
        "senderId": f"$:LWCP_v1:${staff_id}",
        "senderNick": "张三",
        "senderCorpId": "dingcorp1",
        "senderStaffId": staff_id,
        "chatbotCorpId": "dingcorp1",
        "chatbotUserId": BOT_USER,
        "isAdmin": False,
        "isInAtList": group,
        "sessionWebhook": webhook,
        "sessionWebhookExpiredTime": now + 90 * 60 * 1000 if expires_ms is None else expires_ms,
        "robotCode": APP_KEY,
    }
    if msgtype == "text":
        data["text"] = {"content": (" " if group else "") + text}
    if group:
        data["conversationTitle"] = "售后群"
        data["atUsers"] = [{"dingtalkId": BOT_USER}]
    data.update(extra)
    return data
