"""Replies as WeCom message text (WeCom has no quick-reply buttons)."""

from __future__ import annotations

from collections.abc import Sequence

from bot.types import Reply


def render(replies: Sequence[Reply]) -> str:
    """Replies as one text; suggested questions become a numbered list the user can copy."""
    parts = []
    for reply in replies:
        text = reply.text.strip()
        if reply.quick_replies:
            text += "\n" + "\n".join(f"{i}. {q}" for i, q in enumerate(reply.quick_replies, 1))
        if text:
            parts.append(text)
    return "\n\n".join(parts)
