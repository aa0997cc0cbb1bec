"""Console sign-in, sessions and CSRF.

A session is a random token in an HttpOnly, SameSite=Strict cookie scoped to ``/console``; the shared KV holds its
record under the token's SHA-256 (a dump of Redis gives no usable cookie), so every gateway process knows every
session and a sign-out anywhere ends it everywhere. The record expires when unused for ``session_idle_s`` (the KV's
TTL, refreshed on use) and at ``session_max_s`` after sign-in whatever happens; the account is looked up again on
every use, so removing an agent or changing their role ends their sessions at once.

Writes need the session's CSRF token (header ``X-CSRF-Token`` or a form field) and, when the browser names one, an
Origin or Referer of this very site. SameSite=Strict alone would stop most cross-site posts; the token also stops a
sibling site on the same registrable domain. The sign-in form has no session yet, so it is protected by a
double-submit cookie (``kefu_console_pre``) that must equal the form's hidden field.

Failed sign-ins are counted per name and per address in the KV (every process shares the budget), and the counts
are checked before the password is, so guessing costs the guesser, not our CPU.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import jinja2
import redis.asyncio as aioredis
from aiohttp import web

from bot.config import Config
from bot.console.accounts import ROLES, Accounts, AccountsError, Agent, Role
from bot.decode import DecodeError, has_surrogates
from bot.http import HttpError, client_address, header_one, query_one, read_body
from bot.state.keys import Keys
from bot.state.kv import SharedKV

log = logging.getLogger(__name__)

COOKIE = "kefu_console"
PRE_COOKIE = "kefu_console_pre"
COOKIE_PATH = "/console"
LOGIN_PATH = "/console/login"
LOGOUT_PATH = "/console/logout"
HOME = "/console/inbox"

MSG_BAD_LOGIN = "用户名或密码错误"
MSG_TOO_MANY = "登录尝试过多，请稍后再试"
MSG_EXPIRED_FORM = "页面已过期，请重新登录"

_TOKEN = re.compile(r"[A-Za-z0-9_-]{20,128}")
_MAX_FIELD = 4096
_TEMPLATES = Path(__file__).resolve().parent / "templates"
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
}

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    agent: str
    role: Role
    display: str
    csrf: str
    created: float
    digest: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _last_header(request: web.Request, name: str) -> str | None:
    """The last entry of a proxy header (several headers are one comma-separated list), the one our proxy set."""
    values = ",".join(request.headers.getall(name, []))
    if has_surrogates(values):
        raise DecodeError(f"invalid_{name.lower().replace('-', '_')}", f"'{name}' is not valid UTF-8")
    parts = [v.strip() for v in values.split(",") if v.strip()]
    return parts[-1] if parts else None


def _origin(scheme: str, netloc: str) -> str:
    """``scheme://host[:port]`` lower-cased, the default port left out, as browsers write Origin."""
    scheme, netloc = scheme.lower(), netloc.lower()
    default = {"http": ":80", "https": ":443"}.get(scheme)
    if default and netloc.endswith(default):
        netloc = netloc[: -len(default)]
    return f"{scheme}://{netloc}"


def safe_next(value: str | None) -> str:
    """Where to go after sign-in: only a path of the console itself, never another site (``//evil``,
    ``https://evil``, ``/\\evil``) nor the sign-in page again."""
    if (not value or len(value) > 2048 or not value.startswith("/console") or value.startswith("//")
            or any(not (0x21 <= ord(c) <= 0x7E) or c == "\\" for c in value)):
        return HOME
    rest = value[len("/console"):]
    if rest and rest[0] not in "/?#":
        return HOME
    if value.split("?", 1)[0].rstrip("/") in (LOGIN_PATH, LOGOUT_PATH):
        return HOME
    return value


