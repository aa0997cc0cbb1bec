"""Replies as what a channel can show, in one place, so every channel degrades the same way.

WeCom and DingTalk messages have no quick-reply buttons: the suggestions (猜你想问) are listed under the
answer, numbered ``1.``, ``2.`` ... so the customer can copy one. The list is introduced by its caption
only when the reply has no text of its own to introduce it; the caption is Chinese unless the reply is
plainly English. :func:`as_text` is for surfaces that show plain text (a markdown reply loses its
markup, links keep their address); :func:`as_markdown` for surfaces that render markdown (a plain reply
is left as written). Channels with real buttons (the widget, ``/chat``) send ``quick_replies`` as data
and use neither.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from bot.text import detect_lang
from bot.types import Reply

CAPTION = {"zh": "猜你想问：", "en": "You may want to ask:"}

_FENCE = re.compile(r"^\s{0,3}(```|~~~).*$")
_RULE = re.compile(r"^\s{0,3}([-*_])(\s*\1){2,}\s*$")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)(\s+#+)?\s*$")
_QUOTE = re.compile(r"^\s{0,3}>\s?")
_BULLET = re.compile(r"^(\s*)[*+]\s+")
_IMAGE = re.compile(r"!\[([^\]\n]*)\]\([^)\s]*(?:\s+\"[^\"]*\")?\)")
_LINK = re.compile(r"\[([^\]\n]+)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_STRONG = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_EMPHASIS = re.compile(r"(?<![*\w])\*(?=[^\s*])([^*\n]+?)(?<=\S)\*(?![*\w])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_CODE = re.compile(r"`([^`\n]+)`")
_TAG = re.compile(r"</?(?:font|b|i|u|strong|em|span)\b[^>]*>", re.IGNORECASE)
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


def suggestions(reply: Reply) -> str:
    """The reply's quick replies as a numbered list (with the caption when the reply has no text); "" if none."""
    listed = [q.strip() for q in reply.quick_replies if q.strip()]
    if not listed:
        return ""
    lines = [f"{i}. {q}" for i, q in enumerate(listed, 1)]
    if not reply.text.strip():
        lines.insert(0, CAPTION[_lang(reply)])
    return "\n".join(lines)


def as_text(reply: Reply) -> str:
    """The reply as plain text: markdown markup removed (only from replies marked ``markdown``), then the
    numbered suggestions."""
    body = plain(reply.text) if reply.markdown else reply.text.strip()
    return _with(body, suggestions(reply))


def as_markdown(reply: Reply) -> str:
    """The reply as markdown: its text as written, then the numbered suggestions (a markdown ordered list)."""
    return _with(reply.text.strip(), suggestions(reply))


def joined(parts: Iterable[str]) -> str:
    """Several rendered replies as one message, a blank line between them."""
    return "\n\n".join(p for p in parts if p.strip())


def text_of(replies: Sequence[Reply]) -> str:
    return joined(as_text(r) for r in replies)


def markdown_of(replies: Sequence[Reply]) -> str:
    return joined(as_markdown(r) for r in replies)


def plain(markdown: str) -> str:
    """Markdown as readable plain text: markup gone, words, list numbers and link addresses kept."""
    lines: list[str] = []
    for line in _BREAK.sub("\n", markdown).splitlines():
        if _FENCE.match(line) or _RULE.match(line):
            continue
        if m := _HEADING.match(line):
            line = m.group(1)
        line = _QUOTE.sub("", line)
        line = _BULLET.sub(r"\1- ", line)
        line = _IMAGE.sub(lambda m: m.group(1), line)
        line = _LINK.sub(lambda m: m.group(1) if m.group(1) == m.group(2) else f"{m.group(1)} ({m.group(2)})", line)
        line = _CODE.sub(r"\1", line)
        line = _STRONG.sub(r"\2", line)
        line = _EMPHASIS.sub(r"\1", line)
        line = _STRIKE.sub(r"\1", line)
        lines.append(_TAG.sub("", line).rstrip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _with(body: str, listed: str) -> str:
    return f"{body}\n{listed}" if body and listed else body or listed


def _lang(reply: Reply) -> str:
    """Chinese first: English only when nothing in the reply is Chinese and it reads as English."""
    lang = reply.meta.get("lang") if reply.meta else None
    if lang in CAPTION:
        return str(lang)
    return detect_lang(" ".join((reply.text, *reply.quick_replies)))
