"""The web channel's inbound half (gateways): the embeddable chat widget, its API and the demo page.

Routes:
  GET  /                  demo company page with the widget embedded (``web.demo_page``)
  GET  /widget.js         the widget, one self-contained file (no build step)
  POST /api/web/session   issue or renew a signed session token
  POST /api/web/messages  accept a visitor message into the hub (202 + message id)
  GET  /api/web/stream    SSE: the session's events after ``Last-Event-ID``
  GET  /api/web/history   the conversation so far, for a reloaded page
  POST /api/web/feedback  thumbs up / down on an answer

Answers never travel in HTTP responses: the sender (adapters/web/sender.py,
in whichever process runs the turn) appends them to the session's event log
and every open SSE connection replays it, so a reconnect, a reload, a second
tab or another gateway process all see the same ordered events once. Open
streams share one blocking Redis read per process (adapters/web/events.py).

When Redis (state, event log, rate counters) cannot be reached, every API
call answers 503 ``unavailable`` with ``Retry-After``, which the widget shows
as "busy" and offers to send again, rather than a bare 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from adapters.web.events import Entry, EventLog, parse_event_id, session_ref
from adapters.web.feedback import RATINGS, FeedbackRecord, FeedbackStore
from adapters.web.origins import OriginPolicy
from adapters.web.ratelimit import RateLimiter, client_address
from adapters.web.sender import answer_id
from adapters.web.sender import client_id as _client_id
from adapters.web.session import SessionTokens, TokenError, WebSession, new_session_id
from adapters.web.streams import StreamSlots
from bot.decode import DecodeError, JsonObject
from bot.http import HttpError, bearer_token, header_one, json_response, query_one, read_fields
from bot.hub import Overloaded
from bot.services import Services
from bot.state import DialogueState
from bot.types import ConversationRef, Event, EventKind

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
API_PATHS = ("/api/web/session", "/api/web/messages", "/api/web/stream", "/api/web/history", "/api/web/feedback")

_CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
_ANSWER_ID = re.compile(r"[A-Za-z0-9_.-]{1,80}")
_MAX_CONTEXT = 500
_STREAM_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")  # ASCII only: re's \d also takes "١٢٣"
_U64 = 2**64 - 1  # each half of a Redis stream id
MAX_TOKEN_CHARS = 512  # a session token is ~100 characters
_FUTURE_SLACK_MS = 60_000  # a Last-Event-ID further in the future than this is no id the log gave out
_UNAVAILABLE = (RedisError, OSError)  # Redis down or unreachable (redis-py raises its own errors, some OSError)
_DEMO_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
             "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'self'")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WebInbound:
    name = "web"

    def __init__(self, services: Services, events: EventLog, feedback: FeedbackStore) -> None:
        self.services = services
        self.config = services.config
        self.cfg = services.config.web
        self.tokens = SessionTokens(self.cfg.session_secret, self.cfg.token_ttl_s)
        self.limits = RateLimiter(services.kv, services.keys, self.cfg.rate_per_session_per_min,
                                  self.cfg.rate_per_ip_per_min)
        self.origins = OriginPolicy(self.cfg.allowed_origins, self.config.server.public_url)
        self.events = events  # shared with the sender (adapters/web/__init__.py: open_stores)
        self.feedback = feedback
        # SSE connections this process holds, per session, per address and in all (adapters/web/streams.py)
        self._open_streams = StreamSlots(per_session=self.cfg.max_streams_per_session,
                                         per_address=self.cfg.max_streams_per_ip, total=self.cfg.max_streams)
        self._closing = asyncio.Event()

    # ------------------------------------------------------------------ wiring
    def routes(self) -> Sequence[web.AbstractRouteDef]:
        routes = [
            web.get("/widget.js", self.widget_js),
            web.post("/api/web/session", self._api(self.session)),
            web.post("/api/web/messages", self._api(self.messages)),
            web.get("/api/web/stream", self._api(self.stream_events)),
            web.get("/api/web/history", self._api(self.history)),
            web.post("/api/web/feedback", self._api(self.rate_answer)),
        ]
        routes += [web.options(path, self.preflight) for path in API_PATHS]
        if self.cfg.demo_page:
            routes.append(web.get("/", self.demo_page))
        return routes

    async def start(self) -> None:
        return None

    async def shutdown(self) -> None:
        """End open streams at once; browsers reconnect to another process."""
        self._closing.set()

    async def close(self) -> None:
        self._closing.set()  # the shared event log is closed by the sender

    def _api(self, handler: Handler) -> Handler:
        """Origin check, per-address limit and CORS headers on every answer, errors included
        (without them a cross-origin widget could not even read a 401 or a 429)."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            origin = _origin(request)
            if not self.origins.allows(origin, request.host):
                raise _origin_refused()
            cors = self.origins.cors_headers(origin)
            try:
                try:
                    await self.limits.check_ip(self._client_ip(request))
                    response = await handler(request)
                except _UNAVAILABLE as exc:
                    log.warning("web %s %s: the shared store is unavailable (%s: %s)", request.method,
                                request.path, type(exc).__name__, exc)
                    raise _unavailable() from None
                except DecodeError as exc:  # a 400 the widget must be able to read: with the CORS headers
                    raise HttpError(400, exc.code, exc.message) from None
            except HttpError as exc:
                exc.headers.update(cors)
                raise
            if not response.prepared:
                response.headers.update(cors)
            return response

        return wrapped

    async def preflight(self, request: web.Request) -> web.Response:
        origin = _origin(request)
        if origin is None or not self.origins.allows(origin, request.host):
            raise _origin_refused()
        return web.Response(status=204, headers=self.origins.preflight_headers(origin))

    def _client_ip(self, request: web.Request) -> str:
        """The last X-Forwarded-For hop behind a proxy of ours, else the peer (one rule with /chat's)."""
        return client_address(request, self.cfg.trust_forwarded_for)

    def _authorize(self, request: web.Request) -> WebSession:
        try:
            return self.tokens.verify(bearer_token(request))
        except TokenError as exc:
            raise HttpError(401, exc.code, exc.message, {"WWW-Authenticate": 'Bearer realm="kefu-web"'}) from None

    @staticmethod
    def _ref(session_id: str) -> ConversationRef:
        return session_ref(session_id)

    async def _index(self, session_id: str, *keys: str) -> None:
        """List keys named after the visitor that ``Keys.conversation_keys`` cannot find (dedup and handoff
        markers, the session's rate counter) in the user's erasure index (Redis mode only)."""
        client = self.services.redis
        if client is None:
            return
        index = self.services.keys.user_index(self.name, session_id)
        state = self.config.state  # dedup_ttl_s >= 24 h also covers the handoff notices (24 h)
        ttl_ms = int(max(state.dedup_ttl_s, state.idle_ttl_s) * 1000) + 60_000  # outlives every key it lists
        async with client.pipeline(transaction=False) as pipe:
            pipe.sadd(index, *keys)
            pipe.pexpire(index, ttl_ms)
            await pipe.execute()

    # ------------------------------------------------------------------ static
    async def widget_js(self, _request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "widget.js", headers={
            "Content-Type": "text/javascript; charset=utf-8",
            "Cache-Control": "public, max-age=300",
            "X-Content-Type-Options": "nosniff",
        })

    async def demo_page(self, _request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "demo.html", headers={
            "Content-Type": "text/html; charset=utf-8",
            "Content-Security-Policy": _DEMO_CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "strict-origin-when-cross-origin",
        })

    # ------------------------------------------------------------------ API
    async def session(self, request: web.Request) -> web.Response:
        """Renew the caller's session when its token is still good, else start a new one.
        An id without its token starts a new session: ids alone never open a conversation."""
        data = await read_fields(request, self.config.server.max_body_bytes, optional=True)
        old = data.opt_text("token", max_chars=MAX_TOKEN_CHARS)  # a number here is a client bug: 400
        session_id = None
        if old:
            try:
                session_id = self.tokens.verify(old).session_id
            except TokenError:
                session_id = None
        renewed = session_id is not None
        issued = self.tokens.issue(session_id or new_session_id())
        return json_response({
            "session_id": issued.session_id,
            "token": issued.token,
            "expires_at": issued.expires_at,
            "ttl_s": self.cfg.token_ttl_s,
            "renewed": renewed,
            "max_message_chars": self.cfg.max_message_chars,
        })

    async def messages(self, request: web.Request) -> web.Response:
        session = self._authorize(request)
        await self.limits.check_session(session.session_id)
        text, client_id, context = self._decode_message(await read_fields(request, self.config.server.max_body_bytes))
        sid = session.session_id
        event = Event(
            id=f"{sid}:{client_id}",  # scoped to the session, so one visitor's ids never collide with another's
            kind=EventKind.MESSAGE,
            ref=self._ref(sid),
            text=text.strip(),
            context=context,
        )
        keys = self.services.keys
        await self._index(sid, keys.dedup(event.dedup_key), keys.handoff_notice(event.dedup_key),
                          keys.rate(f"web:session:{sid}"))  # the last as adapters/web/ratelimit.py names it
        # Logged before the hub sees it, so the visitor's message always precedes its answer in the log.
        # Redis errors here reach _api's wrapper: 503 "unavailable", nothing accepted.
        await self.events.append(sid, {"type": "user", "message_id": client_id, "text": event.text, "ts": time.time()})
        try:
            accepted = await self.services.hub.accept(event)
        except Overloaded:
            await self.events.append(sid, {"type": "failed", "message_id": client_id})
            raise HttpError(503, "overloaded", "the service is busy; please send the message again shortly",
                            {"Retry-After": "5"}) from None
        except _UNAVAILABLE:
            try:  # the message is logged but was not accepted: tell open windows it failed, if Redis allows
                await self.events.append(sid, {"type": "failed", "message_id": client_id})
            except _UNAVAILABLE:
                pass
            raise
        return json_response({"message_id": client_id, "duplicate": not accepted}, status=202)

    def _decode_message(self, data: JsonObject) -> tuple[str, str, str | None]:
        """``text`` (within ``web.max_message_chars``), ``client_id`` (the widget's id for the message,
        new when absent) and the page ``context`` (cut to its first characters, as the widget sends it)."""
        text = data.text("text")
        if len(text) > self.cfg.max_message_chars:
            raise DecodeError("message_too_long", f"messages are at most {self.cfg.max_message_chars} characters")
        raw_id = data.raw("client_id")
        if raw_id is None:
            client_id = uuid.uuid4().hex
        elif not isinstance(raw_id, str) or not _CLIENT_ID.fullmatch(raw_id):
            raise DecodeError("invalid_client_id", "'client_id' must be 8-64 characters of A-Z a-z 0-9 _ -")
        else:
            client_id = raw_id
        context = data.opt_text("context")
        return text, client_id, (context or "")[:_MAX_CONTEXT] or None

    def _cursor(self, request: web.Request) -> str | None:
        """Where a stream resumes: ``Last-Event-ID`` (a reconnecting EventSource), else ``?after=``.
        Each given once, as a Redis stream id: ASCII digits, both halves within 64 bits."""
        cursor = header_one(request, "Last-Event-ID", max_chars=64) or query_one(request, "after", required=False,
                                                                                  max_chars=64)
        if not cursor:
            return None
        m = _STREAM_ID.fullmatch(cursor.strip())
        if m is None or int(m.group(1)) > _U64 or int(m.group(2)) > _U64:
            raise DecodeError("invalid_event_id", "Last-Event-ID must look like 1700000000000-0")
        return cursor.strip()

    async def stream_events(self, request: web.Request) -> web.StreamResponse:
        session = self._authorize(request)
        sid = session.session_id
        cursor = self._cursor(request)
        if cursor:
            ms, _ = parse_event_id(cursor)
            if ms > time.time() * 1000 + _FUTURE_SLACK_MS:  # not an id we gave out: from the end of the log
                last = await self.events.last_id(sid)
                cursor = min(cursor, last, key=parse_event_id)
        else:
            cursor = await self.events.last_id(sid)
        address = self._client_ip(request)
        self._open_streams.check(sid, address)  # 429 / 503 with Retry-After before the response starts
        origin = _origin(request)
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache, no-transform",
            "X-Accel-Buffering": "no",  # nginx: pass events through at once
            **self.origins.cors_headers(origin),
        })
        release_stream = self._open_streams.take(sid, address)
        closing = asyncio.ensure_future(self._closing.wait())
        read: asyncio.Future[list[Entry]] | None = None
        try:
            await response.prepare(request)
            await response.write(b"retry: 2000\n\n")
            # Ends when the token expires: the widget then renews it and reconnects with Last-Event-ID.
            while not self._closing.is_set() and (left := session.expires_at - time.time()) > 0:
                read = asyncio.ensure_future(self.events.read(sid, cursor, min(self.cfg.heartbeat_s, left)))
                await asyncio.wait((read, closing), return_when=asyncio.FIRST_COMPLETED)
                if not read.done():  # shutting down: end now, the browser reconnects to another process
                    break
                entries = read.result()
                if not entries:
                    await response.write(b": ping\n\n")
                    continue
                frames = []
                for event_id, event in entries:
                    public = {k: v for k, v in event.items() if k != "meta"}
                    frames.append(f"id: {event_id}\ndata: {json.dumps(public, ensure_ascii=False)}\n\n")
                    cursor = event_id
                await response.write("".join(frames).encode())
        except ConnectionError:
            pass  # the browser went away; it resumes from its Last-Event-ID
        except Exception:
            if not response.prepared:
                raise
            log.exception("web event stream of session %s failed; the widget will reconnect", sid[:8])
        finally:
            closing.cancel()
            if read is not None and not read.done():
                read.cancel()
            release_stream()
        return response

    async def history(self, request: web.Request) -> web.Response:
        """The conversation from the state store, plus what is still in flight from the event log.

        The log is read first and its newest id returned as ``cursor``: an answer that finishes in
        between is then both in the history and replayed once by the stream, and the widget keeps
        one copy (events carry ids), while nothing can fall between the two reads.
        """
        session = self._authorize(request)
        sid = session.session_id
        entries = await self.events.entries(sid)
        ref = self._ref(sid)
        state = await self.services.store.load(ref.key)
        ratings = await self.feedback.ratings(ref.key)
        quick = {e["answer_id"]: e.get("quick_replies") or [] for _, e in entries if e.get("type") == "reply"}
        messages = _history_messages(state, sid, ratings, quick)
        seen_users = {m.get("message_id") for m in messages if m["role"] == "user"}
        finished: set[str] = set()
        users: dict[str, dict[str, Any]] = {}
        partial: dict[str, str] = {}
        for _, e in entries:
            kind, mid = e.get("type"), e.get("message_id")
            if kind == "user" and mid not in seen_users:
                users.setdefault(mid, {"role": "user", "text": e.get("text", ""), "ts": e.get("ts"),
                                       "message_id": mid, "pending": True})
            elif kind == "delta" and mid is not None:
                so_far = partial.get(mid, "")
                if e.get("offset") == 0:
                    so_far = ""
                if e.get("offset") == len(so_far):
                    partial[mid] = so_far + e.get("text", "")
            elif kind in ("reply", "done", "failed") and mid is not None:
                finished.add(mid)
        for mid, user in users.items():
            if mid in finished:
                continue
            messages.append(user)
            if partial.get(mid):
                messages.append({"role": "assistant", "text": partial[mid], "message_id": mid, "streaming": True})
        return json_response({
            "session_id": sid,
            "messages": messages,
            "pending": [m["message_id"] for m in users.values() if m["message_id"] not in finished],
            "cursor": entries[-1][0] if entries else "0-0",
        })

    async def rate_answer(self, request: web.Request) -> web.Response:
        session = self._authorize(request)
        sid = session.session_id
        await self.limits.check_session(sid)
        data = await read_fields(request, self.config.server.max_body_bytes)
        aid = data.raw("answer_id")
        if not isinstance(aid, str) or not _ANSWER_ID.fullmatch(aid):
            raise DecodeError("invalid_answer_id", "'answer_id' must be the id of an answer in this conversation")
        rating = data.choice("rating", RATINGS)
        ref = self._ref(sid)
        found = await self._find_answer(sid, ref, aid)
        if found is None:
            raise HttpError(404, "unknown_answer", "no such answer in this conversation (it may have expired)")
        question, answer, source, meta, question_id = found
        await self.feedback.record(FeedbackRecord(
            conversation=ref.key, session_id=sid, answer_id=aid, rating=rating,
            question=question, answer=answer, source=source, meta=meta,
        ))
        # rated_event_id: the rated question's event id (as messages() builds it), so the archive links
        # the vote to the archived turn
        rated = {"rated_event_id": f"{sid}:{question_id}"} if question_id else {}
        event = Event(id=f"{sid}:feedback:{uuid.uuid4().hex}", kind=EventKind.FEEDBACK, ref=ref, name=rating,
                      channel_data={"answer_id": aid, **rated})
        await self._index(sid, self.services.keys.dedup(event.dedup_key),
                          self.services.keys.handoff_notice(event.dedup_key))
        try:
            await self.services.hub.accept(event)  # lets the dialogue layer react (e.g. offer a human)
        except Overloaded:
            log.info("feedback on %s stored but not passed to a busy hub", aid)
        return json_response({"ok": True, "answer_id": aid, "rating": rating})

    async def _find_answer(
        self, sid: str, ref: ConversationRef, aid: str
    ) -> tuple[str, str, str, dict, str | None] | None:
        """question, answer, source, meta and the question's message id (None when unknown)."""
        entries = await self.events.entries(sid)
        questions = {e.get("message_id"): e.get("text", "") for _, e in entries if e.get("type") == "user"}
        for _, e in reversed(entries):
            if e.get("type") == "reply" and e.get("answer_id") == aid:
                mid = e.get("message_id")
                return (questions.get(mid, ""), e.get("text", ""), e.get("source", ""), dict(e.get("meta") or {}),
                        mid if isinstance(mid, str) else None)
        state = await self.services.store.load(ref.key)
        question, question_id = "", None
        for m in _history_messages(state, sid, {}, {}):
            if m["role"] == "user":
                question, question_id = m["text"], m.get("message_id")
            elif m.get("answer_id") == aid:
                return question, m["text"], m.get("source") or "", {}, question_id
        return None


