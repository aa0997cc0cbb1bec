"""Outbound DingTalk HTTP, all with aiohttp: sessionWebhook replies, robot
OpenAPI sends, the app access token and the per-robot send rate.

A ``sessionWebhook`` comes inside the inbound payload, so it is only called
when :class:`bot.outbound.OutboundPolicy` built from ``dingtalk.webhook_hosts``
allows it (https on 443, except loopback hosts listed for tests), and never
with redirects followed; otherwise a forged callback could make the hub call
any URL. An answer that is not JSON after the request went out counts as a
send that may have arrived (:class:`DingtalkMaybeSent`): it is not sent again.
When it is refused, fails or has expired the reply goes through the OpenAPI,
which needs an app access token: cached in the shared KV (Redis) so every
process uses one token, refreshed by one caller at a time, and every send waits
for the robot's send budget (both from :mod:`bot.state.shared`).

The sessionWebhook carries its ``session`` token in the query and every OpenAPI
call its access token in a header, and ``str()``/``repr()`` of aiohttp's errors
show the URL (and ``request_info`` the headers): errors raised here name the
call and the error's type, and never keep the aiohttp exception as their cause.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from bot.config import DingtalkConfig
from bot.outbound import OutboundPolicy, OutboundRefused
from bot.state.keys import Keys
from bot.state.kv import SharedKV
from bot.state.shared import SharedToken, WindowGate
from bot.types import ConversationRef, Event

log = logging.getLogger(__name__)

_WEBHOOK_MARGIN_MS = 60_000  # treat a sessionWebhook as expired a minute early
_WEBHOOK_ANSWER_BYTES = 64 * 1024  # a sessionWebhook answers a few bytes of JSON; more is not read
_MARKDOWN = re.compile(
    r"(^|\n)\s{0,3}(#{1,6}\s|[-*+]\s|\d+\.\s|>\s|```)"  # headings, lists, quotes, code fences
    r"|\*\*[^*\n]+\*\*|\[[^\]\n]+\]\([^)\s]+\)|!\[[^\]\n]*\]\([^)\s]+\)|`[^`\n]+`"  # bold, links, images, code
)


class DingtalkError(Exception):
    """A DingTalk API call failed; the message says which and why."""


class DingtalkMaybeSent(DingtalkError):
    """A send broke off after the request may have arrived; not repeated elsewhere."""


def has_markdown(text: str) -> bool:
    """Whether an answer is written in markdown (then it is sent as a markdown message)."""
    return bool(_MARKDOWN.search(text))


def markdown_title(text: str, limit: int = 20) -> str:
    """The notification title DingTalk shows for a markdown message: its first line, plain."""
    for line in text.splitlines():
        plain = re.sub(r"^\s*(#{1,6}\s+|>\s*|[-*+]\s+|\d+\.\s+)", "", line)
        plain = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", plain)
        plain = re.sub(r"[*`]+", "", plain).strip()
        if plain:
            return plain[:limit]
    return "客服回复"


def webhook_allowed(url: str, hosts: list[str]) -> bool:
    """https on 443 to a listed host; any port, plain http too, only to a listed loopback host (tests)."""
    return OutboundPolicy.of(hosts).allows(url)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a reply goes: the conversation, the sender to @-mention, the webhook if any."""

    conversation_id: str
    is_group: bool
    staff_id: str = ""  # the sender's userid: @-mentions and single-chat OpenAPI sends need it
    nick: str = ""
    webhook: str = ""
    webhook_expires_ms: int | None = None

    @classmethod
    def of(cls, event: Event | None, ref: ConversationRef) -> Target:
        """From the event being answered, or from the conversation alone for proactive sends."""
        data: Mapping[str, Any] = event.channel_data if event is not None else {}
        if event is None:
            return cls(ref.conversation_id, ref.is_group, staff_id=ref.user_id)
        return cls(
            ref.conversation_id,
            ref.is_group,
            staff_id=str(data.get("sender_staff_id") or ""),
            nick=str(data.get("sender_nick") or ""),
            webhook=str(data.get("session_webhook") or ""),
            webhook_expires_ms=data.get("session_webhook_expires_ms"),
        )


