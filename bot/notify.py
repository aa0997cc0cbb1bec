"""Notifying the human team (handoffs, alerts) through whatever is configured:
a WeCom group robot, DingTalk, a generic webhook. Channels register their
notifiers on ``Services.notifiers``; the dialogue layer calls them all.

A notice quotes customers (their messages, the slots they filled, ids a
``/chat`` caller chose), and team robots render markdown: ``[点我](http://evil)``
would arrive as a link in the support group, ``![x](http://evil/p.png)`` as an
image fetched by every agent's client, ``<@userid>`` / ``<font>`` as a mention or
styling. So ``title`` and ``text`` are plain text, and each notifier that renders
markdown passes them through :func:`literal_markdown` first: what the team sees is
the characters the customer typed, never markup they wrote.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

import aiohttp

from bot.outbound import http_timeout

# U+200B ZERO WIDTH SPACE: invisible, so the text reads (and copies, but for these spots) as typed, yet no
# markdown parser joins markup across it
ZWSP = "\u200b"
_AFTER_BRACKET = re.compile(r"\]")  # ](url) links and images, ][ref] references, ]: definitions
_AFTER_ANGLE = re.compile(r"<")  # <tag>, <@mention>, <http://autolink>
_BANG = re.compile(r"!(?=\[)")  # ![ image start, broken as well for good measure
# a line that markdown would read as a block: heading, quote, list item, fence, table row, setext underline
_BLOCK = re.compile(r"^([ \t]{0,3})(?=[#>*+\-=|`~]|\d{1,9}[.)])", re.MULTILINE)


def literal_markdown(text: str) -> str:
    """``text`` made safe to put into a markdown message as text: links, images, reference
    definitions, HTML tags, ``<@mention>`` s, autolinks and line-leading block markup are broken
    with an invisible zero-width space, so they show as the characters typed. Letters, digits,
    ``@``, ``_`` and the like are left alone, so ids and e-mail addresses in a notice stay exact."""
    text = _AFTER_BRACKET.sub("]" + ZWSP, text)
    text = _AFTER_ANGLE.sub("<" + ZWSP, text)
    text = _BANG.sub("!" + ZWSP, text)
    return _BLOCK.sub(lambda m: m.group(1) + ZWSP, text)


def literal_title(title: str) -> str:
    """A notice title on one line (a newline in it would open a block of its own), made literal."""
    return literal_markdown(" ".join(title.split()))


class Notifier(Protocol):
    name: str

    async def notify(self, title: str, text: str) -> None:
        """Send a short notice to the team; raise on failure (the caller logs it). ``title`` and
        ``text`` are plain text: a notifier that renders markdown makes them literal first."""


class NotifyError(Exception):
    """A notifier's endpoint refused or failed the notice (the message never holds the URL)."""


class WebhookNotifier:
    """POSTs ``{"title", "text", "source": "kefu-hub"}`` as JSON to any URL: a
    ticketing system, a chat-ops bridge or a small relay of your own. Most of
    these post the text into a chat that renders markdown, so title and text are
    sent as :func:`literal_markdown` (the visible characters are unchanged).
    Redirects are not followed and the call is bounded by ``timeout_s``."""

    name = "webhook"

    def __init__(self, url: str, session: Callable[[], aiohttp.ClientSession], timeout_s: float = 10.0) -> None:
        self.url = url
        self._session = session  # the shared services.http session, looked up when used
        self._timeout = http_timeout(timeout_s)

    async def notify(self, title: str, text: str) -> None:
        body = {"title": literal_title(title), "text": literal_markdown(text), "source": "kefu-hub"}
        try:
            async with self._session().post(self.url, json=body, timeout=self._timeout,
                                            allow_redirects=False) as resp:
                if resp.status >= 300:
                    raise NotifyError(f"webhook answered HTTP {resp.status}")
        except TimeoutError:  # before aiohttp.ClientError: its ServerTimeoutError is both
            raise NotifyError("webhook timed out") from None
        except aiohttp.ClientError as exc:  # its str() is the URL, which may hold a token: the type only
            raise NotifyError(f"webhook unreachable: {type(exc).__name__}") from None
