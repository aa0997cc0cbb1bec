"""The console's numbers, read from the conversation archive: the dashboard of one day, the questions the FAQ
should learn to answer, and the day's chart as inline SVG.

Every query is portable SQLAlchemy Core (SQLite by default, PostgreSQL in production): no date functions in SQL,
so the hours of a day are counted here, in the operator's timezone, from a fetch of two small columns. Each call
runs on the archive's own thread (``ArchiveWriter.run``): a slow database never stalls the event loop.

Which archived source counts as what (``bot.archive.schema.SOURCES``):

- ``faq`` is the FAQ; ``fallback`` is too when it carries an FAQ entry (the model failed and the FAQ answered);
- ``llm`` is the model, ``agent`` a person in the console;
- ``dialogue`` (graph texts: collect steps, handoff notices) and ``system`` (waiting notes, apologies) are the
  dialogue;
- the rest is ``other``: ``fallback`` without an entry (an apology), ``unknown`` (猜你想问 or 没听懂),
  ``safety`` (the input filter answered).

A question is *unanswered* when its turn said 猜你想问 / 没听懂 (``unknown``), apologised (``fallback`` without
an FAQ entry; the output filter's replacement is one), or failed (outcome other than ok/resent). Safety refusals
are left out on purpose: they are attacks and blocked words, not questions an FAQ entry should answer, and the
curation page would offer their text for pinning. A turn that handed over to a person is no unanswered question.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func, not_, or_, select

from bot.archive.db import ArchiveDb
from bot.archive.rows import HANDOFF_NODE
from bot.archive.schema import feedback, turns
from bot.archive.writer import ArchiveWriter

GROUPS = ("faq", "model", "agent", "dialogue", "other")
GROUP_LABELS = {"faq": "FAQ", "model": "模型", "agent": "人工", "dialogue": "流程", "other": "其他"}
_GROUP = {"faq": "faq", "llm": "model", "agent": "agent", "dialogue": "dialogue", "system": "dialogue"}
_ANSWERED_OUTCOMES = ("ok", "resent")
# Distinct raw questions fetched per top list before normalising merges them (" 退款" and "退款" are one):
# generous, so whitespace variants of a question just outside the cut cannot change the order of the top.
_HEADROOM = 25
_MIN_FETCH = 500
_IN_CHUNK = 500  # ids per IN (...) list

CandidateKind = Literal["unanswered", "disliked"]


@dataclass(frozen=True, slots=True)
class Dashboard:
    day: dt.date
    conversations: int
    turns: int
    by_source: dict[str, int]  # faq | model | agent | dialogue | other
    handoffs: int
    thumbs_up: int
    thumbs_down: int
    hourly: list[tuple[int, int, int, int]]  # (hour 0-23, faq, model, agent) turns, in handoff.timezone
    unanswered: list[tuple[str, int]]  # top questions answered by fallback/uncertain/failed turns, with counts
    disliked: list[tuple[str, int]]  # top questions whose answer got thumbs down

    def share(self, group: str) -> float:
        """The group's part of the day's turns, 0.0 on a day without any."""
        return self.by_source.get(group, 0) / self.turns if self.turns else 0.0


@dataclass(frozen=True, slots=True)
class Candidate:
    """A question customers keep asking and the bot answers badly: what the FAQ page offers for pinning."""

    question: str
    count: int
    kind: CandidateKind  # the larger of the two counts decides when a question is both
    last_answer: str | None  # what the bot said the last time


# ---------------------------------------------------------------- shared pieces


def normalise(question: str | None) -> str:
    """One spelling per question for counting: outer whitespace gone, inner runs (full-width spaces and line
    breaks included) one space."""
    return " ".join((question or "").split())


def group_of(source: str, faq_id: str | None = None) -> str:
    if source == "fallback" and faq_id:
        return "faq"
    return _GROUP.get(source, "other")


def day_bounds(day: dt.date, tz: ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
    """The day's start and the next day's, in UTC (a day with a DST change has 23 or 25 hours)."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=tz).astimezone(dt.UTC)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=tz).astimezone(dt.UTC)
    return start, end


