"""Stream mode: the hub dials out to DingTalk's gateway, so no public URL is needed.

The ``dingtalk-stream`` SDK supplies the frame types, the topic dispatch, the
ACK frames and the system-topic handling (ping, disconnect). Two parts of it
are replaced: ``open_connection`` is a blocking ``requests.post`` (here it is
aiohttp, against ``dingtalk.api_base`` rather than the SDK's import-time
``DINGTALK_OPENAPI_ENDPOINT``), and its ``start`` loop retries at a fixed pace
and drops its task references (here: exponential backoff with jitter, reset
once frames flow). Replies never use the SDK's ``reply_text`` (``requests``
again); the adapter sends them with aiohttp.

Frames are read here, not by the SDK's ``from_dict`` (which raises on a
``data`` string that is bad JSON, on a non-object ``headers`` or on a ``time``
that ``int()`` rejects, and then sends no ACK, and whose warnings print whole
frames, customer text included). A frame that cannot be read is answered with
an ACK when it names a ``messageId`` (400 unreadable, 404 unknown topic or
type: a redelivery cannot help), dropped otherwise, and logged by reason only;
the connection loop never sees the error. ``data`` goes through the shared
decoder with lone surrogates replaced: the frame came over the authenticated
connection, so it is DingTalk's, and odd text must not lose the message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
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
    EventMessage,
    SystemMessage,
)
from dingtalk_stream.frames import Headers
from dingtalk_stream.version import VERSION_STRING

from bot.config import DingtalkConfig
from bot.decode import DecodeError, loads_json

log = logging.getLogger(__name__)

OnMessage = Callable[[dict[str, Any]], Awaitable[int]]  # robot message JSON -> ACK status code
_MAX_HEADER_CHARS = 256  # messageId, topic, appId: short ids
_PROTOCOL_NAME = re.compile(r"[A-Za-z0-9/._-]{1,64}")  # "/v1.0/im/bot/messages/get", "CALLBACK"


class FrameError(ValueError):
    """A frame that cannot be read; the message names the problem, never the content."""


class HubChatbotHandler(ChatbotHandler):
    """Hands each robot message to the hub; the returned status becomes the frame's ACK."""

    def __init__(self, on_message: OnMessage) -> None:
        super().__init__()
        self.logger = logging.getLogger(__name__)
        self.on_message = on_message

    async def process(self, message: CallbackMessage) -> tuple[int, str]:
        data = message.data if isinstance(message.data, dict) else {}
        try:
            status = await self.on_message(data)
        except Exception as exc:  # an ACK still goes back: 500 asks DingTalk to deliver it again
            log.error("DingTalk Stream message failed (%s); acknowledged as a failure", type(exc).__name__)
            log.debug("DingTalk Stream message failure", exc_info=True)
            status = AckMessage.STATUS_SYSTEM_EXCEPTION
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
        # no redirects: a 307 would carry clientSecret to wherever it points
        async with self.http().post(url, json=body, headers={"Accept": "application/json"},
                                    allow_redirects=False) as resp:
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
                async with websockets.connect(uri, max_size=4 * 1024 * 1024, open_timeout=15, close_timeout=5) as ws:
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
                # the type only: a websockets/aiohttp error's text can hold the ?ticket= URL
                log.warning("DingTalk Stream connection failed (%s); retrying in %.1fs", type(exc).__name__, delay)
            finally:
                self.websocket = None
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.cfg.stream_backoff_max_s)

    def _dispatch(self, raw: str | bytes) -> None:
        """One frame off the socket: never raises, so a bad frame cannot end the connection."""
        try:
            frame = loads_json(raw, surrogates="replace")
        except DecodeError as exc:
            log.warning("DingTalk Stream frame ignored: %s", exc.message)
            return
        if not isinstance(frame, dict):
            log.warning("DingTalk Stream frame ignored: not a JSON object")
            return
        task = asyncio.create_task(self.background_task(frame))  # routing, handler, then the ACK frame
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def background_task(self, json_message: dict[str, Any]) -> None:
        """The SDK's, logging the failure's kind rather than its text (which may quote the frame)."""
        try:
            if await self.route_message(json_message) == self.TAG_DISCONNECT and self.websocket is not None:
                await self.websocket.close()
        except Exception as exc:
            log.warning("DingTalk Stream frame not handled (%s)", type(exc).__name__)

    async def route_message(self, json_message: dict[str, Any]) -> str:
        """The SDK's routing over frames read by :func:`read_frame`: system frames (ping,
        disconnect) and callbacks to their handlers, each answered with an ACK;
        unreadable frames, unknown topics and types answered 400/404 when they can be."""
        kind = json_message.get("type")
        message_id = _message_id(json_message)
        try:
            headers, data = read_frame(json_message)
        except FrameError as exc:
            log.warning("DingTalk Stream frame refused: %s", exc)
            await self._ack(message_id, AckMessage.STATUS_BAD_REQUEST, "unreadable frame")
            return ""
        if kind == SystemMessage.TYPE:
            system = SystemMessage()
            system.headers, system.data = headers, data
            ack = await self.system_handler.raw_process(system)  # echoes data: a ping's answer is its own data
            await self._send(ack)
            if headers.topic == SystemMessage.TOPIC_DISCONNECT:
                log.info("DingTalk Stream gateway asked to reconnect")
                return self.TAG_DISCONNECT
            if headers.topic != "ping":
                log.info("DingTalk Stream system topic %s acknowledged", _loggable(headers.topic))
            return ""
        if kind == CallbackMessage.TYPE:
            handler = self.callback_handler_map.get(headers.topic)
            if handler is None:
                log.warning("DingTalk Stream callback topic %s is not subscribed", _loggable(headers.topic))
                await self._ack(message_id, AckMessage.STATUS_NOT_IMPLEMENT, "unknown topic")
                return ""
            callback = CallbackMessage()
            callback.headers, callback.data = headers, data
            await self._send(await handler.raw_process(callback))
            return ""
        if kind == EventMessage.TYPE:
            event = EventMessage()
            event.headers, event.data = headers, data
            await self._send(await self.event_handler.raw_process(event))
            return ""
        log.warning("DingTalk Stream frame of unknown type %s", _loggable(kind))
        await self._ack(message_id, AckMessage.STATUS_NOT_IMPLEMENT, "unknown frame type")
        return ""

    async def _ack(self, message_id: str | None, code: int, message: str) -> None:
        """An ACK for a frame that no handler answers; without a messageId there is nothing to answer."""
        if message_id is None:
            return
        ack = AckMessage()
        ack.code = code
        ack.headers.message_id = message_id
        ack.headers.content_type = Headers.CONTENT_TYPE_APPLICATION_JSON
        ack.message = message
        ack.data = {"response": message}
        await self._send(ack)

    async def _send(self, ack: AckMessage) -> None:
        if self.websocket is not None:
            await self.websocket.send(json.dumps(ack.to_dict(), ensure_ascii=False))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _loggable(name: Any) -> str:
    """A protocol name (topic, frame type) for a log line: shown only when it looks like one."""
    return name if isinstance(name, str) and _PROTOCOL_NAME.fullmatch(name) else "(not a protocol name)"


