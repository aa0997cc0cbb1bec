"""WeCom group robot (群机器人): tells the human team about handoffs and alerts.

Implements :class:`bot.notify.Notifier`. The webhook key is a secret carried in
the URL, so neither is logged; rate-limit buckets use a hash of it. Notices are
markdown with the customer's words made literal (:func:`bot.notify.literal_markdown`).
"""

from __future__ import annotations

import hashlib
from typing import Any

from adapters.wecom.api import TEXT_LIMIT_BYTES, CallPolicy, WecomApiError
from bot.notify import literal_markdown, literal_title
from bot.state.shared import WindowGate
from bot.text import split_utf8

MARKDOWN_LIMIT_BYTES = 4096


class RobotNotifier:
    name = "wecom-robot"

    def __init__(self, policy: CallPolicy, gate: WindowGate, api_base: str, key: str) -> None:
        self.policy = policy
        self.gate = gate
        self.url = f"{api_base.rstrip('/')}/cgi-bin/webhook/send"
        self.key = key
        self._bucket = "wecom-robot:" + hashlib.sha256(key.encode()).hexdigest()[:12]

    async def notify(self, title: str, text: str) -> None:
        """A markdown notice, split at 4096 bytes when long; title and text are plain text, so they are
        made literal (customer text must not become a link, image, mention or tag in the team's group)."""
        title, text = literal_title(title), literal_markdown(text)
        body = f"**{title}**\n{text}" if title else text
        for piece in split_utf8(body, MARKDOWN_LIMIT_BYTES):
            await self.send({"msgtype": "markdown", "markdown": {"content": piece}})

    async def send_text(self, text: str, mentioned: tuple[str, ...] = ()) -> None:
        """Plain text (2048 bytes a message), optionally @-mentioning user ids (or "@all")."""
        for piece in split_utf8(text, TEXT_LIMIT_BYTES):
            await self.send({"msgtype": "text", "text": {"content": piece, "mentioned_list": list(mentioned)}})

    async def send(self, payload: dict[str, Any]) -> None:
        await self.gate.wait(self._bucket)
        data = await self.policy.call("POST", self.url, "webhook/send", params={"key": self.key}, json=payload)
        code = int(data.get("errcode") or 0)
        if code != 0:
            raise WecomApiError(code, str(data.get("errmsg", "")), "webhook/send")
