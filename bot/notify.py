"""Notifying the human team (handoffs, alerts) through whatever is configured:
a WeCom group robot, DingTalk, a generic webhook. Channels register their
notifiers on ``Services.notifiers``; the dialogue layer calls them all."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import aiohttp


class Notifier(Protocol):
    name: str

    async def notify(self, title: str, text: str) -> None:
        """Send a short notice to the team; raise on failure (the caller logs it)."""


class NotifyError(Exception):
    """A notifier's endpoint refused or failed the notice."""


class WebhookNotifier:
    """POSTs ``{"title", "text", "source": "kefu-hub"}`` as JSON to any URL: a
    ticketing system, a chat-ops bridge or a small relay of your own."""

    name = "webhook"

    def __init__(self, url: str, session: Callable[[], aiohttp.ClientSession], timeout_s: float = 10.0) -> None:
        self.url = url
        self._session = session  # the shared services.http session, looked up when used
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def notify(self, title: str, text: str) -> None:
        body = {"title": title, "text": text, "source": "kefu-hub"}
        try:
            async with self._session().post(self.url, json=body, timeout=self._timeout) as resp:
                if resp.status >= 300:
                    raise NotifyError(f"webhook answered HTTP {resp.status}")
        except aiohttp.ClientError as exc:
            raise NotifyError(f"webhook unreachable: {exc}") from exc
