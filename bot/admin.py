"""Admin and agent HTTP API, behind ``Authorization: Bearer <admin.token>``.

Registered only when ``admin.token`` is set (``BOT__ADMIN__TOKEN``), so an
unconfigured hub answers 404 rather than exposing customer data.

- ``GET /api/admin/conversations/{channel}/{user_id}``: the stored state.
- ``DELETE`` the same path: erase everything stored about the conversation,
  the right to erasure: state and history; in Redis every per-conversation key
  (``Keys.conversation_keys``: the web widget's event log, feedback votes,
  WeCom response_url ...), every key listed in the user's erasure index
  (``Keys.user_index``: markers named after the user, written by the web
  adapter) and the conversation's records in the global feedback stream; in
  memory mode whatever the channel's adapter holds in memory, through its
  ``erase(ref)`` (the web adapter: event log and feedback); and the conversation's
  archived turns and votes (bot/archive/, ``deleted_archive_rows``; 503 while the
  archive database cannot be reached, so the erasure is repeated).
- ``POST /api/agent/reply`` ``{channel, user_id, text}``: a person answers
  through the customer's own channel; the conversation is taken over (the bot
  stays silent) and the answer is recorded in the history.
- ``POST /api/agent/release`` ``{channel, user_id}``: the bot takes over again.

Both go through the agent console's desk (bot/console/desk.py), so the console's inbox and live feed see
them; the admin token acts above the console's agents (it neither needs nor changes who holds a conversation).

A conversation is addressed as on the platform: ``channel`` and ``user_id``,
plus ``tenant`` (WeCom corp, DingTalk org) and ``conversation_id`` when it is
not the user's own single chat. A web visitor is addressed by the session
id: ``/api/admin/conversations/web/{session_id}``. Limitations: erasing by user
id reaches the user's single chats and the keys other modules index under the
user; a group chat's shared history is erased only by naming its
``conversation_id``, which erases the whole group conversation. Keys named
after a user that no module indexes are not reached: WeCom's id-less
platform events keep a 24 h dedup marker naming the user, and a memory-mode
process keeps its dedup markers and rate counters until they expire.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from bot.console.desk import DeliveryFailed
from bot.decode import DecodeError, has_surrogates
from bot.http import HttpError, bearer_token, json_response, query_one, read_fields
from bot.hub import ReplySink
from bot.services import Services
from bot.state import DialogueState
from bot.types import ConversationRef

log = logging.getLogger(__name__)

_MAX_ID = 128
_MAX_TEXT = 4000
_SCAN_BATCH = 1000
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class AdminApi:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.token = services.config.admin.token

    def routes(self) -> Sequence[web.AbstractRouteDef]:
        path = "/api/admin/conversations/{channel}/{user_id}"
        return [
            web.get(path, self.get_conversation),
            web.delete(path, self.delete_conversation),
            web.post("/api/agent/reply", self.agent_reply),
            web.post("/api/agent/release", self.agent_release),
        ]

    def _authorize(self, request: web.Request) -> None:
        token = bearer_token(request)
        if token is None or not hmac.compare_digest(token.encode(), self.token.encode()):
            raise HttpError(401, "unauthorized", "missing or invalid admin token", {"WWW-Authenticate": "Bearer"})

    # ------------------------------------------------------------------ admin
    async def get_conversation(self, request: web.Request) -> web.Response:
        self._authorize(request)
        ref = _path_ref(request)
        state = await self.services.store.load(ref.key)
        if state.version == 0:
            raise HttpError(404, "not_found", "nothing is stored for this conversation")
        return json_response(_state_json(state))

    async def delete_conversation(self, request: web.Request) -> web.Response:
        self._authorize(request)
        ref = _path_ref(request)
        services = self.services
        await services.store.delete(ref.key)
        await services.desk.forget(ref.key)  # the console's inbox row
        deleted = records = 0
        if services.redis is not None:
            keys = services.keys
            index = keys.user_index(ref.channel, ref.user_id)
            indexed = await services.redis.smembers(index)
            deleted = await services.redis.delete(*keys.conversation_keys(ref.key), *indexed, index)
            records = await self._erase_stream_records(keys.feedback_stream(), ref.key)
        try:
            sink: ReplySink | None = services.hub.sink(ref.channel)
        except KeyError:
            sink = None
        erase = getattr(sink, "erase", None)
        if erase is not None:  # what the channel keeps in process memory (memory mode)
            records += await erase(ref)
        archived = await self._erase_archive(ref.key)
        log.info("erased conversation %s (%d keys, %d records, %d archived rows)", ref.key, deleted, records,
                 archived)
        return json_response({"erased": ref.key, "deleted_keys": deleted, "deleted_records": records,
                              "deleted_archive_rows": archived})

    async def _erase_archive(self, conversation_key: str) -> int:
        """The conversation's archived turns and votes (bot/archive/). An archive that cannot be reached is a
        503, not a success: the erasure is not complete, and the caller repeats it (every part is idempotent)."""
        archive = self.services.archive
        if archive is None:
            return 0
        from bot.archive.writer import ArchiveUnavailable

        try:
            return await archive.erase(conversation_key)
        except ArchiveUnavailable:
            log.error("erasing conversation %s: the archive (%s) cannot be reached", conversation_key, archive.where)
            raise HttpError(503, "archive_unavailable", "the conversation archive cannot be reached; the rest is "
                            "erased, repeat the request to erase the archived turns", {"Retry-After": "30"}) from None

    async def _erase_stream_records(self, stream: str, conversation_key: str) -> int:
        """XDEL every entry of a shared stream whose ``conversation`` field is the conversation's key
        (feedback records: adapters/web/feedback.py). A paged scan: an admin action, not a hot path."""
        client = self.services.redis
        assert client is not None
        removed = 0
        start = "-"
        while True:
            batch = await client.xrange(stream, min=start, max="+", count=_SCAN_BATCH)
            mine = [entry_id for entry_id, fields in batch if fields.get("conversation") == conversation_key]
            if mine:
                removed += await client.xdel(stream, *mine)
            if len(batch) < _SCAN_BATCH:
                return removed
            start = f"({batch[-1][0]}"

    # ------------------------------------------------------------------ agent
    async def agent_reply(self, request: web.Request) -> web.Response:
        self._authorize(request)
        body = await read_fields(request, self.services.config.server.max_body_bytes)
        ref = _ref(body.data)
        text = body.text("text", max_chars=_MAX_TEXT)
        agent = body.opt_text("agent", max_chars=_MAX_ID)
        self._sink(ref.channel)
        try:
            state = await self.services.desk.reply(ref, None, text, display=agent)
        except ValueError:
            raise HttpError(400, "invalid_text", f"'text' must have 1-{_MAX_TEXT} characters") from None
        except DeliveryFailed as exc:
            raise HttpError(502, "delivery_failed", str(exc)) from None
        return json_response({"delivered": True, "handed_off": state.handed_off, "key": ref.key})

    async def agent_release(self, request: web.Request) -> web.Response:
        self._authorize(request)
        body = await read_fields(request, self.services.config.server.max_body_bytes)
        ref = _ref(body.data)
        notify = body.boolean("notify", default=True)
        self._sink(ref.channel)
        current = await self.services.store.load(ref.key)
        if current.version == 0:
            raise HttpError(404, "not_found", "no such conversation to release")
        try:
            released = await self.services.desk.release(ref, None, notify=notify, force=True)
        except DeliveryFailed as exc:
            raise HttpError(502, "delivery_failed", str(exc)) from None
        if not released:
            return json_response({"released": False, "key": ref.key, "message": "the bot already has it"})
        return json_response({"released": True, "key": ref.key})

    def _sink(self, channel: str) -> ReplySink:
        try:
            return self.services.hub.sink(channel)
        except KeyError:
            raise HttpError(404, "unknown_channel", "no such channel is running") from None


def _path_ref(request: web.Request) -> ConversationRef:
    """channel and user_id from the path; tenant and conversation_id from the query, each at most once."""
    params: dict[str, Any] = {"channel": request.match_info["channel"], "user_id": request.match_info["user_id"]}
    for name in ("tenant", "conversation_id"):
        value = query_one(request, name, required=False, max_chars=_MAX_ID)
        if value is not None:
            params[name] = value
    return _ref(params)


def _ref(params: Mapping[str, Any]) -> ConversationRef:
    """The conversation addressed by channel/user_id (+ tenant, conversation_id): each a string of
    1-128 characters of valid Unicode without control characters (they would end up in keys and logs)."""
    values: dict[str, str] = {}
    for name, required in (("channel", True), ("user_id", True), ("tenant", False), ("conversation_id", False)):
        value = params.get(name)
        if value is None and not required:
            continue
        if (not isinstance(value, str) or not value.strip() or len(value) > _MAX_ID or has_surrogates(value)
                or _CONTROL.search(value)):
            raise DecodeError(f"invalid_{name}", f"'{name}' must be a string of 1-{_MAX_ID} characters")
        values[name] = value.strip()
    conversation = values.get("conversation_id", values["user_id"])
    return ConversationRef(channel=values["channel"], conversation_id=conversation, user_id=values["user_id"],
                           tenant=values.get("tenant", ""), is_group=conversation != values["user_id"])


def _state_json(state: DialogueState) -> dict[str, Any]:
    return {
        "key": state.key,
        "version": state.version,
        "node": state.node,
        "slots": dict(state.slots),
        "handed_off": state.handed_off,
        "updated_at": state.updated_at,
        "data": {  # the dialogue layer's fields, under the keys they are stored with
            "lang": state.lang,
            "ref": None if state.ref is None else dataclasses.asdict(state.ref),
            "handoff": None if state.handoff is None else state.handoff.to_dict(),
            "anger": state.angry_messages,
            "attempts": state.invalid_answers,
        },
        "history": [{"role": t.role, "text": t.text, "ts": t.ts, "meta": dict(t.meta)} for t in state.history],
    }