def _utc(value: dt.datetime) -> dt.datetime:
    """SQLite hands back the stored UTC time without its zone; PostgreSQL with the session's."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _counted() -> Any:
    """The turns the dashboard counts: customers' messages, and agents' replies whatever kind they are
    archived as (a platform event such as a greeting is no turn)."""
    return or_(turns.c.kind == "message", turns.c.source == "agent")


def _unanswered() -> Any:
    failed = turns.c.outcome.not_in(_ANSWERED_OUTCOMES)
    said_nothing_useful = and_(
        turns.c.replies > 0,
        or_(turns.c.source == "unknown", and_(turns.c.source == "fallback", turns.c.faq_id.is_(None))),
    )
    return and_(
        turns.c.kind == "message",
        turns.c.question.is_not(None),
        turns.c.question != "",
        or_(turns.c.node.is_(None), not_(turns.c.node.startswith(HANDOFF_NODE, autoescape=True))),
        or_(failed, said_nothing_useful),
    )


def _in_window(table: Any, start: dt.datetime, end: dt.datetime) -> Any:
    return and_(table.c.created_at >= start, table.c.created_at < end)


def _rank(counts: dict[str, int], latest: dict[str, dt.datetime], top: int) -> list[tuple[str, int]]:
    """Most frequent first; then the most recently asked; then the text, so equal inputs order the same."""
    order = sorted(counts, key=lambda q: (-counts[q], -latest[q].timestamp(), q))
    return [(q, counts[q]) for q in order[:max(0, top)]]


@dataclass(slots=True)
class _Tally:
    counts: dict[str, int]
    latest: dict[str, dt.datetime]
    raw: dict[str, list[str]]  # normalised -> the stored spellings


def _tally(rows: Iterable[tuple[str | None, int, dt.datetime]]) -> _Tally:
    tally = _Tally({}, {}, {})
    for question, count, last in rows:
        norm = normalise(question)
        if not norm:
            continue
        last = _utc(last)
        tally.counts[norm] = tally.counts.get(norm, 0) + int(count)
        if norm not in tally.latest or last > tally.latest[norm]:
            tally.latest[norm] = last
        tally.raw.setdefault(norm, []).append(question or "")
    return tally


def _unanswered_tally(db: ArchiveDb, start: dt.datetime, end: dt.datetime, top: int) -> _Tally:
    last = func.max(turns.c.created_at)
    count = func.count()
    stmt = (select(turns.c.question, count, last)
            .where(_in_window(turns, start, end), _unanswered())
            .group_by(turns.c.question)
            .order_by(count.desc(), last.desc())
            .limit(max(_MIN_FETCH, top * _HEADROOM)))
    with db.engine.connect() as conn:
        return _tally((r[0], r[1], r[2]) for r in conn.execute(stmt))


def _vote_key(row: Any) -> tuple[str, str, str]:
    """The rated turn; a channel that does not know it names the answer, else the vote stands alone."""
    if row.rated_event_id:
        return (row.channel, row.tenant, "t:" + row.rated_event_id)
    if row.answer_id:
        return (row.channel, row.tenant, "a:" + row.answer_id)
    return (row.channel, row.tenant, "e:" + row.event_id)


def _latest_votes(db: ArchiveDb, start: dt.datetime, end: dt.datetime) -> dict[tuple[str, str, str], str]:
    """The last vote cast in the window on each rated answer, ``up`` or ``down`` (``none`` takes it back), with
    ArchiveDb.latest_votes's order: by time, then by row id."""
    stmt = (select(feedback.c.channel, feedback.c.tenant, feedback.c.rated_event_id, feedback.c.answer_id,
                   feedback.c.event_id, feedback.c.rating)
            .where(_in_window(feedback, start, end))
            .order_by(feedback.c.created_at, feedback.c.id))
    latest: dict[tuple[str, str, str], str] = {}
    with db.engine.connect() as conn:
        for row in conn.execute(stmt):
            latest[_vote_key(row)] = row.rating
    return {key: rating for key, rating in latest.items() if rating in ("up", "down")}


