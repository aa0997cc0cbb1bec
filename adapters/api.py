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
  customer's next ``/chat`` request on any gateway. They wait there redacted
  (bot/privacy/pii.py): an agent quoting the customer's phone number back
  sends ``[手机号]``; what the customer typed never waits anywhere.

Safe by default on the public internet: each client (its API key, or its
address without keys) gets ``api.rate_per_client_per_min`` requests, 429 past
it; and ``/chat`` holds at most ``api.pending_share`` of ``hub.max_pending``
per process (requests waiting here, and its events in the in-process inbox),
503 past it, so a flood of ``/chat`` cannot push WeCom and DingTalk into 503.
Without keys the server warns at start, and refuses to listen beyond loopback
unless told to (``bot/startcheck.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import re
import uuid
from collections.abc import Iterator, Sequence

from aiohttp import web
from redis.exceptions import RedisError

from adapters.web.ratelimit import RateLimiter, client_address, key_client
from bot import codec
from bot.decode import DecodeError, JsonObject
from bot.http import HttpError, bearer_token, json_response, read_fields
from bot.hub import Overloaded, StoreUnavailable, share_limits
from bot.privacy.pii import redact
from bot.replybus import ReplyWaiters, send_replies
from bot.services import Services
from bot.types import ConversationRef, Event, EventKind, Reply

CHANNEL = "api"
_MAX_USER_ID = 128
_USER_ID = re.compile(r"[^\x00-\x1f\x7f-\x9f]+")  # no control characters: the id is part of keys and log lines
MAX_CONTEXT_CHARS = 4000  # what the answerer puts in the prompt at most (bot/answer.py); longer is refused, not cut
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
        self.limits = RateLimiter(services.kv, services.keys, self.cfg.web.rate_per_session_per_min,
                                  self.cfg.web.rate_per_ip_per_min)
        # Requests waiting for their answer in this process: at most /chat's share of the pending budget,
        # so a flood of /chat cannot fill the queue that WeCom's and DingTalk's events need (the in-process
        # inbox also counts its share per channel; with RabbitMQ this is the gateway's own bound).
        self.max_in_flight = share_limits(self.cfg.hub.max_pending, {CHANNEL: self.cfg.api.pending_share})[CHANNEL]
        self.in_flight = 0

    def routes(self) -> Sequence[web.AbstractRouteDef]:
        return [web.post("/chat", self.chat)]

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._waiters.cancel_all()

    def _authorize(self, request: web.Request) -> str:
        """The client the request counts against: its API key (named by a hash), or without keys its
        address (the widget's rule: ``web.trust_forwarded_for``)."""
        keys = self.cfg.api.keys
        if not keys:
            return "ip:" + client_address(request, self.cfg.web.trust_forwarded_for)
        token = bearer_token(request)
        if token is None or not any(hmac.compare_digest(token.encode(), k.encode()) for k in keys):
            raise HttpError(401, "unauthorized", "missing or invalid API key", {"WWW-Authenticate": "Bearer"})
        return key_client(token)

    async def _limit(self, client: str) -> None:
        """``api.rate_per_client_per_min`` per client, shared by every gateway (429 past it)."""
        try:
            await self.limits.check(f"api:{client}", self.cfg.api.rate_per_client_per_min, "client")
        except (RedisError, OSError) as exc:
            log.warning("/chat rate counter unavailable (%s); refused for a retry", type(exc).__name__)
            raise HttpError(503, "unavailable", "the service is temporarily unavailable; retry shortly",
                            {"Retry-After": "5"}) from None

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        """One of this process's ``max_in_flight`` places for a request waiting on its answer, else 503."""
        if self.in_flight >= self.max_in_flight:
            raise HttpError(503, "overloaded", "too many requests in flight; retry shortly", {"Retry-After": "5"})
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def _decode(self, data: JsonObject) -> tuple[str, str | None, str]:
        """``query`` (capped like the widget's messages), ``context`` and ``user_id`` (a new one when
        absent); each a string of valid Unicode within its limit, else a 400 naming the field."""
        query = data.text("query")
        if len(query) > self.cfg.api.max_query_chars:
            raise DecodeError("query_too_long", f"'query' is at most {self.cfg.api.max_query_chars} characters")
        context = data.opt_text("context")
        if context is not None and len(context) > MAX_CONTEXT_CHARS:
            raise DecodeError("context_too_long", f"'context' is at most {MAX_CONTEXT_CHARS} characters")
        user_id = data.raw("user_id")
        if user_id is None:
            return query, context or None, uuid.uuid4().hex
        try:
            user_id = data.text("user_id", max_chars=_MAX_USER_ID, pattern=_USER_ID)
        except DecodeError:
            raise DecodeError("invalid_user_id", f"'user_id' must be a string of 1-{_MAX_USER_ID} characters") from None
        return query, context or None, user_id

    async def chat(self, request: web.Request) -> web.Response:
        await self._limit(self._authorize(request))
        query, context, user_id = self._decode(await read_fields(request, self.cfg.server.max_body_bytes))
        ref = ConversationRef(channel=self.name, conversation_id=user_id, user_id=user_id)
        event = Event(id=uuid.uuid4().hex, kind=EventKind.MESSAGE, ref=ref, text=query, context=context or None)
        with self._slot(), self._waiters.waiting(event.id) as fut:
            try:
                await self.services.hub.accept(event)
            except StoreUnavailable:
                raise HttpError(503, "unavailable", "the conversation store is unreachable; retry shortly",
                                {"Retry-After": "5"}) from None
            except Overloaded:
                raise HttpError(503, "overloaded", "too many requests in flight; retry shortly",
                                {"Retry-After": "5"}) from None
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
            kept = dataclasses.replace(reply, text=redact(reply.text))  # it waits up to a day in the KV
            await self.services.kv.list_push(self.services.keys.api_outbox(reply.to.key),
                                             codec.encode_replies([kept]), max_len=OUTBOX_MAX, ttl_s=OUTBOX_TTL_S)

    async def erase(self, ref: ConversationRef) -> int:
        """Forget the conversation's waiting replies (in Redis mode the admin API has already deleted the key)."""
        return len(await self.services.kv.list_take(self.services.keys.api_outbox(ref.key)))

    async def close(self) -> None:
        return None


def _reply_json(reply: Reply) -> dict[str, object]:
    return {"text": reply.text, "source": reply.source, "quick_replies": list(reply.quick_replies),
            "markdown": reply.markdown}