def _unavailable() -> HttpError:
    return HttpError(503, "unavailable", "the service is temporarily unavailable; please try again shortly",
                     {"Retry-After": "5"})


def _origin_refused() -> HttpError:
    """The origin is not named: it is the caller's text (and may not even be UTF-8)."""
    return HttpError(403, "origin_not_allowed", "this origin may not use this widget (see web.allowed_origins)")


def _origin(request: web.Request) -> str | None:
    """The one ``Origin`` header; given twice or not UTF-8 is a 400 (without CORS headers: no browser sent it)."""
    return header_one(request, "Origin", max_chars=2048)


def _history_messages(
    state: DialogueState, sid: str, ratings: dict[str, str], quick: dict[str, list[str]]
) -> list[dict[str, Any]]:
    """History turns as widget messages. An assistant turn answers the user turn before it
    (as :meth:`adapters.web.sender.WebSender.deliver` numbers replies), which gives it the id visitors rate."""
    out: list[dict[str, Any]] = []
    last_user: str | None = None
    index = 0
    for turn in state.history:
        item: dict[str, Any] = {"role": turn.role, "text": turn.text, "ts": turn.ts}
        if turn.role == "user":
            raw = turn.meta.get("id")
            last_user = _client_id(raw) if isinstance(raw, str) and raw.startswith(f"{sid}:") else None
            index = 0
            item["message_id"] = last_user
        elif turn.role == "assistant":
            if last_user is not None:
                aid = answer_id(last_user, index)
                index += 1
                item.update(answer_id=aid, feedback=ratings.get(aid), quick_replies=quick.get(aid, []))
            item["source"] = turn.meta.get("source")
        else:
            last_user = None
        out.append(item)
    return out