def webhook_payload(target: Target, text: str, markdown: bool) -> dict[str, Any]:
    """A sessionWebhook message; in groups it @-mentions the sender (in the text and in ``at``)."""
    mention = f"@{target.staff_id}" if target.is_group and target.staff_id else ""
    at = {"atUserIds": [target.staff_id], "isAtAll": False} if mention else {"isAtAll": False}
    if markdown:
        body = f"{mention}\n\n{text}" if mention else text
        return {"msgtype": "markdown", "markdown": {"title": markdown_title(text), "text": body}, "at": at}
    return {"msgtype": "text", "text": {"content": f"{mention} {text}" if mention else text}, "at": at}


def _brief(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False)[:300]


class DingtalkApi:
    def __init__(
        self,
        cfg: DingtalkConfig,
        http: Callable[[], aiohttp.ClientSession],
        kv: SharedKV,
        keys: Keys,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.cfg = cfg
        self.http = http
        self.robot_code = cfg.robot_code or cfg.app_key
        self.tokens = SharedToken(kv, keys.token(f"dingtalk:{cfg.app_key}"), keys.lock(f"dingtalk-token:{cfg.app_key}"),
                                  self._fetch_token, timeout_error=DingtalkError)
        self.gate = WindowGate(kv, keys.rate, cfg.send_rate_per_min, clock=clock, sleep=sleep)
        self.webhooks = OutboundPolicy.of(cfg.webhook_hosts)
        self._clock = clock

    async def wait_send_rate(self) -> None:
        """Wait for this robot's send budget (queued in order, never dropped)."""
        await self.gate.wait(f"dingtalk:{self.robot_code}")

    async def send(self, target: Target, text: str, markdown: bool) -> str:
        """Send one message, waiting for the send rate; returns the route taken ("webhook" or "openapi")."""
        await self.wait_send_rate()
        url = self._checked_webhook(target.webhook)
        if url is not None:
            expires = target.webhook_expires_ms
            if isinstance(expires, int) and expires - _WEBHOOK_MARGIN_MS <= self._clock() * 1000:
                log.info("sessionWebhook of %s expired; using the OpenAPI", target.conversation_id)
            else:
                try:
                    await self._webhook(url, webhook_payload(target, text, markdown))
                    return "webhook"
                except DingtalkMaybeSent:
                    raise  # sending again through the OpenAPI could answer twice
                except DingtalkError as exc:
                    log.warning("sessionWebhook reply failed (%s); using the OpenAPI", exc)
        await self._robot_send(target, text, markdown)
        return "openapi"

    def _checked_webhook(self, webhook: str) -> URL | None:
        """The sessionWebhook to call, or None: none given, or refused by the policy (logged, host only)."""
        if not webhook:
            return None
        try:
            return self.webhooks.check(webhook)
        except OutboundRefused as exc:
            log.warning("sessionWebhook host %r is not in dingtalk.webhook_hosts (%s); not called, using the OpenAPI",
                        exc.host, exc.why)
            return None

    async def _webhook(self, url: URL, payload: dict[str, Any]) -> None:
        """One POST to a checked sessionWebhook. Not delivered (the OpenAPI may send instead): no connection,
        a redirect (never followed), an error status or errcode. Maybe delivered (sent nowhere else): the call
        broke off or timed out after the request went out, or a 200 whose body is not a JSON object.
        Messages name the exception type only: aiohttp's carry the URL, and the URL is a credential."""
        try:
            async with self.http().post(url, json=payload, allow_redirects=False) as resp:
                status = resp.status
                raw = await resp.content.read(_WEBHOOK_ANSWER_BYTES)
        except aiohttp.ClientConnectorError as exc:
            raise DingtalkError(f"sessionWebhook unreachable: {type(exc).__name__}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DingtalkMaybeSent(f"sessionWebhook call broke off, the reply may have arrived: "
                                    f"{type(exc).__name__}") from None
        if 300 <= status < 400:
            raise DingtalkError(f"sessionWebhook answered a redirect (HTTP {status}); not followed")
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if status == 200 and not isinstance(data, dict):
            raise DingtalkMaybeSent("sessionWebhook answered HTTP 200 without a JSON object; the reply may have "
                                    "arrived, so it is not sent again")
        errcode = data.get("errcode", 0) if isinstance(data, dict) else None
        if status != 200 or errcode not in (0, "0"):
            raise DingtalkError(f"sessionWebhook refused: HTTP {status} {_brief(data)}")

    async def _robot_send(self, target: Target, text: str, markdown: bool) -> None:
        """The robot OpenAPI: groupMessages/send for groups, oToMessages/batchSend for single chats."""
        if markdown:
            key, param = "sampleMarkdown", {"title": markdown_title(text), "text": text}
        else:
            key, param = "sampleText", {"content": text}
        body: dict[str, Any] = {
            "robotCode": self.robot_code,
            "msgKey": key,
            "msgParam": json.dumps(param, ensure_ascii=False),
        }
        if target.is_group:
            body["openConversationId"] = target.conversation_id
            await self.call("POST", "/v1.0/robot/groupMessages/send", body)
            return
        if not target.staff_id:
            raise DingtalkError(f"cannot send to {target.conversation_id} through the OpenAPI: no sender userid")
        body["userIds"] = [target.staff_id]
        data = await self.call("POST", "/v1.0/robot/oToMessages/batchSend", body)
        if target.staff_id in (data.get("invalidStaffIdList") or ()):
            raise DingtalkError(f"OpenAPI refused user {target.staff_id} as invalid")
        if target.staff_id in (data.get("flowControlledStaffIdList") or ()):
            raise DingtalkError(f"OpenAPI flow-controlled the message to {target.staff_id}")

    async def _fetch_token(self) -> tuple[str, float]:
        """The app access token (/v1.0/oauth2/accessToken) and its lifetime."""
        url = self.cfg.api_base.rstrip("/") + "/v1.0/oauth2/accessToken"
        body = {"appKey": self.cfg.app_key, "appSecret": self.cfg.app_secret}
        try:
            async with self.http().post(url, json=body, allow_redirects=False) as resp:  # the secret stays here
                data = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise DingtalkError(f"access token request failed: {type(exc).__name__}") from None
        token = data.get("accessToken") if isinstance(data, dict) else None
        if status != 200 or not isinstance(token, str) or not token:
            raise DingtalkError(f"access token refused: HTTP {status} {_brief(data)}")
        expire_in = data.get("expireIn")
        log.info("DingTalk access token refreshed")
        return token, float(expire_in) if isinstance(expire_in, int | float) else 7200.0

    async def call(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """An OpenAPI call with the app token; a refused token is refreshed once."""
        url = self.cfg.api_base.rstrip("/") + path
        stale: str | None = None
        for attempt in (1, 2):
            token = await self.tokens.get(stale)
            headers = {"x-acs-dingtalk-access-token": token}
            try:
                # not redirected: the token header would go along to wherever a 3xx points
                async with self.http().request(method, url, json=body, headers=headers, allow_redirects=False) as resp:
                    status = resp.status
                    data = await resp.json(content_type=None) if resp.content_length != 0 else {}
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise DingtalkError(f"{method} {path} failed: {type(exc).__name__}") from None
            data = data if isinstance(data, dict) else {}
            if status == 401 or (status == 403 and "token" in str(data.get("code", "")).lower()):
                if attempt == 1:
                    await self.tokens.invalidate(token)
                    stale = token
                    continue
            if status >= 300:
                raise DingtalkError(f"{method} {path}: HTTP {status} {_brief(data)}")
            return data
        raise AssertionError("unreachable")