def _disliked_turns(db: ArchiveDb, votes: dict[tuple[str, str, str], str]) -> list[Any]:
    """The archived turns whose last vote is down (question, answer, created_at)."""
    wanted = {(c, t, k[2:]) for (c, t, k), rating in votes.items() if rating == "down" and k.startswith("t:")}
    ids = sorted({event_id for _c, _t, event_id in wanted})
    found: list[Any] = []
    with db.engine.connect() as conn:
        for i in range(0, len(ids), _IN_CHUNK):
            stmt = (select(turns.c.channel, turns.c.tenant, turns.c.event_id, turns.c.question, turns.c.answer,
                           turns.c.created_at)
                    .where(turns.c.event_id.in_(ids[i:i + _IN_CHUNK])))
            found.extend(r for r in conn.execute(stmt) if (r.channel, r.tenant, r.event_id) in wanted)
    return found


def _disliked_tally(rows: Sequence[Any]) -> _Tally:
    return _tally((r.question, 1, r.created_at) for r in rows)


# ---------------------------------------------------------------- the dashboard


def _dashboard(db: ArchiveDb, day: dt.date, tz: ZoneInfo, top: int) -> Dashboard:
    start, end = day_bounds(day, tz)
    window = _in_window(turns, start, end)
    by_source = dict.fromkeys(GROUPS, 0)
    hours = [[0, 0, 0] for _ in range(24)]
    column = {"faq": 0, "model": 1, "agent": 2}
    total = 0
    with db.engine.connect() as conn:
        rows = conn.execute(select(turns.c.created_at, turns.c.source, turns.c.faq_id).where(window, _counted()))
        for created_at, source, faq_id in rows:
            group = group_of(source, faq_id)
            by_source[group] += 1
            total += 1
            if group in column:
                hours[_utc(created_at).astimezone(tz).hour][column[group]] += 1
        conversations = conn.execute(
            select(func.count(func.distinct(turns.c.conversation))).where(window, _counted())).scalar_one()
        handoffs = conn.execute(
            select(func.count()).select_from(turns)
            .where(window, turns.c.node.startswith(HANDOFF_NODE, autoescape=True))).scalar_one()
    votes = _latest_votes(db, start, end)
    unanswered = _unanswered_tally(db, start, end, top)
    disliked = _disliked_tally(_disliked_turns(db, votes))
    return Dashboard(
        day=day,
        conversations=int(conversations),
        turns=total,
        by_source=by_source,
        handoffs=int(handoffs),
        thumbs_up=sum(1 for r in votes.values() if r == "up"),
        thumbs_down=sum(1 for r in votes.values() if r == "down"),
        hourly=[(h, hours[h][0], hours[h][1], hours[h][2]) for h in range(24)],
        unanswered=_rank(unanswered.counts, unanswered.latest, top),
        disliked=_rank(disliked.counts, disliked.latest, top),
    )


async def dashboard(archive: ArchiveWriter, day: dt.date | None, tz: ZoneInfo, *, top: int = 10) -> Dashboard:
    """One day in ``tz`` (``config.handoff.timezone``; None: today there). Raises ``ArchiveUnavailable``.

    ``conversations`` are the distinct conversations with a counted turn that day; ``turns`` customers'
    messages and agents' replies; ``handoffs`` the turns that handed a conversation to a person (archived with
    node ``handoff:<reason>``, bot.archive.rows); the thumbs are the last vote cast that day on each answer."""
    if day is None:
        day = dt.datetime.now(tz).date()
    return await archive.run(lambda db: _dashboard(db, day, tz, top))