def parse_form(body: bytes) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body: UTF-8 only (raw and percent-escaped) and one value per
    field, else a 400, like every other untrusted input (bot/decode.py)."""
    try:
        text = body.decode("utf-8")
        parsed = urllib.parse.parse_qs(text, keep_blank_values=True, strict_parsing=False, errors="strict",
                                       max_num_fields=64)
    except UnicodeDecodeError:
        raise HttpError(400, "invalid_form", "form body is not valid UTF-8") from None
    except ValueError:
        raise HttpError(400, "invalid_form", "form has too many fields") from None
    fields: dict[str, str] = {}
    for name, values in parsed.items():
        if len(values) != 1:
            raise HttpError(400, "duplicate_field", f"form field '{name[:40]}' is given more than once")
        if len(values[0]) > _MAX_FIELD:
            raise HttpError(400, "invalid_form", f"form field '{name[:40]}' is too long")
        fields[name] = values[0]
    return fields


class ConsoleAuth:
    """Sign-in pages and the session checks every console route calls (``page_session``, ``api_session``,
    ``write_session``, ``require_admin``). ``clock`` gives the sessions' notion of now (tests move it)."""

    def __init__(self, cfg: Config, kv: SharedKV, keys: Keys, accounts: Accounts,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.kv = kv
        self.keys = keys
        self.accounts = accounts
        self.clock = clock
        self._broken: str | None = None  # the accounts file's last complaint, logged once
        self._env = jinja2.Environment(loader=jinja2.FileSystemLoader(_TEMPLATES), autoescape=True,
                                       undefined=jinja2.StrictUndefined)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(LOGIN_PATH, self.login_page),
            web.post(LOGIN_PATH, self.login),
            web.post(LOGOUT_PATH, self.logout),
        ]

    # -- helpers -------------------------------------------------------------------------------------------

    async def _kv(self, call: Awaitable[T]) -> T:
        """A KV call; the store being down is a 503 (try again), not a 500."""
        try:
            return await call
        except (aioredis.RedisError, OSError):
            raise HttpError(503, "unavailable", "会话存储暂不可用，请稍后再试", {"Retry-After": "5"}) from None

    def _account(self, name: str) -> Agent | None:
        """The account now, or None; a broken accounts file counts as no accounts, logged once per complaint."""
        try:
            agent = self.accounts.get(name)
        except AccountsError as exc:
            self._complain(exc)
            return None
        self._broken = None
        return agent

    def _complain(self, exc: AccountsError) -> None:
        if str(exc) != self._broken:
            self._broken = str(exc)
            log.error("console accounts unusable, nobody can sign in: %s", exc)

    def _has_accounts(self) -> bool:
        try:
            return bool(self.accounts.all())
        except AccountsError as exc:
            self._complain(exc)
            return False

    def _secure(self, request: web.Request) -> bool:
        mode = self.cfg.console.cookie_secure
        if mode != "auto":
            return mode == "always"
        if request.secure:
            return True
        forwarded = _last_header(request, "X-Forwarded-Proto") if self.cfg.web.trust_forwarded_for else None
        return (forwarded or "").lower() == "https"

    def _cookie(self, response: web.StreamResponse, request: web.Request, name: str, value: str) -> None:
        response.set_cookie(name, value, path=COOKIE_PATH, httponly=True, samesite="Strict",
                            secure=self._secure(request) or None)

    def _drop_cookie(self, response: web.StreamResponse, request: web.Request, name: str) -> None:
        response.del_cookie(name, path=COOKIE_PATH, httponly=True, samesite="Strict",
                            secure=self._secure(request) or None)

    def own_origin(self, request: web.Request) -> str:
        """This site as the browser sees it: the request's scheme and Host, or, behind our proxy
        (``web.trust_forwarded_for``), what it says in X-Forwarded-Proto / X-Forwarded-Host."""
        scheme, host = request.scheme, request.host
        if self.cfg.web.trust_forwarded_for:
            proto = (_last_header(request, "X-Forwarded-Proto") or "").lower()
            scheme = proto if proto in ("http", "https") else scheme
            host = _last_header(request, "X-Forwarded-Host") or host
        return _origin(scheme, host)

    def _same_site(self, request: web.Request) -> bool:
        """Origin when the browser sent one, else Referer when it did; neither (some privacy settings): the
        CSRF token alone decides."""
        own = self.own_origin(request)
        origin = header_one(request, "Origin")
        if origin is not None:
            return origin.strip().lower() != "null" and _origin(*_split(origin)) == own
        referer = header_one(request, "Referer")
        if referer:
            return _origin(*_split(referer)) == own
        return True

    # -- sessions ------------------------------------------------------------------------------------------

    def _session_key(self, digest: str) -> str:
        return self.keys.console_session(digest)

    def _ended_key(self, digest: str) -> str:
        """Marks a signed-out session, so a request that read the record just before the sign-out cannot write
        it back when it refreshes the TTL."""
        return self.keys.console_session(f"{digest}:ended")

    async def _load(self, request: web.Request) -> ConsoleSession | None:
        token = request.cookies.get(COOKIE)
        if not token or not _TOKEN.fullmatch(token):
            return None
        digest = _digest(token)
        key = self._session_key(digest)
        raw = await self._kv(self.kv.get(key))
        if raw is None or await self._kv(self.kv.get(self._ended_key(digest))) is not None:
            return None
        try:
            data: dict[str, Any] = json.loads(raw)
            name, role, csrf = str(data["agent"]), data["role"], str(data["csrf"])
            created, seen = float(data["created"]), float(data.get("seen", data["created"]))
            if role not in ROLES:
                raise ValueError(role)
        except (ValueError, KeyError, TypeError):
            await self._kv(self.kv.delete(key))
            return None
        now = self.clock()
        console = self.cfg.console
        if now >= created + console.session_max_s or now - seen >= console.session_idle_s:
            await self._kv(self.kv.delete(key))
            return None
        account = self._account(name)
        if account is None or account.role != role:
            log.info("console session of %s ended: the account was %s", name,
                     "removed" if account is None else "given another role")
            await self._kv(self.kv.delete(key))
            return None
        data.update(seen=now, display=account.display)
        ttl = min(console.session_idle_s, created + console.session_max_s - now)
        await self._kv(self.kv.set(key, json.dumps(data, ensure_ascii=False), ttl))
        return ConsoleSession(agent=name, role=role, display=account.display, csrf=csrf, created=created,
                              digest=digest)

    async def _start(self, agent: Agent) -> tuple[str, ConsoleSession]:
        token = secrets.token_urlsafe(32)
        digest = _digest(token)
        now = self.clock()
        session = ConsoleSession(agent=agent.name, role=agent.role, display=agent.display,
                                 csrf=secrets.token_urlsafe(32), created=now, digest=digest)
        data = {"agent": agent.name, "role": agent.role, "display": agent.display, "csrf": session.csrf,
                "created": now, "seen": now}
        ttl = min(self.cfg.console.session_idle_s, self.cfg.console.session_max_s)
        await self._kv(self.kv.set(self._session_key(digest), json.dumps(data, ensure_ascii=False), ttl))
        return token, session

    async def end(self, session: ConsoleSession) -> None:
        """Sign-out: gone from the KV for every process."""
        await self._kv(self.kv.set(self._ended_key(session.digest), "1", self.cfg.console.session_max_s))
        await self._kv(self.kv.delete(self._session_key(session.digest)))

    async def page_session(self, request: web.Request) -> ConsoleSession:
        session = await self._load(request)
        if session is None:
            raise web.HTTPSeeOther(f"{LOGIN_PATH}?next={urllib.parse.quote(request.path_qs, safe='/')}")
        return session

    async def api_session(self, request: web.Request) -> ConsoleSession:
        session = await self._load(request)
        if session is None:
            raise HttpError(401, "signed_out", "请先登录（会话已结束）")
        return session

    async def write_session(self, request: web.Request, form_token: str | None = None) -> ConsoleSession:
        session = await self.api_session(request)
        if not self._same_site(request):
            raise HttpError(403, "csrf", "请求来自其他网站，已拒绝")
        token = header_one(request, "X-CSRF-Token") or form_token
        if not token or not hmac.compare_digest(token.encode("utf-8", "replace"), session.csrf.encode()):
            raise HttpError(403, "csrf", "页面已过期或缺少校验码，请刷新页面后重试")
        return session

    def require_admin(self, session: ConsoleSession) -> None:
        if not session.is_admin:
            raise HttpError(403, "forbidden", "需要管理员权限")

    # -- pages ---------------------------------------------------------------------------------------------

    def _form(self, request: web.Request, *, status: int = 200, error: str | None = None, name: str = "",
              next_path: str = HOME, new_pre: bool = False, headers: dict[str, str] | None = None) -> web.Response:
        """The sign-in form, with the pre-session token in its hidden field and in the cookie."""
        pre = request.cookies.get(PRE_COOKIE)
        if new_pre or not pre or not _TOKEN.fullmatch(pre):
            pre = secrets.token_urlsafe(32)
        html = self._env.get_template("login.html").render(
            error=error, name=name, next=next_path, csrf=pre, no_accounts=not self._has_accounts())
        response = web.Response(text=html, status=status, content_type="text/html", charset="utf-8",
                                headers={**_PAGE_HEADERS, **(headers or {})})
        self._cookie(response, request, PRE_COOKIE, pre)
        return response

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        next_path = safe_next(query_one(request, "next", required=False))
        if await self._load(request) is not None:
            raise web.HTTPSeeOther(next_path)
        return self._form(request, next_path=next_path)

    async def login(self, request: web.Request) -> web.StreamResponse:
        fields = parse_form(await read_body(request, self.cfg.server.max_body_bytes))
        name = fields.get("name", "").strip()
        password = fields.get("password", "")
        next_path = safe_next(fields.get("next"))
        address = client_address(request, self.cfg.web.trust_forwarded_for)
        pre = request.cookies.get(PRE_COOKIE) or ""
        csrf = fields.get("csrf", "")
        if (not self._same_site(request) or not pre or not csrf
                or not hmac.compare_digest(pre.encode("utf-8", "replace"), csrf.encode("utf-8", "replace"))):
            log.warning("console sign-in form refused from %s: missing or stale form token", address)
            return self._form(request, status=403, error=MSG_EXPIRED_FORM, name=name, next_path=next_path,
                              new_pre=True)
        console = self.cfg.console
        name_key = self.keys.rate("console:login:name:" + hashlib.sha256(name.lower().encode()).hexdigest())
        ip_key = self.keys.rate(f"console:login:ip:{address}")
        known = self._account(name) if name else None
        who = known.name if known is not None else "an unknown name"  # a password typed as the name stays out
        if (_count(await self._kv(self.kv.get(name_key))) >= console.login_failures
                or _count(await self._kv(self.kv.get(ip_key))) >= 4 * console.login_failures):
            log.warning("console sign-in refused for %s from %s: too many failures", who, address)
            return self._form(request, status=429, error=MSG_TOO_MANY, name=name, next_path=next_path,
                              headers={"Retry-After": str(console.login_window_s)})
        agent = await asyncio.to_thread(self._verify, name, password)
        if agent is None:
            await self._kv(self.kv.hit(name_key, console.login_window_s))
            await self._kv(self.kv.hit(ip_key, console.login_window_s))
            log.warning("console sign-in failed for %s from %s", who, address)
            return self._form(request, status=401, error=MSG_BAD_LOGIN, name=name, next_path=next_path)
        old = await self._load(request)
        if old is not None:  # a fresh token at every sign-in: a cookie planted before it is worth nothing
            await self.end(old)
        token, _ = await self._start(agent)
        await self._kv(self.kv.delete(name_key))
        log.info("console sign-in by %s (%s) from %s", agent.name, agent.role, address)
        response = _see_other(next_path)
        self._cookie(response, request, COOKIE, token)
        self._drop_cookie(response, request, PRE_COOKIE)
        return response

    def _verify(self, name: str, password: str) -> Agent | None:
        """On a worker thread: argon2 is deliberately slow."""
        try:
            return self.accounts.verify(name, password)
        except AccountsError as exc:
            self._complain(exc)
            return None

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """Ends the session (CSRF-checked: a foreign page must not sign agents out) and goes to the sign-in page.
        Already signed out: just the redirect."""
        body = await read_body(request, self.cfg.server.max_body_bytes)
        form_token = None
        if body and request.content_type in ("application/x-www-form-urlencoded", ""):
            form_token = parse_form(body).get("csrf")
        session = await self._load(request)
        if session is not None:
            session = await self.write_session(request, form_token)
            await self.end(session)
            log.info("console sign-out by %s", session.agent)
        response = _see_other(LOGIN_PATH)
        self._drop_cookie(response, request, COOKIE)
        return response


def _see_other(location: str) -> web.Response:
    """A 303 as a plain response: cookies set on a raised ``HTTPSeeOther`` are not kept by every aiohttp."""
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


def _split(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url.strip())
    return parts.scheme, parts.netloc


def _count(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0
