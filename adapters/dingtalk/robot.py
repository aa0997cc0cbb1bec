"""DingTalk custom group robot (自定义机器人): tells the human team about handoffs.

Implements :class:`bot.notify.Notifier`. With 加签 security the URL carries
``timestamp`` and ``sign = urlencode(base64(HmacSHA256(secret, f"{ts}\\n{secret}")))``,
the same HMAC as callbacks. The access token and secret are never logged.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import aiohttp

from adapters.dingtalk.sign import compute
from bot.notify import literal_markdown, literal_title
from bot.state.shared import WindowGate
from bot.text import split_utf8

MARKDOWN_LIMIT_BYTES = 5000  # DingTalk's robot markdown limit is about 5000 characters; bytes are stricter


class GroupRobotError(Exception):
    """The group robot refused or could not be reached."""


class GroupRobotNotifier:
    name = "dingtalk-robot"

    def __init__(self, http: Callable[[], aiohttp.ClientSession], gate: WindowGate, webhook: str, secret: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.http = http
        self.gate = gate
        self.webhook = webhook
        self.secret = secret
        self.clock = clock
        self._bucket = "dingtalk-robot:" + hashlib.sha256(webhook.encode()).hexdigest()[:12]

    async def notify(self, title: str, text: str) -> None:
        """A markdown notice; title and text are plain text, made literal so that customer text is
        never a link, image or tag in the team's group."""
        title, text = literal_title(title), literal_markdown(text)
        body = f"#### {title}\n\n{text}" if title else text
        for piece in split_utf8(body, MARKDOWN_LIMIT_BYTES):
            await self.send({"msgtype": "markdown", "markdown": {"title": title or "通知", "text": piece}})

    async def send(self, payload: dict[str, object]) -> None:
        await self.gate.wait(self._bucket)
        params: dict[str, str] = {}
        if self.secret:
            ts = str(int(self.clock() * 1000))
            params = {"timestamp": ts, "sign": compute(ts, self.secret)}  # aiohttp URL-encodes it
        try:
            async with self.http().post(self.webhook, params=params, json=payload, allow_redirects=False) as resp:
                status = resp.status
                data = await resp.json(content_type=None) if status < 300 or status >= 400 else None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # from None: aiohttp's errors carry the webhook URL, whose access_token is the robot's credential
            raise GroupRobotError(f"group robot unreachable: {type(exc).__name__}") from None
        code = data.get("errcode") if isinstance(data, dict) else None
        if status != 200 or code not in (0, "0"):
            shown = code if isinstance(code, int) else "?"
            raise GroupRobotError(f"group robot refused: HTTP {status} errcode {shown}")
