"""The web channel's sender: a turn's answer into the session's event log.

Built in every process that runs turns (workers, and ``all``). Answers never
travel in HTTP responses: :meth:`WebSender.stream` and :meth:`WebSender.deliver`
append to the session's event log, and every open SSE connection, on whichever
gateway, replays it (adapters/web/inbound.py). Nothing is kept in this process
between ``stream`` and ``deliver``: that an answer was streamed is marked in
the event log itself (Redis when state is in Redis), so a turn redelivered to
another worker still does not stream a delivered answer again from the start.

Redis round trips: one per streamed delta, one per delivered turn.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from adapters.web.events import EventLog, MemoryEventLog
from adapters.web.feedback import FeedbackStore, MemoryFeedbackStore
from bot.privacy.pii import redact
from bot.types import ConversationRef, Event, EventKind, Reply, ReplyChunk

FAKE_STREAM_PIECES = 8  # FAQ answers arrive whole; they still reach the widget as deltas, like LLM answers


def answer_id(message_id: str, index: int) -> str:
    """The id a visitor rates: the message it answers, plus the reply's index in that turn."""
    return message_id if index == 0 else f"{message_id}.{index}"


def client_id(event_id: str) -> str:
    """The widget's message id: hub event ids are ``<session>:<client id>``."""
    return event_id.split(":", 1)[1] if ":" in event_id else event_id


class WebSender:
    name = "web"

    def __init__(self, events: EventLog, feedback: FeedbackStore) -> None:
        self.events = events
        self.feedback = feedback  # only for erasure in memory mode; votes are recorded by the inbound half

    async def stream(self, chunk: ReplyChunk) -> None:
        """A token (or a few) of an answer being generated: one ``delta`` event."""
        mid = client_id(chunk.in_reply_to)
        await self.events.append_delta(chunk.to.conversation_id, mid, {
            "type": "delta",
            "message_id": mid,
            "offset": len(chunk.text_so_far) - len(chunk.delta),  # in code points; a restarted answer has 0
            "text": chunk.delta,
        })

    async def deliver(self, event: Event | None, replies: Sequence[Reply]) -> None:
        if event is not None and event.kind is not EventKind.MESSAGE and not replies:
            return
        mid = client_id(event.id) if event is not None else None
        home = event.ref.conversation_id if event is not None else None
        # Everything a turn adds goes to the session's log in one write (one Redis round trip).
        batches: dict[str, list[dict[str, Any]]] = {}
        fill: list[dict[str, Any]] = []
        for i, reply in enumerate(replies):
            sid = reply.to.conversation_id
            aid = answer_id(mid, i) if mid else f"p{uuid.uuid4().hex[:16]}"
            # Redacted as the log keeps it (adapters/web/events.py), before it is cut into pieces: a
            # number split between two pieces would pass the log's redaction of each piece.
            text = redact(reply.text)
            if i == 0 and mid and sid == home:  # sent only if nothing of this answer was streamed
                offset = 0
                for piece in _pieces(text, FAKE_STREAM_PIECES):
                    fill.append({"type": "delta", "message_id": mid, "offset": offset, "text": piece})
                    offset += len(piece)
            batches.setdefault(sid, []).append({
                "type": "reply",
                "message_id": mid,
                "answer_id": aid,
                "text": text,
                "quick_replies": list(reply.quick_replies),
                "source": reply.source,
                "markdown": reply.markdown,
                "ts": time.time(),
                "meta": _jsonable(reply.meta),
            })
        if home is not None and mid is not None:
            batches.setdefault(home, []).append({"type": "done", "message_id": mid})
            await self.events.append_answer(home, mid, fill, batches.pop(home))
        for sid, batch in batches.items():
            await self.events.append_many(sid, batch)

    async def erase(self, ref: ConversationRef) -> int:
        """Right to erasure for what this process holds in memory (memory mode): the session's event log and
        its feedback. In Redis mode the admin API erases everything through ``Keys`` and this returns 0."""
        removed = 0
        if isinstance(self.events, MemoryEventLog):
            removed += await self.events.erase(ref.conversation_id)
        if isinstance(self.feedback, MemoryFeedbackStore):
            removed += await self.feedback.erase(ref.key)
        return removed

    async def close(self) -> None:
        """The sender owns the shared event log (a channel always has a sender, not always an inbound half)."""
        await self.events.close()


def _pieces(text: str, n: int) -> list[str]:
    size = max(1, -(-len(text) // n))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _jsonable(meta: Any) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(dict(meta), ensure_ascii=False, default=str))
    except (TypeError, ValueError):
        return {}
