"""Notifying the human team (handoffs, alerts) through whatever is configured:
a WeCom group robot, DingTalk, a generic webhook. Channels register their
notifiers on ``Services.notifiers``; the dialogue layer calls them all."""

from __future__ import annotations

from typing import Protocol


class Notifier(Protocol):
    name: str

    async def notify(self, title: str, text: str) -> None:
        """Send a short notice to the team; raise on failure (the caller logs it)."""
