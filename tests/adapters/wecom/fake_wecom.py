"""A loopback fake of WeCom's servers, plus the client side of its callbacks.

The fake records every ``gettoken``, ``message/send``, group-robot and AI-bot
``response_url`` call, and can be scripted to answer with WeCom error codes.
The callback helpers encrypt and sign exactly as WeCom does (wechatpy's
PrpCrypto plus the documented SHA1 signature).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from wechatpy.enterprise.crypto import PrpCrypto


@dataclass
class Call:
    params: dict[str, str]
    body: dict[str, Any] | None


@dataclass
class FakeWecom:
    server: TestServer | None = None
    gettoken: list[Call] = field(default_factory=list)
    sends: list[Call] = field(default_factory=list)
    robot: list[Call] = field(default_factory=list)
    responses: list[Call] = field(default_factory=list)
    send_script: list[int] = field(default_factory=list)  # errcodes for the next message/send calls
    robot_script: list[int] = field(default_factory=list)
    send_gate: asyncio.Event | None = None  # when set, message/send waits for it
    token_delay_s: float = 0.0
    token_gate: asyncio.Event | None = None  # when set, gettoken waits for it
    _issued: int = 0

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    def texts(self) -> list[str]:
        return [c.body["text"]["content"] if c.body["msgtype"] == "text" else c.body["markdown"]["content"]
                for c in self.sends if c.body is not None]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/cgi-bin/gettoken", self._gettoken)
        app.router.add_post("/cgi-bin/message/send", self._send)
        app.router.add_post("/cgi-bin/webhook/send", self._robot)
        app.router.add_post("/cgi-bin/aibot/response", self._response)
        return app

    async def _gettoken(self, request: web.Request) -> web.Response:
        self.gettoken.append(Call(dict(request.query), None))
        if self.token_delay_s:
            await asyncio.sleep(self.token_delay_s)
        if self.token_gate is not None:
            await self.token_gate.wait()
        if request.query.get("corpsecret") == "wrong":
            return web.json_response({"errcode": 40001, "errmsg": "invalid credential"})
        self._issued += 1
        return web.json_response({"errcode": 0, "errmsg": "ok", "access_token": f"tok{self._issued}",
                                  "expires_in": 7200})

    async def _send(self, request: web.Request) -> web.Response:
        self.sends.append(Call(dict(request.query), await request.json()))
        if self.send_gate is not None:
            await self.send_gate.wait()
        code = self.send_script.pop(0) if self.send_script else 0
        return web.json_response({"errcode": code, "errmsg": "ok" if code == 0 else "scripted error"})

    async def _robot(self, request: web.Request) -> web.Response:
        self.robot.append(Call(dict(request.query), await request.json()))
        code = self.robot_script.pop(0) if self.robot_script else 0
        return web.json_response({"errcode": code, "errmsg": "ok" if code == 0 else "scripted error"})

    async def _response(self, request: web.Request) -> web.Response:
        self.responses.append(Call(dict(request.query), await request.json()))
        return web.json_response({"errcode": 0, "errmsg": "ok"})


def new_aes_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()[:-1]


def sign(token: str, timestamp: str, nonce: str, encrypt: str) -> str:
    return hashlib.sha1("".join(sorted([token, timestamp, nonce, encrypt])).encode()).hexdigest()


@dataclass(frozen=True)
class Sender:
    """What WeCom does when it calls us: encrypt, sign, wrap."""

    token: str
    aes_key: str
    receive_id: str

    def seal(self, plaintext: str, *, timestamp: str | None = None) -> tuple[dict[str, str], str]:
        key = base64.b64decode(self.aes_key + "=")
        encrypt = PrpCrypto(key).encrypt(plaintext, self.receive_id).decode()
        ts = timestamp or str(int(time.time()))
        nonce = secrets.token_hex(6)
        return {"msg_signature": sign(self.token, ts, nonce, encrypt), "timestamp": ts, "nonce": nonce}, encrypt

    def app_post(self, xml: str, **kw: Any) -> tuple[dict[str, str], str]:
        params, encrypt = self.seal(xml, **kw)
        body = (f"<xml><ToUserName><![CDATA[{self.receive_id}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]>"
                f"</Encrypt><AgentID><![CDATA[1000002]]></AgentID></xml>")
        return params, body

    def aibot_post(self, msg: dict[str, Any]) -> tuple[dict[str, str], str]:
        params, encrypt = self.seal(json.dumps(msg, ensure_ascii=False))
        return params, json.dumps({"encrypt": encrypt})

    def open_reply(self, sealed: dict[str, Any]) -> dict[str, Any]:
        """Check and decrypt an encrypted passive reply as WeCom would."""
        assert sealed["msgsignature"] == sign(self.token, str(sealed["timestamp"]), sealed["nonce"], sealed["encrypt"])
        key = base64.b64decode(self.aes_key + "=")
        return json.loads(PrpCrypto(key).decrypt(sealed["encrypt"], self.receive_id))


def text_xml(user: str, content: str, msg_id: str, *, created: int = 1700000000, agent: int = 1000002) -> str:
    return (f"<xml><ToUserName><![CDATA[corp]]></ToUserName><FromUserName><![CDATA[{user}]]></FromUserName>"
            f"<CreateTime>{created}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
            f"<Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId><AgentID>{agent}</AgentID></xml>")


def xml_message(user: str, msg_type: str, fields: dict[str, str], *, created: int = 1700000000) -> str:
    inner = "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in fields.items())
    return (f"<xml><ToUserName><![CDATA[corp]]></ToUserName><FromUserName><![CDATA[{user}]]></FromUserName>"
            f"<CreateTime>{created}</CreateTime><MsgType><![CDATA[{msg_type}]]></MsgType>{inner}"
            f"<AgentID>1000002</AgentID></xml>")
