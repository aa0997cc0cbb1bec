"""``python -m bot data export OUT``: archived turns (bot/archive/) as training records ``{query, response,
context}``, filtered by date, source and the customers' thumbs up/down, then cleaned like ``data clean``.

A turn's rating is the last vote on it (a vote taken back, ``none``, leaves it unrated). The context is the
conversation's previous turn or two, shortened, so a follow-up ("那运费呢？") keeps what it follows. Only
message turns that were answered (outcome ``ok`` or ``resent``) are exported: an apology after a timeout
teaches nothing. The archive holds redacted text already; the cleaning redacts once more, with this
deployment's patterns.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bot.learning.clean import Record

if TYPE_CHECKING:  # SQLAlchemy is imported when an export runs, not by every `python -m bot` command
    from bot.archive.db import ArchiveDb

FEEDBACK_FILTERS = ("not-down", "up", "down", "any", "rated", "unrated")
# What is worth learning by default: answers, not apologies ("system") or "I don't know" ("fallback").
DEFAULT_SOURCES = frozenset({"faq", "llm", "dialogue", "agent"})
CONTEXT_TURNS = 2
CONTEXT_CHARS_PER_TEXT = 200
_ANSWERED = ("ok", "resent")


@dataclass(frozen=True, slots=True)
class ExportFilter:
    since: dt.date | None = None  # inclusive, UTC days
    until: dt.date | None = None  # inclusive
    feedback: str = "not-down"  # one of FEEDBACK_FILTERS; the default drops thumbs-down turns
    sources: frozenset[str] = DEFAULT_SOURCES

    def __post_init__(self) -> None:
        if self.feedback not in FEEDBACK_FILTERS:
            raise ValueError(f"feedback filter must be one of {', '.join(FEEDBACK_FILTERS)}")

    def keeps(self, rating: str | None) -> bool:
        return {
            "not-down": rating != "down",
            "up": rating == "up",
            "down": rating == "down",
            "any": True,
            "rated": rating is not None,
            "unrated": rating is None,
        }[self.feedback]


@dataclass(slots=True)
class ExportReport:
    scanned: int = 0
    exported: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def lines(self) -> list[str]:
        out = [f"archived turns scanned: {self.scanned}; passed the filters: {self.exported}"]
        out += [f"  skipped {count} × {reason}" for reason, count in self.skipped.most_common()]
        return out


def _day_start(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


def _short(text: str) -> str:
    return text if len(text) <= CONTEXT_CHARS_PER_TEXT else text[:CONTEXT_CHARS_PER_TEXT] + "…"


def _context(previous: deque[tuple[str, str]]) -> str:
    return "\n".join(f"用户：{_short(q)}\n客服：{_short(a)}" for q, a in previous)


def archived_records(db: ArchiveDb, flt: ExportFilter, report: ExportReport | None = None) -> Iterator[Record]:
    """Records in conversation order (each conversation's turns oldest first)."""
    from sqlalchemy import select

    from bot.archive.schema import turns

    report = report if report is not None else ExportReport()
    votes = db.latest_votes()
    stmt = select(turns).where(turns.c.kind == "message")
    if flt.since is not None:
        stmt = stmt.where(turns.c.created_at >= _day_start(flt.since))
    if flt.until is not None:
        stmt = stmt.where(turns.c.created_at < _day_start(flt.until + dt.timedelta(days=1)))
    stmt = stmt.order_by(turns.c.conversation, turns.c.created_at, turns.c.id)
    conversation: str | None = None
    previous: deque[tuple[str, str]] = deque(maxlen=CONTEXT_TURNS)
    for row in db.stream(stmt):
        report.scanned += 1
        if row["conversation"] != conversation:
            conversation = row["conversation"]
            previous.clear()
        question, answer = row["question"] or "", row["answer"] or ""
        answered = row["outcome"] in _ANSWERED and question and answer
        rating = votes.get((row["channel"], row["tenant"], row["event_id"]))
        if not answered:
            report.skipped["not answered"] += 1
        elif row["source"] not in flt.sources:
            report.skipped[f"source {row['source']}"] += 1
        elif not flt.keeps(rating):
            report.skipped[f"feedback {rating or 'none'}"] += 1
        else:
            report.exported += 1
            yield Record(question, answer, _context(previous))
        if answered:
            previous.append((question, answer))
