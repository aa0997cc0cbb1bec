"""What a finished turn or a thumbs up/down becomes in the archive (plain dicts, text not yet redacted:
the writer redacts on its own thread, so the turn pays for neither)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from typing import Any

from bot.archive.schema import OUTCOMES, SOURCES
from bot.pipeline import TurnContext
from bot.types import Event, EventKind, Reply

RATINGS = ("up", "down", "none")
_MAX_LATENCY_MS = 2**31 - 1
# The reply that carries the answer when a turn sends several (a greeting before an FAQ answer ...).
_ANSWERING = ("faq", "llm", "agent", "dialogue", "fallback", "safety")
# The node a turn that handed the conversation to a person is archived with: "handoff:<reason>". The schema has
# no column for it, and neither the node (a safety handoff has none) nor the source says it: the console's
# dashboard counts handoffs by this prefix (bot/console/stats.py).
HANDOFF_NODE = "handoff:"


def _text(value: Any, limit: int) -> str | None:
    """Identifiers cut to their column (PostgreSQL refuses longer, SQLite would keep them)."""
    if value is None or value == "":
        return None
    return str(value)[:limit]


def _main(replies: tuple[Reply, ...]) -> Reply | None:
    for reply in replies:
        if reply.source in _ANSWERING:
            return reply
    return replies[0] if replies else None


def _handoff(ctx: TurnContext) -> str | None:
    """The reason, when this turn handed the conversation over (it found it with the bot and leaves it with a
    person). A resent answer carries no state: its handoff, decided before a crash, goes uncounted."""
    state, before = ctx.state, ctx.loaded
    if state is None or not state.handed_off or (before is not None and before.handed_off):
        return None
    return state.handoff.reason if state.handoff is not None else "unknown"


def turn_row(ctx: TurnContext, now: dt.datetime | None = None) -> dict[str, Any] | None:
    """None for what is no turn: a vote (the feedback table's), a duplicate (nothing sent), a platform
    event nobody answered."""
    event = ctx.event
    if event.kind is EventKind.FEEDBACK or ctx.outcome == "duplicate":
        return None
    if event.kind is not EventKind.MESSAGE and not ctx.replies:
        return None
    main = _main(ctx.replies)
    meta: Mapping[str, Any] = main.meta if main is not None else {}
    source = main.source if main is not None else "unknown"
    lang = event.lang or (ctx.state.lang if ctx.state is not None else None)
    latency_ms = int(max(0.0, time.time() - event.received_at) * 1000)
    handoff = _handoff(ctx)
    return {
        "created_at": now or dt.datetime.now(dt.UTC),
        "channel": event.ref.channel[:32],
        "tenant": event.ref.tenant[:128],
        "conversation": event.ref.key[:512],
        "event_id": event.id[:256],
        "kind": event.kind.value,
        "question": event.text or None,
        "answer": "\n\n".join(r.text for r in ctx.replies) or None,
        "replies": len(ctx.replies),
        "source": source if source in SOURCES else "unknown",
        "faq_id": _text(meta.get("faq_id"), 128),
        "node": _text(HANDOFF_NODE + handoff if handoff else meta.get("node"), 128),
        "intent": _text(meta.get("intent"), 128),
        "adapter": _text(meta.get("adapter"), 128),
        "arm": _text(getattr(ctx, "arm", None) or meta.get("arm"), 64),  # A/B arms fill this later
        "latency_ms": min(latency_ms, _MAX_LATENCY_MS),
        "outcome": ctx.outcome if ctx.outcome in OUTCOMES else "error",
        "lang": _text(lang, 16),
    }


def feedback_row(event: Event, now: dt.datetime | None = None) -> dict[str, Any] | None:
    """A thumbs up/down event (``name`` = rating). The channel names the rated turn's event in
    ``channel_data["rated_event_id"]`` when it knows it (the web widget does)."""
    if event.kind is not EventKind.FEEDBACK or event.name not in RATINGS:
        return None
    data = event.channel_data
    return {
        "created_at": now or dt.datetime.now(dt.UTC),
        "channel": event.ref.channel[:32],
        "tenant": event.ref.tenant[:128],
        "conversation": event.ref.key[:512],
        "event_id": event.id[:256],
        "rated_event_id": _text(data.get("rated_event_id"), 256),
        "answer_id": _text(data.get("answer_id"), 128),
        "rating": event.name,
    }
