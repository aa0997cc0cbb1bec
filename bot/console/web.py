"""The console's pages, their JSON calls and the live event stream (everything under /console but sign-in).

Pages are server-rendered jinja2 (autoescape on) and one small script, ``static/console.js``, which reloads the
JSON it shows when ``/console/events`` says that something changed. The events carry no customer text: a page
always reads rows and states itself, so an event missed costs a moment of staleness, never a wrong answer.

Every answer carries a strict Content-Security-Policy (no inline script or style: what the page runs is
``console.js``, so a customer's ``<script>`` that slipped past escaping would still not run), ``X-Frame-Options:
DENY`` and ``Cache-Control: no-store`` (customer data must not sit in shared or back-button caches).

Input is read as everywhere else (bot/http.py, bot/decode.py): bodies under ``server.max_body_bytes``, typed
fields, no lone surrogates, unknown fields refused, so no input reaches a 500. Messages for agents are Chinese.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import jinja2
from aiohttp import web
from markupsafe import Markup
from redis.exceptions import RedisError

from bot.console import stats
from bot.console.canned import Canned, load_canned
from bot.console.desk import MAX_TEXT, DeliveryFailed, NotWaiting, Taken
from bot.decode import DecodeError, JsonObject, has_surrogates
from bot.http import HttpError, json_response, query_one, read_fields
from bot.state.base import StoreDown

if TYPE_CHECKING:
    from bot.console.auth import ConsoleAuth, ConsoleSession
    from bot.console.board import Waiting
    from bot.faq.model import FaqEntry
    from bot.services import Services
    from bot.state import DialogueState

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
STATIC_FILES = {"console.js": "text/javascript", "console.css": "text/css"}

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}

MAX_STREAMS = 50  # open console event streams per process; past it 503 (the script retries)
STREAM_RETRY_MS = 3000
MAX_KEY = 600  # a conversation key: channel:tenant:conversation id (each id at most a few hundred characters)
MAX_QUERY = 200
CANDIDATE_DAYS = 30
HISTORY_ITEMS = 50

CHANNELS = {"wecom": "企业微信", "dingtalk": "钉钉", "web": "网页", "api": "API"}
ROLES = {"user": "客户", "assistant": "机器人", "agent": "坐席", "system": "系统"}
SOURCES = {"faq": "FAQ", "llm": "大模型", "fallback": "兜底回复", "uncertain": "猜你想问", "unknown": "未识别",
           "refused": "拒答", "dialogue": "流程", "agent": "人工", "system": "系统", "safety": "安全拦截",
           "bot": "机器人", "cache": "缓存"}
VOTES = {"up": "客户点赞", "down": "客户点踩"}
FAQ_ACTIONS = {"edit_answer": "修改答案", "add_paraphrase": "添加问法", "remove_paraphrase": "删除问法",
               "pin": "置顶", "unpin": "取消置顶"}
CANDIDATE_KINDS = {"unanswered": "未答上", "disliked": "被点踩"}

MSG_NO_CURATION = "FAQ 编辑需要启用会话归档（archive.enabled）"
MSG_NO_ARCHIVE = "未启用会话归档"
MSG_ARCHIVE_DOWN = "会话归档数据库暂时无法连接，请稍后再试"
MSG_STORE_DOWN = "存储暂时不可用，请稍后再试"

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_KIND = re.compile(r"[a-z_]{1,32}")
_UNAVAILABLE: tuple[type[BaseException], ...] = (RedisError, OSError, StoreDown)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PageHandler = Callable[[web.Request, "ConsoleSession"], Awaitable[web.StreamResponse]]


# ---------------------------------------------------------------- formatting (shared with console.js)
def duration_text(seconds: float) -> str:
    """刚刚 / N 分钟 / N 小时 M 分: how long, in the words the inbox uses."""
    s = max(0, int(seconds))
    if s < 60:
        return "刚刚"
    minutes = s // 60
    if minutes < 60:
        return f"{minutes} 分钟"
    return f"{minutes // 60} 小时 {minutes % 60} 分"


def wait_text(since: float, now: float) -> str:
    """The inbox's wait column: since when the customer waits; an agent answered last: 已回复."""
    if not since:
        return "已回复"
    text = duration_text(now - since)
    return text if text == "刚刚" else f"等待 {text}"


