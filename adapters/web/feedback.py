"""Thumbs up / down on widget answers, kept as feedback events.

Each vote is appended to one stream for every conversation
(``keys.feedback_stream()``) with the question, the answer, its source and
meta, so training jobs and A/B evaluations read a self-contained record
without joining against state that has expired. The latest vote per answer is
also kept per conversation (``keys.feedback(conversation)``) so a reloaded
widget shows the thumbs the visitor chose.

Question and answer are kept redacted (:func:`redacted`, bot/privacy/pii.py): the stream outlives the
conversation and feeds training, where a customer's phone number has no business.

Erasure: in Redis the admin API deletes the per-conversation hash (found
through ``Keys.conversation_keys``) and the conversation's entries in the
stream (matched on their ``conversation`` field); in memory mode
:meth:`MemoryFeedbackStore.erase`, called through the web adapter.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import redis.asyncio as aioredis

from bot.privacy.pii import redact, redact_json
from bot.state.keys import Keys

RATINGS = ("up", "down", "none")  # none: the visitor took the vote back


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    conversation: str
    session_id: str
    answer_id: str
    rating: str
    question: str
    answer: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    channel: str = "web"
    ts: float = field(default_factory=time.time)


def redacted(rec: FeedbackRecord) -> FeedbackRecord:
    """The record as it is kept: question, answer and meta without personal data."""
    return dataclasses.replace(rec, question=redact(rec.question), answer=redact(rec.answer),
                               meta=redact_json(rec.meta))


class FeedbackStore(Protocol):
    async def record(self, rec: FeedbackRecord) -> None: ...

    async def ratings(self, conversation: str) -> dict[str, str]:
        """answer id -> the latest rating in one conversation."""


class MemoryFeedbackStore:
    """Single-process mode: nothing outlives the process anyway (state is in memory too).
    Bounded: the latest ratings are kept for the ``max_conversations`` most recently rated."""

    def __init__(self, max_records: int = 10_000, max_conversations: int = 10_000) -> None:
        self.records: deque[FeedbackRecord] = deque(maxlen=max_records)
        self.max_conversations = max_conversations
        self._latest: OrderedDict[str, dict[str, str]] = OrderedDict()

    async def record(self, rec: FeedbackRecord) -> None:
        self.records.append(redacted(rec))
        latest = self._latest.setdefault(rec.conversation, {})
        latest[rec.answer_id] = rec.rating
        self._latest.move_to_end(rec.conversation)
        while len(self._latest) > self.max_conversations:  # forget the conversation rated longest ago
            self._latest.popitem(last=False)

    async def ratings(self, conversation: str) -> dict[str, str]:
        return dict(self._latest.get(conversation, {}))

    async def erase(self, conversation: str) -> int:
        """Forget a conversation's records and latest votes (right to erasure); returns how many of those went."""
        kept = [r for r in self.records if r.conversation != conversation]
        removed = len(self.records) - len(kept)
        if removed:
            self.records = deque(kept, maxlen=self.records.maxlen)
        return removed + (1 if self._latest.pop(conversation, None) is not None else 0)


class RedisFeedbackStore:
    def __init__(self, client: aioredis.Redis, keys: Keys, ttl_s: float, max_records: int = 1_000_000) -> None:
        self.client = client
        self.keys = keys
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.max_records = max_records

    async def record(self, rec: FeedbackRecord) -> None:
        fields = {k: (json.dumps(v, ensure_ascii=False, default=str) if isinstance(v, dict) else str(v))
                  for k, v in asdict(redacted(rec)).items()}
        latest = self.keys.feedback(rec.conversation)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.xadd(self.keys.feedback_stream(), fields, maxlen=self.max_records, approximate=True)
            pipe.hset(latest, rec.answer_id, rec.rating)
            pipe.pexpire(latest, self.ttl_ms)
            await pipe.execute()

    async def ratings(self, conversation: str) -> dict[str, str]:
        return dict(await self.client.hgetall(self.keys.feedback(conversation)))
