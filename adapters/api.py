"""The ``/chat`` JSON API, compatible with the original design's endpoint.

It is a channel like any other (``api``): requests become events and go
through the hub, so dedup, ordering, dialogue state and fallbacks are the same
as on WeCom or DingTalk. Two halves:

- :class:`ApiInbound` (gateways): ``POST /chat``; the HTTP request waits for
  its turn's replies, which the worker that ran the turn publishes on the
  reply bus to this gateway (the event's ``origin``).
- :class:`ApiSender` (every process that runs turns, and the admin API's
  agent replies): a turn's replies go on the bus; proactive replies (an
  agent's) go into the conversation's outbox in the shared KV (Redis when
  state is), a list bounded per conversation and expiring, so they reach the
  customer's next ``/chat`` request on any gateway.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import uuid
from collections.abc import Sequence

from aiohttp import web

from bot import codec
from bot.http import HttpError, bearer_token, json_response, read_json_object
from bot.hub import Overloaded, StoreUnavailable
from bot.replybus import ReplyWaiters, send_replies
from bot.services import Services
from bot.types import ConversationRef, Event, EventKind, Reply

CHANNEL = "api"
_MAX_USER_ID = 128
OUTBOX_MAX = 50  # proactive replies kept per conversation; the oldest go first
OUTBOX_TTL_S = 24 * 3600  # an agent's reply waits a day for the customer's next request
_BUS_TOPIC = "api.answer"

log = logging.getLogger(__name__)


class ApiInbound:
    name = CHANNEL

    def __init__(self, services: Services) -> None:
        self.services = services
        self.cfg = services.config
        # the worker that answers may be another process: replies come back by the bus
        self._waiters = ReplyWaiters(services.bus, _BUS_TOPIC)

    def routes(self) -> Sequence[web.AbstractRouteDef]:
        return [web.post("/chat", self.chat)]

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._waiters.cancel_all()

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
        with self._waiters.waiting(event.id) as fut:
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
        earlier = await self._take_outbox(ref)
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

    async def _take_outbox(self, ref: ConversationRef) -> list[Reply]:
        """The conversation's waiting proactive replies, oldest first, taken so no other request repeats them."""
        try:
            raw = await self.services.kv.list_take(self.services.keys.api_outbox(ref.key))
        except Exception as exc:  # the answer is there; the waiting replies stay for the next request
            log.warning("outbox of %s unreadable now (%s); left for the next request", ref.key, type(exc).__name__)
            return []
        earlier: list[Reply] = []
        for item in raw:
            try:
                earlier.extend(codec.decode_replies(item))
            except codec.CodecError as exc:
                log.warning("an unreadable outbox entry of %s dropped: %s", ref.key, exc)
        return earlier


class ApiSender:
    name = CHANNEL

    def __init__(self, services: Services) -> None:
        self.services = services

    async def deliver(self, event: Event | None, replies: Sequence[Reply]) -> None:
        if event is not None:  # to the gateway whose request waits for it (this process, or another)
            await send_replies(self.services.bus, _BUS_TOPIC, event, replies)
            return
        for reply in replies:  # proactive (an agent's answer): kept for the user's next request, on any gateway
            await self.services.kv.list_push(self.services.keys.api_outbox(reply.to.key),
                                             codec.encode_replies([reply]), max_len=OUTBOX_MAX, ttl_s=OUTBOX_TTL_S)

    async def erase(self, ref: ConversationRef) -> int:
        """Forget the conversation's waiting replies (in Redis mode the admin API has already deleted the key)."""
        return len(await self.services.kv.list_take(self.services.keys.api_outbox(ref.key)))

    async def close(self) -> None:
        return None


def _reply_json(reply: Reply) -> dict[str, object]:
    return {"text": reply.text, "source": reply.source, "quick_replies": list(reply.quick_replies),
            "markdown": reply.markdown}
