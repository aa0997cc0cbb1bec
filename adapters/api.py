"""The ``/chat`` JSON API, compatible with the original design's endpoint.

It is a channel like any other (``api``): requests become events and go
through the hub, so dedup, ordering, dialogue state and fallbacks are the same
as on WeCom or DingTalk. The HTTP request waits for its turn's replies.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import uuid
from collections import deque
from collections.abc import Sequence

from aiohttp import web

from bot import codec
from bot.http import HttpError, bearer_token, json_response, read_json_object
from bot.hub import Overloaded, StoreUnavailable
from bot.services import Services
from bot.types import ConversationRef, Event, EventKind, Reply

_MAX_USER_ID = 128
_MAX_OUTBOX = 50
_MAX_OUTBOX_USERS = 10_000  # conversations with undelivered agent replies kept in memory
_BUS_TOPIC = "api.answer"

log = logging.getLogger(__name__)


class ApiAdapter:
    name = "api"

    def __init__(self, services: Services) -> None:
        self.services = services
        self.cfg = services.config
        self._waiting: dict[str, asyncio.Future[Sequence[Reply]]] = {}
        self._outbox: dict[str, deque[Reply]] = {}  # proactive messages (agent replies) until the next request
        if services.takes_events:  # the worker that answers may be another process: replies come back by the bus
            services.bus.subscribe(_BUS_TOPIC, self._on_answer)

    def routes(self) -> Sequence[web.AbstractRouteDef]:
        return [web.post("/chat", self.chat)]

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        for fut in self._waiting.values():
            fut.cancel()

    def _authorize(self, request: web.Request) -> None:
        keys = self.cfg.api.keys
        if not keys:
            return
        token = bearer_token(request)
        if token is None or not any(hmac.compare_digest(token.encode(), k.encode()) for k in keys):
            raise HttpError(401, "unauthorized", "missing or invalid API key", {"WWW-Authenticate": "Bearer"})

    async def chat(self, request: web.Request) -> web.Response:
        self._authorize(request)
        data = await read_json_object(request, self.cfg.server.max_body_bytes)
        query = data.get("query")
        if not isinstance(query, str) or not query.strip():
            raise HttpError(400, "invalid_query", "'query' must be a non-empty string")
        context = data.get("context")
        if context is not None and not isinstance(context, str):
            raise HttpError(400, "invalid_context", "'context' must be a string")
        user_id = data.get("user_id")
        if user_id is None:
            user_id = uuid.uuid4().hex
        elif not isinstance(user_id, str) or not user_id.strip() or len(user_id) > _MAX_USER_ID:
            raise HttpError(400, "invalid_user_id", f"'user_id' must be a string of 1-{_MAX_USER_ID} characters")
        ref = ConversationRef(channel=self.name, conversation_id=user_id, user_id=user_id)
        event = Event(id=uuid.uuid4().hex, kind=EventKind.MESSAGE, ref=ref, text=query, context=context or None)
        fut: asyncio.Future[Sequence[Reply]] = asyncio.get_running_loop().create_future()
        self._waiting[event.id] = fut
        try:
            try:
                await self.services.hub.accept(event)
            except StoreUnavailable:
                raise HttpError(503, "unavailable", "the conversation store is unreachable; retry shortly") from None
            except Overloaded:
                raise HttpError(503, "overloaded", "too many requests in flight; retry shortly") from None
            try:
                replies = await asyncio.wait_for(asyncio.shield(fut), self.cfg.hub.turn_deadline_s + 5)
            except TimeoutError:
                raise HttpError(503, "timeout", "no answer in time; retry shortly") from None
        finally:
            self._waiting.pop(event.id, None)
        earlier = list(self._outbox.pop(ref.key, ()))
        return json_response(
            {
                "answer": "\n\n".join(r.text for r in replies),
                "source": replies[0].source if replies else None,
                "quick_replies": [q for r in replies for q in r.quick_replies],
                "user_id": user_id,
                "message_id": event.id,
                "replies": [_reply_json(r) for r in replies],
                "messages": [_reply_json(r) for r in earlier],
            }
        )

    async def deliver(self, event: Event | None, replies: Sequence[Reply]) -> None:
        if event is not None:  # to the gateway whose request waits for it (this process, or another)
            body = json.dumps({"id": event.id, "replies": codec.encode_replies(replies)}).encode()
            await self.services.bus.publish(event.origin, _BUS_TOPIC, body)
            return
        for reply in replies:  # proactive (an agent's answer): kept for the user's next request
            box = self._outbox.pop(reply.to.key, None) or deque(maxlen=_MAX_OUTBOX)
            box.append(reply)
            self._outbox[reply.to.key] = box  # most recent last
            while len(self._outbox) > _MAX_OUTBOX_USERS:
                self._outbox.pop(next(iter(self._outbox)))


    async def _on_answer(self, body: bytes) -> None:
        data = json.loads(body)
        if (fut := self._waiting.get(data["id"])) is not None and not fut.done():
            fut.set_result(codec.decode_replies(data["replies"]))
        else:  # the caller gave up or went away; the answer is in the history
            log.info("api request %s ended before its answer; not queued", data["id"])


def _reply_json(reply: Reply) -> dict[str, object]:
    return {"text": reply.text, "source": reply.source, "quick_replies": list(reply.quick_replies),
            "markdown": reply.markdown}