# ---------------------------------------------------------------- FAQ curation


def _last_answers(db: ArchiveDb, raw: list[str], start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
    """The latest unanswered turn (answer, created_at) of each stored spelling, by normalised question."""
    found: dict[str, Any] = {}
    with db.engine.connect() as conn:
        for i in range(0, len(raw), _IN_CHUNK):
            stmt = (select(turns.c.question, turns.c.answer, turns.c.created_at)
                    .where(_in_window(turns, start, end), _unanswered(), turns.c.question.in_(raw[i:i + _IN_CHUNK]))
                    .order_by(turns.c.created_at.desc(), turns.c.id.desc()))
            for row in conn.execute(stmt):
                norm = normalise(row.question)
                if norm not in found or _utc(row.created_at) > _utc(found[norm].created_at):
                    found[norm] = row
    return found


def _candidates(db: ArchiveDb, days: int, top: int, now: dt.datetime) -> list[Candidate]:
    end = now.astimezone(dt.UTC) + dt.timedelta(microseconds=1)
    start = end - dt.timedelta(days=max(0, days))
    unanswered = _unanswered_tally(db, start, end, top)
    disliked_rows = _disliked_turns(db, _latest_votes(db, start, end))
    disliked = _disliked_tally(disliked_rows)
    counts = {q: unanswered.counts.get(q, 0) + disliked.counts.get(q, 0)
              for q in {*unanswered.counts, *disliked.counts}}
    latest = {q: max(t for t in (unanswered.latest.get(q), disliked.latest.get(q)) if t is not None) for q in counts}
    ranked = _rank(counts, latest, top)
    wanted = {q for q, _ in ranked}
    raw = sorted({s for q in wanted if q in unanswered.raw for s in unanswered.raw[q]})
    answers: dict[str, tuple[dt.datetime, str | None]] = {
        q: (_utc(r.created_at), r.answer) for q, r in _last_answers(db, raw, start, end).items()}
    for row in disliked_rows:
        norm = normalise(row.question)
        if norm in wanted and (norm not in answers or _utc(row.created_at) > answers[norm][0]):
            answers[norm] = (_utc(row.created_at), row.answer)
    out = []
    for question, count in ranked:
        kind: CandidateKind = ("disliked" if disliked.counts.get(question, 0) > unanswered.counts.get(question, 0)
                               else "unanswered")
        out.append(Candidate(question, count, kind, answers.get(question, (None, None))[1]))
    return out


async def candidates(archive: ArchiveWriter, days: int = 30, top: int = 20, *,
                     now: dt.datetime | None = None) -> list[Candidate]:
    """Unanswered and thumbs-down questions of the last ``days`` days as one list (a question that is both is
    one candidate with both counts), most frequent first. Raises ``ArchiveUnavailable``."""
    when = now or dt.datetime.now(dt.UTC)
    return await archive.run(lambda db: _candidates(db, days, top, when))


# ---------------------------------------------------------------- the chart

CHART_LABEL = "今日每小时对话量"
# Okabe-Ito blue and orange, and a neutral grey: told apart with any colour vision, and in greyscale by lightness.
SERIES = (("faq", "FAQ", "#0072B2"), ("model", "模型", "#E69F00"), ("agent", "人工", "#7F7F7F"))


def _hours(hourly: Iterable[Sequence[int]]) -> list[tuple[int, int, int]]:
    """24 rows whatever came in: missing hours are zeros, odd values (negative, out of range) are dropped."""
    out = [(0, 0, 0)] * 24
    for row in hourly:
        numbers = [int(v) for v in row]
        if numbers and 0 <= numbers[0] < 24:
            faq, model, agent = (max(0, v) for v in [*numbers[1:], 0, 0, 0][:3])
            out[numbers[0]] = (faq, model, agent)
    return out


def _fmt(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def chart_label(day: dt.date, today: dt.date) -> str:
    """今日 for today; another day (``?day=``) by its date, so a past day's chart never reads as today's."""
    return CHART_LABEL if day == today else f"{day.isoformat()} 每小时对话量"


def bar_chart_svg(hourly: Iterable[Sequence[int]], *, width: int = 720, height: int = 220,
                  label: str = CHART_LABEL) -> str:
    """Stacked bars per hour (FAQ, 模型, 人工) with a legend, hour labels every third hour and the y-axis maximum.
    Plain SVG, no script; it scales to its container (viewBox, width 100%). Each bar has a <title> so the
    numbers are read out and shown on hover; the whole chart's summary is in its <desc>."""
    e = lambda text: html.escape(str(text), quote=True)  # noqa: E731
    width, height = max(240, int(width)), max(120, int(height))
    hours = _hours(hourly)
    peak = max(sum(h) for h in hours)
    left, right, top, bottom = 40, 8, 30, 24
    plot_w, plot_h = width - left - right, height - top - bottom
    slot = plot_w / 24
    bar = slot * 0.7
    base = top + plot_h
    scale = plot_h / peak if peak else 0.0
    totals = [sum(h[i] for h in hours) for i in range(3)]
    summary = "，".join(f"{label} {totals[i]}" for i, (_k, label, _c) in enumerate(SERIES))
    busiest = max(range(24), key=lambda h: sum(hours[h]))
    desc = f"共 {sum(totals)} 轮：{summary}。" + (f"最多在 {busiest} 时（{peak} 轮）。" if peak else "这一天没有对话。")
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="chart" role="img" aria-label="{e(label)}" '
        f'viewBox="0 0 {width} {height}" width="100%" preserveAspectRatio="xMidYMid meet" '
        f'style="max-width:100%;height:auto" font-family="sans-serif" font-size="11">',
        f"<title>{e(label)}</title>",
        f"<desc>{e(desc)}</desc>",
    ]
    x = left
    for key, name, colour in SERIES:  # the legend, top left
        parts.append(f'<rect class="legend legend-{e(key)}" x="{x}" y="8" width="12" height="12" fill="{e(colour)}"/>')
        parts.append(f'<text x="{x + 16}" y="18" fill="#333">{e(name)}</text>')
        x += 16 + 12 * len(name) + 20
    parts.append(f'<text class="y-max" x="{left - 4}" y="{top + 4}" text-anchor="end" fill="#333">{e(peak)}</text>')
    parts.append(f'<text class="y-min" x="{left - 4}" y="{base}" text-anchor="end" fill="#333">0</text>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{base}" stroke="#999" stroke-width="1"/>')
    parts.append(f'<line x1="{left}" y1="{base}" x2="{width - right}" y2="{base}" stroke="#999" stroke-width="1"/>')
    for hour, values in enumerate(hours):
        bx = left + hour * slot + (slot - bar) / 2
        tip = f"{hour} 时：" + "，".join(f"{label} {values[i]}" for i, (_k, label, _c) in enumerate(SERIES))
        parts.append(f'<g class="bar" data-hour="{hour}"><title>{e(tip)}</title>')
        y = float(base)
        for i, (key, _label, colour) in enumerate(SERIES):
            if not values[i]:
                continue
            h = values[i] * scale
            y -= h
            parts.append(f'<rect class="{e(key)}" x="{_fmt(bx)}" y="{_fmt(y)}" width="{_fmt(bar)}" '
                         f'height="{_fmt(h)}" fill="{e(colour)}"/>')
        parts.append("</g>")
        if hour % 3 == 0:
            parts.append(f'<text class="hour" x="{_fmt(left + hour * slot + slot / 2)}" y="{base + 15}" '
                         f'text-anchor="middle" fill="#333">{hour}</text>')
    parts.append(f'<text x="{width - right}" y="{base + 15}" text-anchor="end" fill="#666">时</text>')
    parts.append("</svg>")
    return "".join(parts)