def _message_id(frame: dict[str, Any]) -> str | None:
    headers = frame.get("headers")
    value = headers.get("messageId") if isinstance(headers, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= _MAX_HEADER_CHARS else None


def read_frame(frame: dict[str, Any]) -> tuple[Headers, dict[str, Any]]:
    """The headers and decoded ``data`` of a frame, or :class:`FrameError`.

    Only the string headers routing and ACKs need are kept (``time`` and the
    event headers are not read, so a value ``int()`` rejects cannot matter);
    ``data`` is a JSON string holding an object (empty or absent: ``{}``)."""
    raw_headers = frame.get("headers")
    if not isinstance(raw_headers, dict):
        raise FrameError("'headers' must be an object")
    headers = Headers()
    for key, attr in (("messageId", "message_id"), ("topic", "topic"), ("contentType", "content_type"),
                      ("appId", "app_id"), ("connectionId", "connection_id")):
        value = raw_headers.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or len(value) > _MAX_HEADER_CHARS:
            raise FrameError(f"'headers.{key}' must be a string of at most {_MAX_HEADER_CHARS} characters")
        setattr(headers, attr, value)
    raw_data = frame.get("data")
    if raw_data is None or raw_data == "":
        return headers, {}
    if not isinstance(raw_data, str):
        raise FrameError("'data' must be a JSON string")
    try:
        data = loads_json(raw_data, surrogates="replace")
    except DecodeError as exc:
        raise FrameError(f"'data': {exc.message}") from None
    if not isinstance(data, dict):
        raise FrameError("'data' must hold a JSON object")
    return headers, data