def channel_label(channel: str) -> str:
    return CHANNELS.get(channel, channel)


def _conversation_href(key: str) -> str:
    return "/console/c?key=" + urllib.parse.quote(key, safe="")


def _unknown_fields(data: JsonObject, allowed: Iterable[str]) -> None:
    """A field the call does not take is a client bug worth telling (a typo would otherwise do nothing)."""
    known = set(allowed)
    if any(k not in known for k in data.data):
        raise DecodeError("unknown_field", f"unexpected field; this call takes {', '.join(sorted(known))}")


def _key_of(value: str | None) -> str:
    if value is None or not value.strip() or len(value) > MAX_KEY or has_surrogates(value) or _CONTROL.search(value):
        raise DecodeError("invalid_key", f"'key' must be a conversation key of 1-{MAX_KEY} characters")
    return value.strip()


def _faq_id(data: JsonObject) -> str:
    value = data.text("faq_id", max_chars=128)
    if _CONTROL.search(value):
        raise DecodeError("invalid_faq_id", "'faq_id' must be the id of an FAQ entry")
    return value


class ConsoleApp:
    """The console's routes on a gateway. ``auth`` checks every request (bot/console/auth.py)."""

    def __init__(self, services: Services, auth: ConsoleAuth) -> None:
        self.services = services
        self.auth = auth
        self.config = services.config
        self.tz = ZoneInfo(self.config.handoff.timezone)
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                      undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self._closing = asyncio.Event()
        self._streams = 0
        self._static: dict[str, tuple[float, bytes, str]] = {}
        self._canned: tuple[float, list[Canned]] | None = None

    # ------------------------------------------------------------------ wiring
    def routes(self) -> Sequence[web.AbstractRouteDef]:
        page, call = self._page, self._api
        return [
            web.get("/console", self.home),
            web.get("/console/inbox", page(self.inbox_page)),
            web.get("/console/c", page(self.conversation_page)),
            web.get("/console/faq", page(self.faq_page)),
            web.get("/console/dashboard", page(self.dashboard_page)),
            web.get("/console/static/{name}", self.static),
            web.get("/console/events", call(self.events)),
            web.get("/console/api/inbox", call(self.api_inbox)),
            web.get("/console/api/c", call(self.api_conversation)),
            web.post("/console/api/take", call(self.api_take)),
            web.post("/console/api/reply", call(self.api_reply)),
            web.post("/console/api/release", call(self.api_release)),
            web.post("/console/api/faq/answer", call(self.api_faq_answer)),
            web.post("/console/api/faq/paraphrase", call(self.api_faq_paraphrase)),
            web.post("/console/api/faq/paraphrase/remove", call(self.api_faq_remove_paraphrase)),
            web.post("/console/api/faq/pin", call(self.api_faq_pin)),
            web.post("/console/api/faq/unpin", call(self.api_faq_unpin)),
        ]

    async def shutdown(self) -> None:
        """Before aiohttp waits for open handlers: end the event streams (browsers reconnect elsewhere)."""
        self._closing.set()

    @property
    def open_streams(self) -> int:
        return self._streams

    def _api(self, handler: Handler) -> Handler:
        """JSON calls: errors as JSON with the console's headers; a store that is away is a 503."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                response = await handler(request)
            except HttpError as exc:
                exc.headers.update(SECURITY_HEADERS)
                raise
            except DecodeError as exc:
                raise HttpError(400, exc.code, exc.message, dict(SECURITY_HEADERS)) from None
            except _UNAVAILABLE as exc:
                log.warning("console %s %s: store unavailable (%s)", request.method, request.path,
                            type(exc).__name__)
                raise HttpError(503, "unavailable", MSG_STORE_DOWN, {"Retry-After": "5", **SECURITY_HEADERS}) from None
            if not response.prepared:
                response.headers.update(SECURITY_HEADERS)
            return response

        return wrapped

    def _page(self, handler: PageHandler) -> Handler:
        """Pages: signed out, to the sign-in form; a browser (Accept text/html) gets an error as a page, any
        other client the JSON error."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            session: ConsoleSession | None = None
            try:
                try:
                    session = await self.auth.page_session(request)
                except web.HTTPException as exc:
                    if exc.status < 400:  # the sign-in redirect
                        exc.headers.update(SECURITY_HEADERS)
                    raise
                response = await handler(request, session)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                return self._error_page(request, session, HttpError(exc.status, "http_error", exc.reason or "出错了"))
            except HttpError as exc:
                return self._error_page(request, session, exc)
            except DecodeError as exc:
                return self._error_page(request, session, HttpError(400, exc.code, exc.message))
            except _UNAVAILABLE as exc:
                log.warning("console page %s: store unavailable (%s)", request.path, type(exc).__name__)
                return self._error_page(request, session,
                                        HttpError(503, "unavailable", MSG_STORE_DOWN, {"Retry-After": "5"}))
            response.headers.update(SECURITY_HEADERS)
            return response

        return wrapped

    def _error_page(self, request: web.Request, session: ConsoleSession | None, exc: HttpError) -> web.StreamResponse:
        if "text/html" not in request.headers.get("Accept", ""):
            exc.headers.update(SECURITY_HEADERS)
            raise exc
        message = exc.message if exc.status != 400 or exc.code == "invalid_day" else "请求参数不正确"
        html = self._render("base.html", session, page="error", error=message,
                            error_title="出错了" if exc.status >= 500 else "无法打开这个页面")
        response = web.Response(text=html, status=exc.status, content_type="text/html", charset="utf-8")
        response.headers.update({**exc.headers, **SECURITY_HEADERS})
        return response

    def _render(self, template: str, session: ConsoleSession | None, **context: Any) -> str:
        context.setdefault("page", "plain")
        context.setdefault("title", None)
        context.setdefault("error", None)
        context.setdefault("error_title", None)
        context.setdefault("csrf_token", None)
        return self.env.get_template(template).render(session=session, **context)

    def _html(self, template: str, session: ConsoleSession, **context: Any) -> web.Response:
        return web.Response(text=self._render(template, session, **context), content_type="text/html",
                            charset="utf-8")

    async def _body(self, request: web.Request, allowed: Iterable[str]) -> tuple[ConsoleSession, JsonObject]:
        """A write: the session and its CSRF token first (nothing is read for a stranger), then the body."""
        session = await self.auth.write_session(request)
        data = await read_fields(request, self.config.server.max_body_bytes)
        _unknown_fields(data, allowed)
        return session, data

    # ------------------------------------------------------------------ names
    def _display(self, agent: str | None) -> str:
        """An agent's display name (the accounts file), else the sign-in name."""
        if not agent:
            return ""
        accounts = getattr(self.auth, "accounts", None)
        try:
            found = accounts.get(agent) if accounts is not None else None
        except Exception:  # a broken accounts file: the name will do (auth logs the file's problem)
            found = None
        return found.display if found is not None else agent

    # ------------------------------------------------------------------ views (one shape for pages and JSON)
    def _row_view(self, row: Waiting, now: float) -> dict[str, Any]:
        wait_since = row.waiting_since
        return {
            "key": row.key,
            "href": _conversation_href(row.key),
            "channel": row.ref.channel,
            "channel_label": channel_label(row.ref.channel),
            "name": row.name,
            "reason": row.reason,
            "reason_text": row.reason_text or row.reason,
            "since": row.since,
            "last_text": row.last_text,
            "last_at": row.last_at,
            "wait_since": wait_since,
            "wait_text": wait_text(wait_since, now),
            "unread": row.unread,
            "taken_by": row.taken_by,
            "taken_by_display": self._display(row.taken_by),
            "taken_at": row.taken_at,
        }

    def _clock(self, ts: float) -> tuple[str, str]:
        """A turn's time as the agent reads it (the handoff timezone): HH:MM today, else MM-DD HH:MM."""
        if not ts:
            return "", ""
        try:
            when = dt.datetime.fromtimestamp(ts, self.tz)
        except (OverflowError, OSError, ValueError):
            return "", ""
        today = dt.datetime.now(self.tz).date()
        text = when.strftime("%H:%M") if when.date() == today else when.strftime("%m-%d %H:%M")
        return text, when.isoformat(timespec="seconds")

    def _turn_view(self, role: str, text: str, ts: float, meta: Mapping[str, Any],
                   votes: Mapping[str, str]) -> dict[str, Any]:
        source = str(meta.get("source") or ("agent" if role == "agent" else ""))
        agent = meta.get("display") or (self._display(str(meta["agent"])) if meta.get("agent") else "")
        time_text, iso = self._clock(ts)
        answer_id = meta.get("answer_id")
        vote = votes.get(str(answer_id)) if answer_id else None
        return {
            "role": role,
            "role_class": role if role in ROLES else "system",
            "role_label": ROLES.get(role, role),
            "text": text,
            "ts": ts,
            "time": time_text,
            "iso": iso,
            "source": source,
            "source_label": SOURCES.get(source, source),
            "agent": str(agent) if agent else "",
            "vote": vote,
            "vote_label": VOTES.get(vote or "", ""),
        }

    async def _conversation(self, key: str) -> dict[str, Any] | None:
        state: DialogueState | None = await self.services.desk.conversation(key)
        if state is None:
            return None
        row = await self.services.board.get(key)
        now = time.time()
        ref = state.ref or (row.ref if row is not None else None)
        channel = ref.channel if ref is not None else key.split(":", 1)[0]
        holder = state.handoff.agent if state.handoff is not None and state.handed_off else None
        holder = holder or (row.taken_by if row is not None else None)
        votes: dict[str, str] = {}
        history = [self._turn_view(t.role, t.text, t.ts, t.meta, votes) for t in state.history]
        row_view = self._row_view(row, now) if row is not None else None
        reason = row_view["reason_text"] if row_view else ""
        if not reason and state.handoff is not None and state.handed_off:
            reason = state.handoff.reason
        return {
            "key": key,
            "channel": channel,
            "channel_label": channel_label(channel),
            "name": row.name if row is not None else (ref.user_id if ref is not None else key),
            "reason_text": reason,
            "wait_since": row_view["wait_since"] if row_view else 0,
            "wait_text": row_view["wait_text"] if row_view else "",
            "row": row_view,
            "owner_name": holder or "",
            "owner": self._display(holder),
            "state": {
                "node": state.node,
                "handed_off": state.handed_off,
                "slots": [[str(k), _slot_text(v)] for k, v in state.slots.items()],
            },
            "history": history,
        }

    # ------------------------------------------------------------------ pages
    async def home(self, _request: web.Request) -> web.StreamResponse:
        return web.Response(status=303, headers={"Location": "/console/inbox", **SECURITY_HEADERS})

    async def inbox_page(self, request: web.Request, session: ConsoleSession) -> web.StreamResponse:
        now = time.time()
        rows = [self._row_view(r, now) for r in await self.services.desk.waiting()]
        return self._html("inbox.html", session, page="inbox", rows=rows, now=now)

    async def conversation_page(self, request: web.Request, session: ConsoleSession) -> web.StreamResponse:
        key = _key_of(query_one(request, "key", max_chars=MAX_KEY))
        conv = await self._conversation(key)
        if conv is None:
            raise HttpError(404, "not_found", "没有这个会话（可能已过期或被删除）")
        return self._html("conversation.html", session, page="conversation", conv=conv, canned=self._canned_list(),
                          max_reply_chars=MAX_TEXT, now=time.time())

    async def faq_page(self, request: web.Request, session: ConsoleSession) -> web.StreamResponse:
        q = (query_one(request, "q", required=False, max_chars=MAX_QUERY) or "").strip()
        curation = self.services.curation
        unavailable = None
        candidates: list[dict[str, Any]] = []
        history: list[dict[str, Any]] = []
        if curation is None:
            found = self._static_faq(q)
        else:
            found = curation.search(q, k=30) if q else [(e, None) for e in curation.entries()]
            from bot.faq.curation import CurationUnavailable

            try:
                history = [self._change_view(c) for c in await curation.history(HISTORY_ITEMS)]
            except CurationUnavailable:
                unavailable = MSG_ARCHIVE_DOWN
            candidates = await self._candidates(curation.entries())
        entries = [self._entry_view(e, score) for e, score in found]
        if not q:
            entries.sort(key=lambda e: not e["pinned"])  # pinned answers first, then the file's order
        return self._html("faq.html", session, page="faq", q=q, entries=entries, editable=curation is not None,
                          unavailable=unavailable, candidates=candidates, history=history)

    def _static_faq(self, q: str) -> list[tuple[FaqEntry, float | None]]:
        """Without curation the FAQ is read-only: what this process answers from."""
        index = self.services.answerer.faq
        if q:
            return [(hit.entry, hit.score) for hit in index.search(q, k=30)]
        return [(e, None) for e in index.entries]

    async def _candidates(self, entries: Sequence[FaqEntry]) -> list[dict[str, Any]]:
        """The archive's often unanswered or disliked questions, less those the FAQ now has word for word (a
        question just pinned, or added as a phrasing, is taken care of)."""
        archive = self.services.archive
        if archive is None:
            return []
        from bot.archive.writer import ArchiveUnavailable
        from bot.faq.curation import phrasing_key

        try:
            found = await stats.candidates(archive, days=CANDIDATE_DAYS)
        except ArchiveUnavailable:
            return []
        known = {phrasing_key(text) for e in entries for text in (e.question, *e.paraphrases)}
        return [{"question": c.question, "count": c.count, "kind": c.kind,
                 "kind_label": CANDIDATE_KINDS.get(c.kind, c.kind), "last_answer": c.last_answer}
                for c in found if phrasing_key(c.question) not in known]

    def _entry_view(self, entry: FaqEntry, score: float | None = None) -> dict[str, Any]:
        return {"id": entry.id, "category": entry.category, "question": entry.question, "answer": entry.answer,
                "paraphrases": list(entry.paraphrases), "pinned": entry.id.startswith("pin-"),
                "score": None if score is None or not score else f"{score:.2f}"}

    def _change_view(self, change: Any) -> dict[str, Any]:
        at = change.at if change.at.tzinfo is not None else change.at.replace(tzinfo=dt.UTC)
        text = f"{change.question} → {change.text}" if change.question else change.text
        return {"id": change.id, "when": at.astimezone(self.tz).strftime("%m-%d %H:%M"),
                "agent": self._display(change.agent), "action": change.action,
                "action_label": FAQ_ACTIONS.get(change.action, change.action), "faq_id": change.faq_id,
                "text": text[:120] + ("…" if len(text) > 120 else "")}

    async def dashboard_page(self, request: web.Request, session: ConsoleSession) -> web.StreamResponse:
        today = dt.datetime.now(self.tz).date()
        raw = query_one(request, "day", required=False, max_chars=32)
        day = today
        if raw:
            try:
                if not _DAY.fullmatch(raw):
                    raise ValueError(raw)
                day = dt.date.fromisoformat(raw)
            except ValueError:
                raise HttpError(400, "invalid_day", "日期格式不正确，应为 YYYY-MM-DD") from None
        context: dict[str, Any] = {"day": day.isoformat(), "today": today.isoformat(), "tz": self.tz.key,
                                   "notice": None, "stats": [], "chart": "", "unanswered": [], "disliked": []}
        archive = self.services.archive
        if archive is None:
            context["notice"] = MSG_NO_ARCHIVE
        else:
            from bot.archive.writer import ArchiveUnavailable

            try:
                board = await stats.dashboard(archive, day, self.tz)
            except ArchiveUnavailable:  # the page still works (and says so); the numbers come back with the DB
                context["notice"] = MSG_ARCHIVE_DOWN
            else:
                context.update(self._dashboard_view(board, today))
        return self._html("dashboard.html", session, page="dashboard", **context)

    @staticmethod
    def _dashboard_view(board: stats.Dashboard, today: dt.date) -> dict[str, Any]:
        def share(group: str) -> str:
            return f"{board.share(group) * 100:.0f}%"

        by = board.by_source
        numbers = [
            {"name": "conversations", "label": "对话数", "value": board.conversations, "share": None},
            {"name": "turns", "label": "消息轮数", "value": board.turns, "share": None},
            {"name": "faq", "label": "FAQ 回答", "value": by.get("faq", 0), "share": share("faq")},
            {"name": "model", "label": "模型回答", "value": by.get("model", 0), "share": share("model")},
            {"name": "agent", "label": "人工回答", "value": by.get("agent", 0), "share": share("agent")},
            {"name": "handoffs", "label": "转人工", "value": board.handoffs, "share": None},
            {"name": "up", "label": "点赞", "value": board.thumbs_up, "share": None},
            {"name": "down", "label": "点踩", "value": board.thumbs_down, "share": None},
        ]
        svg = stats.bar_chart_svg(board.hourly, label=stats.chart_label(board.day, today))
        if 'id="chart"' not in svg:
            svg = svg.replace("<svg ", '<svg id="chart" ', 1)
        # inline style attributes are refused by the CSP (style-src 'self'); the stylesheet sizes the chart
        svg = re.sub(r'\sstyle="[^"]*"', "", svg, count=1)
        return {"stats": numbers, "chart": Markup(svg),  # built by stats.bar_chart_svg, which escapes every text
                "unanswered": board.unanswered, "disliked": board.disliked}

    def _canned_list(self) -> list[Canned]:
        """config canned answers, read again when the file changes; a broken file shows none (and is logged)."""
        path = self.config.resolve_path(self.config.console.canned_path)
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return []
        if self._canned is None or self._canned[0] != mtime:
            try:
                self._canned = (mtime, load_canned(path))
            except ValueError as exc:
                log.error("canned answers unusable: %s", exc)
                self._canned = (mtime, [])
        return self._canned[1]

    # ------------------------------------------------------------------ static
    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        kind = STATIC_FILES.get(name)
        if kind is None:
            raise HttpError(404, "not_found", "no such file", dict(SECURITY_HEADERS))
        body, etag = self._static_file(name)
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache", "ETag": etag}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, content_type=kind, charset="utf-8", headers=headers)

    def _static_file(self, name: str) -> tuple[bytes, str]:
        path = STATIC / name
        mtime = path.stat().st_mtime
        cached = self._static.get(name)
        if cached is None or cached[0] != mtime:
            body = path.read_bytes()
            cached = (mtime, body, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
            self._static[name] = cached
        return cached[1], cached[2]

    # ------------------------------------------------------------------ JSON: inbox and conversations
    async def api_inbox(self, request: web.Request) -> web.Response:
        await self.auth.api_session(request)
        now = time.time()
        rows = [self._row_view(r, now) for r in await self.services.desk.waiting()]
        return json_response({"rows": rows, "now": now})

    async def api_conversation(self, request: web.Request) -> web.Response:
        await self.auth.api_session(request)
        key = _key_of(query_one(request, "key", max_chars=MAX_KEY))
        return await self._conversation_json(key)

    async def _conversation_json(self, key: str, **extra: Any) -> web.Response:
        conv = await self._conversation(key)
        if conv is None:
            raise HttpError(404, "not_found", "没有这个会话（可能已过期或被删除）")
        return json_response({"conversation": conv, "now": time.time(), **extra})

    def _taken(self, exc: Taken) -> HttpError:
        who = self._display(exc.agent)
        return _TakenError(exc.agent, who)

    async def _not_waiting(self, key: str) -> HttpError:
        if await self.services.desk.conversation(key) is None:
            return HttpError(404, "not_found", "没有这个会话（可能已过期或被删除）")
        return HttpError(409, "not_waiting", "该会话没有在等待人工（可能已交还机器人）")

    async def api_take(self, request: web.Request) -> web.Response:
        session, data = await self._body(request, ("key", "force"))
        key = _key_of(data.text("key", max_chars=MAX_KEY))
        force = data.boolean("force", default=False)
        if force:
            self.auth.require_admin(session)
        try:
            await self.services.desk.take(key, session.agent, force=force)
        except Taken as exc:
            raise self._taken(exc) from None
        except NotWaiting:
            raise await self._not_waiting(key) from None
        return await self._conversation_json(key, ok=True)

    async def api_reply(self, request: web.Request) -> web.Response:
        session, data = await self._body(request, ("key", "text"))
        key = _key_of(data.text("key", max_chars=MAX_KEY))
        text = data.opt_text("text", max_chars=MAX_TEXT + 200)
        if text is None or not text.strip():
            raise HttpError(400, "invalid_text", "回复内容不能为空")
        if len(text.strip()) > MAX_TEXT:
            raise HttpError(400, "invalid_text", f"回复最多 {MAX_TEXT} 个字")
        try:
            await self.services.desk.reply(key, session.agent, text, display=session.display)
        except Taken as exc:
            raise self._taken(exc) from None
        except NotWaiting:
            raise await self._not_waiting(key) from None
        except KeyError:
            raise HttpError(409, "channel_unavailable", "客户所在的渠道没有在本服务上运行，无法发送") from None
        except ValueError:
            raise HttpError(400, "invalid_text", f"回复须为 1-{MAX_TEXT} 个字") from None
        except DeliveryFailed as exc:
            raise _delivery_failed(exc) from None
        return await self._conversation_json(key, ok=True, delivered=True)

    async def api_release(self, request: web.Request) -> web.Response:
        session, data = await self._body(request, ("key", "notify", "force"))
        key = _key_of(data.text("key", max_chars=MAX_KEY))
        notify = data.boolean("notify", default=True)
        force = data.boolean("force", default=False)
        if force:
            self.auth.require_admin(session)
        released = True
        try:
            released = await self.services.desk.release(key, session.agent, notify=notify, force=force)
        except Taken as exc:
            raise self._taken(exc) from None
        except NotWaiting:
            raise await self._not_waiting(key) from None
        except KeyError:
            raise HttpError(409, "channel_unavailable", "客户所在的渠道没有在本服务上运行") from None
        except DeliveryFailed as exc:  # the release stands; the customer was not told
            log.info("released %s; the notice was not delivered (%s)", key, exc.kind)
        return await self._conversation_json(key, ok=True, released=released)

    # ------------------------------------------------------------------ SSE
    async def events(self, request: web.Request) -> web.StreamResponse:
        """``event: <kind>`` frames from services.feed (one subscription per connection), a heartbeat comment
        every ``web.heartbeat_s`` (when the session is also looked at again: an ended one gets ``signed_out``
        and the stream ends), and an end at shutdown."""
        session = await self.auth.api_session(request)
        if self._closing.is_set():
            raise HttpError(503, "closing", "服务正在重启，请稍后重连", {"Retry-After": "3"})
        if self._streams >= MAX_STREAMS:
            raise HttpError(503, "streams_full", "打开的工作台页面过多，请关闭一些后重试", {"Retry-After": "10"})
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            **SECURITY_HEADERS,
            "Cache-Control": "no-store, no-transform",
            "X-Accel-Buffering": "no",
        })
        self._streams += 1
        heartbeat = self.config.web.heartbeat_s
        closing = asyncio.ensure_future(self._closing.wait())
        pending: asyncio.Future[Any] | None = None
        try:
            async with self.services.feed.subscribe() as feed:
                stream = feed.__aiter__()
                await response.prepare(request)
                await response.write(f"retry: {STREAM_RETRY_MS}\n\n".encode())  # subscribed from here on
                while not self._closing.is_set():
                    if pending is None:
                        pending = asyncio.ensure_future(stream.__anext__())
                    done, _ = await asyncio.wait((pending, closing), timeout=heartbeat,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if self._closing.is_set():
                        break
                    if pending in done:
                        finished, pending = pending, None
                        try:
                            event = finished.result()
                        except StopAsyncIteration:  # the feed closed (shutdown)
                            break
                        await response.write(_frame(event))
                        continue
                    if not await self._alive(session):
                        await response.write(b'event: signed_out\ndata: {"kind":"signed_out"}\n\n')
                        break
                    await response.write(b": ping\n\n")
        except ConnectionError:
            pass  # the browser went away
        except Exception:
            if not response.prepared:
                raise
            log.exception("console event stream failed; the page reconnects")
        finally:
            closing.cancel()
            if pending is not None and not pending.done():
                pending.cancel()
            self._streams -= 1
        return response

    async def _alive(self, session: ConsoleSession) -> bool:
        """Whether the session still stands, without counting as use (an open tab must not keep it alive):
        its record is in the KV (sign-out deletes it; idle and maximum age are its TTL) and within its limits,
        and the account still has the same role."""
        check = getattr(self.auth, "session_alive", None)
        if check is not None:
            return bool(await check(session))
        auth = self.auth
        try:
            raw = await auth.kv.get(auth.keys.console_session(session.digest))
        except _UNAVAILABLE:
            return True  # the store is away: the next real request decides
        if raw is None:
            return False
        try:
            data = json.loads(raw)
            created = float(data["created"])
            seen = float(data.get("seen", created))
        except (ValueError, KeyError, TypeError):
            return False
        now = auth.clock()
        console = self.config.console
        if now >= created + console.session_max_s or now - seen >= console.session_idle_s:
            return False
        try:
            account = auth.accounts.get(session.agent)
        except Exception:
            return False
        return account is not None and account.role == session.role

    # ------------------------------------------------------------------ JSON: FAQ
    def _curation(self) -> Any:
        curation = self.services.curation
        if curation is None:
            raise HttpError(503, "curation_disabled", MSG_NO_CURATION)
        return curation

    async def _faq_write(self, session: ConsoleSession, call: Callable[[Any], Awaitable[Any]],
                         faq_id: str | None = None) -> web.Response:
        curation = self._curation()
        from bot.faq.curation import CurationUnavailable

        try:
            change = await call(curation)
        except CurationUnavailable as exc:
            raise HttpError(503, "curation_unavailable", str(exc) or MSG_ARCHIVE_DOWN, {"Retry-After": "10"}) from None
        except KeyError:
            raise HttpError(404, "not_found", "没有这个 FAQ 条目（可能已被删除）") from None
        except ValueError as exc:  # InvalidChange: a Chinese message that never quotes the text
            raise HttpError(400, "invalid_change", str(exc) or "内容不符合要求") from None
        log.info("faq %s on %s by %s", change.action, change.faq_id, session.agent)
        entry = curation.get(change.faq_id) if hasattr(curation, "get") else None
        return json_response({"ok": True, "change": self._change_view(change),
                              "entry": None if entry is None else self._entry_view(entry)})

    async def api_faq_answer(self, request: web.Request) -> web.Response:
        session, data = await self._body(request, ("faq_id", "answer"))
        faq_id = _faq_id(data)
        answer = data.text("answer", max_chars=4000, non_empty=False)
        return await self._faq_write(session, lambda c: c.edit_answer(faq_id, answer, session.agent))

    async def api_faq_paraphrase(self, request: web.Request) -> web.Response:
        session, data = await self._body(request, ("faq_id", "text"))
        faq_id = _faq_id(data)
        text = data.text("text", max_chars=400, non_empty=False)
        return await self._faq_write(session, lambda c: c.add_paraphrase(faq_id, text, session.agent))

    async def api_faq_remove_paraphrase(self, request: web.Request) -> web.Response:
        session, data = await self._body(request, ("faq_id", "text"))
        faq_id = _faq_id(data)
        text = data.text("text", max_chars=400, non_empty=False)
        return await self._faq_write(session, lambda c: c.remove_paraphrase(faq_id, text, session.agent))

    async def api_faq_pin(self, request: web.Request) -> web.Response:
        session, data = await self._body(request, ("question", "answer"))
        question = data.text("question", max_chars=400, non_empty=False)
        answer = data.text("answer", max_chars=4000, non_empty=False)
        return await self._faq_write(session, lambda c: c.pin(question, answer, session.agent))

    async def api_faq_unpin(self, request: web.Request) -> web.Response:
        session, data = await self._body(request, ("faq_id",))
        faq_id = _faq_id(data)
        return await self._faq_write(session, lambda c: c.unpin(faq_id, session.agent))


class _TakenError(HttpError):
    """409 with the holder named, for the page's 「已被 X 接手」."""

    def __init__(self, agent: str, display: str) -> None:
        super().__init__(409, "taken", f"已被 {display} 接手")
        self.agent = agent
        self.display = display

    def response(self) -> web.Response:
        resp = json_response({"error": self.code, "agent": self.display, "message": self.message},
                             status=self.status)
        resp.headers.update(self.headers)
        return resp


def _delivery_failed(exc: DeliveryFailed) -> HttpError:
    label = channel_label(exc.channel)
    return HttpError(502, "delivery_failed", f"{label}（{exc.channel}）发送失败（{exc.kind}），消息已记录，请稍后重试")


def _slot_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def _frame(event: Any) -> bytes:
    """One SSE frame; the kind and id are ours (no line breaks can get in), the data small JSON."""
    kind = event.kind if _KIND.fullmatch(event.kind or "") else "message"
    data: dict[str, Any] = {"kind": kind, "key": event.key}
    for name, value in dict(event.data or {}).items():
        if isinstance(name, str) and isinstance(value, str | int | float | bool) and name not in data:
            data[name] = value
    event_id = "".join(c for c in str(event.id or "") if c.isascii() and c.isprintable())[:64]
    head = f"event: {kind}\n" + (f"id: {event_id}\n" if event_id else "")
    try:
        body = json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        body = json.dumps(data).encode()
    return head.encode() + b"data: " + body + b"\n\n"
