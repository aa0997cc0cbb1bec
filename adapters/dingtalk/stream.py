"""Stream mode: the hub dials out to DingTalk's gateway, so no public URL is needed.

The ``dingtalk-stream`` SDK supplies the frame types, the topic dispatch, the
ACK frames and the system-topic handling (ping, disconnect). Two parts of it
are replaced: ``open_connection`` is a blocking ``requests.post`` (here it is
aiohttp, against ``dingtalk.api_base`` rather than the SDK's import-time
``DINGTALK_OPENAPI_ENDPOINT``), and its ``start`` loop retries at a fixed pace
and drops its task references (here: exponential backoff with jitter, reset
once frames flow). Replies never use the SDK's ``reply_text`` (``requests``
again); the adapter sends them with aiohttp.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import websockets
from dingtalk_stream import (
    AckMessage,
    CallbackMessage,
    ChatbotHandler,
    ChatbotMessage,
    Credential,
    DingTalkStreamClient,
    SystemMessage,
)
from dingtalk_stream.version import VERSION_STRING

from bot.config import DingtalkConfig

log = logging.getLogger(__name__)

OnMessage = Callable[[dict[str, Any]], Awaitable[int]]  # robot message JSON -> ACK status code


class HubChatbotHandler(ChatbotHandler):
    """Hands each robot message to the hub; the returned status becomes the frame's ACK."""

    def __init__(self, on_message: OnMessage) -> None:
        super().__init__()
        self.logger = logging.getLogger(__name__)
        self.on_message = on_message

    async def process(self, message: CallbackMessage) -> tuple[int, str]:
        data = message.data if isinstance(message.data, dict) else {}
        status = await self.on_message(data)
        return status, "OK" if status == AckMessage.STATUS_OK else "not accepted"


class StreamConnection(DingTalkStreamClient):
    def __init__(self, cfg: DingtalkConfig, http: Callable[[], aiohttp.ClientSession], on_message: OnMessage) -> None:
        super().__init__(Credential(cfg.app_key, cfg.app_secret), logger=logging.getLogger(__name__))
        self.cfg = cfg
        self.http = http
        self.register_callback_handler(ChatbotMessage.TOPIC, HubChatbotHandler(on_message))
        self.connections = 0  # successful WebSocket connections so far
        self._tasks: set[asyncio.Task[None]] = set()

    async def open_connection_async(self) -> dict[str, Any]:
        """POST /v1.0/gateway/connections/open -> {endpoint, ticket}."""
        url = self.cfg.api_base.rstrip("/") + "/v1.0/gateway/connections/open"
        body = {
            "clientId": self.credential.client_id,
            "clientSecret": self.credential.client_secret,
            "subscriptions": [{"type": "CALLBACK", "topic": topic} for topic in self.callback_handler_map],
            "ua": f"kefu-hub dingtalk-sdk-python/v{VERSION_STRING}",
            "localIp": "",
        }
        async with self.http().post(url, json=body, headers={"Accept": "application/json"}) as resp:
            data = await resp.json(content_type=None)
            if resp.status != 200 or not isinstance(data, dict):
                raise ConnectionError(f"gateway refused the connection: HTTP {resp.status} {str(data)[:200]}")
        if not isinstance(data.get("endpoint"), str) or not isinstance(data.get("ticket"), str):
            raise ConnectionError("gateway answer has no endpoint and ticket")
        return data

    async def run(self) -> None:
        """Connect, serve frames, and reconnect with backoff until cancelled."""
        self.pre_start()
        delay = self.cfg.stream_backoff_s
        while True:
            try:
                connection = await self.open_connection_async()
                uri = f"{connection['endpoint']}?ticket={urllib.parse.quote_plus(connection['ticket'])}"
                async with websockets.connect(uri, max_size=4 * 1024 * 1024) as ws:
                    self.websocket = ws
                    self.connections += 1
                    log.info("DingTalk Stream connected")
                    async for raw in ws:
                        delay = self.cfg.stream_backoff_s  # frames flow: the connection is healthy
                        self._dispatch(raw)
                log.warning("DingTalk Stream connection closed; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("DingTalk Stream connection failed (%s); retrying in %.1fs", exc, delay)
            finally:
                self.websocket = None
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.cfg.stream_backoff_max_s)

    def _dispatch(self, raw: str | bytes) -> None:
        try:
            frame = json.loads(raw)
        except ValueError:
            log.warning("DingTalk Stream sent a frame that is not JSON; ignored")
            return
        if not isinstance(frame, dict):
            return
        task = asyncio.create_task(self.background_task(frame))  # SDK routing: handler, then the ACK frame
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def route_message(self, json_message: dict[str, Any]) -> str:
        """The SDK's routing, except that the gateway's keepalive pings are answered
        without the SDK's "unknown message topic" warning on every one."""
        headers = json_message.get("headers")
        topic = headers.get("topic") if isinstance(headers, dict) else None
        if json_message.get("type") == SystemMessage.TYPE and topic == "ping":
            ack = await self.system_handler.raw_process(SystemMessage.from_dict(json_message))
            await self.websocket.send(json.dumps(ack.to_dict()))
            return ""
        return await super().route_message(json_message)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
