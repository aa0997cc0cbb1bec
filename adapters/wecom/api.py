"""WeCom server API over aiohttp: access tokens, ``message/send``, rate limits.

wechatpy's client blocks on ``requests``, so the few calls we need are made
here. The access token lives in the shared KV (Redis in production) so every
process uses the same one, and one process at a time refreshes it, since each
refresh invalidates the token others hold (:class:`bot.state.shared.SharedToken`).
Secrets and tokens travel in query strings, so URLs are never logged, and no
error raised here keeps an aiohttp exception (whose ``str()`` is the full URL)
as its cause: messages name the API and the error's type only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from yarl import URL

from bot.state.keys import Keys
from bot.state.kv import SharedKV
from bot.state.shared import SharedToken, WindowGate
from bot.text import split_utf8

log = logging.getLogger(__name__)

TEXT_LIMIT_BYTES = 2048  # text and markdown app messages, group-robot text
TOKEN_ERRORS = frozenset({40001, 40014, 42001})  # invalid / expired access token: refetch and retry once
RATE_ERRORS = frozenset({45009, 45033})  # API frequency / concurrency limits: back off and retry

Sleep = Callable[[float], Awaitable[None]]
HttpFactory = Callable[[], aiohttp.ClientSession]


class WecomApiError(Exception):
    def __init__(self, errcode: int, errmsg: str, api: str) -> None:
        super().__init__(f"WeCom {api} failed: {errcode} {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg




class CallPolicy:
    """How a WeCom call is retried: network errors and rate-limit answers back off."""

    def __init__(self, http: HttpFactory, retries: int, backoff_s: float, sleep: Sleep = asyncio.sleep) -> None:
        self.http = http
        self.retries = retries
        self.backoff_s = backoff_s
        self.sleep = sleep

    async def call(self, method: str, url: str | URL, api: str, *, params: dict[str, str],
                   json: dict[str, Any] | None = None, once: bool = False) -> dict[str, Any]:
        """The decoded JSON answer; WeCom-level errors other than rate limits are
        returned for the caller to judge. ``once``: the call delivers something
        (a message), so a failure after the request may have arrived (a timeout,
        a dropped connection, a 5xx) is not retried: a customer would get the
        answer twice. Connection refusals and rate limits are retried."""
        attempt = 0
        while True:
            try:
                # never redirected: a 3xx would carry the call (and its token) to a host nobody checked
                async with self.http().request(method, url, params=params, json=json, allow_redirects=False) as resp:
                    if resp.status >= 500:
                        raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
                    if 300 <= resp.status < 400:
                        raise WecomApiError(-1, f"answered HTTP {resp.status}; redirects are not followed", api)
                    data = await resp.json(content_type=None)
                if not isinstance(data, dict):
                    raise WecomApiError(-1, "answer is not a JSON object", api)
                code = int(data.get("errcode") or 0)
                if code not in RATE_ERRORS:
                    return data
                reason = f"rate limited ({code})"
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                reason = f"{type(exc).__name__}"
                code = -1
                if once and not isinstance(exc, aiohttp.ClientConnectorError):
                    # from None: aiohttp's errors carry the request URL, and with it the access token, into
                    # any traceback logged for this one
                    raise WecomApiError(code, f"{reason}; not retried, it may have been delivered", api) from None
            if attempt >= self.retries:
                raise WecomApiError(code, f"gave up after {attempt + 1} attempts: {reason}", api)
            delay = self.backoff_s * 2**attempt
            attempt += 1
            log.warning("WeCom %s: %s; retry %d in %.1fs", api, reason, attempt, delay)
            await self.sleep(delay)


class AccessToken(SharedToken):
    """One app's access token (``gettoken``), shared by every process through the KV."""

    def __init__(self, policy: CallPolicy, kv: SharedKV, keys: Keys, api_base: str, corp_id: str, secret: str,
                 agent_id: int) -> None:
        name = f"wecom:{corp_id}:{agent_id}"
        super().__init__(kv, keys.token(name), keys.lock(f"token:{name}"), self._fetch,
                         timeout_error=lambda msg: WecomApiError(-1, msg, "gettoken"))
        self.policy = policy
        self.url = f"{api_base.rstrip('/')}/cgi-bin/gettoken"
        self.corp_id = corp_id
        self.secret = secret

    async def _fetch(self) -> tuple[str, float]:
        data = await self.policy.call("GET", self.url, "gettoken",
                                      params={"corpid": self.corp_id, "corpsecret": self.secret})
        token = data.get("access_token")
        if int(data.get("errcode") or 0) != 0 or not isinstance(token, str) or not token:
            raise WecomApiError(int(data.get("errcode") or -1), str(data.get("errmsg", "no access_token")), "gettoken")
        expires = float(data.get("expires_in") or 7200)
        log.info("fetched a WeCom access token for agent of corp %s (valid %.0fs)", self.corp_id, expires)
        return token, expires  # SharedToken renews it five minutes early


class AppClient:
    """Active sends of one self-built app (``message/send``)."""

    def __init__(self, token: SharedToken, policy: CallPolicy, gate: WindowGate, api_base: str,
                 agent_id: int) -> None:
        self.token = token
        self.policy = policy
        self.gate = gate
        self.url = f"{api_base.rstrip('/')}/cgi-bin/message/send"
        self.agent_id = agent_id

    async def send_text(self, user_id: str, text: str, *, markdown: bool = False) -> int:
        """Send ``text`` to one member, split at 2048 UTF-8 bytes on line and
        character boundaries; returns the number of messages sent."""
        pieces = split_utf8(text, TEXT_LIMIT_BYTES)
        for piece in pieces:
            msgtype = "markdown" if markdown else "text"
            await self.gate.wait(f"wecom:{self.agent_id}:{user_id}")
            await self.send({"touser": user_id, "agentid": self.agent_id, "msgtype": msgtype,
                             msgtype: {"content": piece}})
        return len(pieces)

    async def send(self, payload: dict[str, Any]) -> dict[str, Any]:
        """POST ``message/send``; a refused token is refetched and the send retried once."""
        retried = False
        while True:
            token = await self.token.get()
            data = await self.policy.call("POST", self.url, "message/send", params={"access_token": token},
                                          json=payload, once=True)
            code = int(data.get("errcode") or 0)
            if code in TOKEN_ERRORS and not retried:
                log.info("WeCom refused the access token (%d); fetching a new one", code)
                retried = True
                await self.token.invalidate(token)
                continue
            if code != 0:
                raise WecomApiError(code, str(data.get("errmsg", "")), "message/send")
            if invalid := data.get("invaliduser"):
                log.warning("WeCom message/send: invalid recipients %s", invalid)
            return data
