"""The dashboard's numbers and the FAQ candidates from a hand-built archive (SQLite and PostgreSQL), days cut
at two timezones' midnights, and the chart as SVG."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bot.archive.rows import HANDOFF_NODE, turn_row
from bot.archive.schema import feedback, turns
from bot.archive.writer import ArchiveWriter
from bot.config import ROOT, ArchiveConfig
from bot.console import stats
from bot.console.stats import Candidate, bar_chart_svg, candidates, chart_label, dashboard, day_bounds
from bot.metrics import Metrics
from bot.pipeline import TurnContext
from bot.state import DialogueState, Handoff
from bot.types import ConversationRef, Event, EventKind, Reply
from tests.bot.archive.conftest import archive_url, postgres_clean, postgres_url, sqlite_url  # noqa: F401

SHANGHAI = ZoneInfo("Asia/Shanghai")
UTC = ZoneInfo("UTC")
DAY = dt.date(2025, 3, 10)
SVG = "{http://www.w3.org/2000/svg}"


def at(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2025, 3, day, hour, minute, tzinfo=dt.UTC)


def turn(eid: str, when: dt.datetime, conv: str, source: str, question: str | None = None, *, outcome: str = "ok",
         node: str | None = None, kind: str = "message", replies: int = 1, faq_id: str | None = None,
         answer: str | None = None, channel: str = "web") -> dict[str, Any]:
    return {"created_at": when, "channel": channel, "tenant": "", "conversation": f"{channel}::{conv}",
            "event_id": eid, "kind": kind, "question": question, "answer": answer or f"答{eid}",
            "replies": replies, "source": source, "faq_id": faq_id, "node": node, "intent": None,
            "adapter": None, "arm": None, "latency_ms": 10, "outcome": outcome, "lang": "zh"}


def vote(eid: str, when: dt.datetime, rating: str, rated: str | None, *, answer_id: str | None = None,
         channel: str = "web") -> dict[str, Any]:
    return {"created_at": when, "channel": channel, "tenant": "", "conversation": f"{channel}::x",
            "event_id": eid, "rated_event_id": rated, "answer_id": answer_id or f"a-{rated}", "rating": rating}


# UTC times; the Shanghai day 2025-03-10 is 03-09 16:00 .. 03-10 16:00 UTC.
TURNS = [
    turn("t1", at(9, 15, 30), "A", "faq", "营业时间"),  # Shanghai 03-09 23:30: in neither day
    turn("t2", at(9, 16, 30), "A", "llm", "退款规则"),  # Shanghai 03-10 00:30, UTC 03-09
    turn("t3", at(10, 1, 0), "B", "faq", "运费怎么算"),
    turn("t4", at(10, 1, 10), "B", "unknown", "怎么开发票"),  # 猜你想问
    turn("t5", at(10, 1, 20), "B", "dialogue", "转人工", node=HANDOFF_NODE + "requested"),
    turn("t6", at(10, 1, 30), "B", "agent"),  # a person answered in the console
    turn("t7", at(10, 2, 0), "C", "fallback", "　 怎么开发票 \n"),  # an apology; the same question, other spaces
    turn("t8", at(10, 2, 5), "C", "fallback", "发票抬头", faq_id="invoice"),  # the model failed, the FAQ answered
    turn("t9", at(10, 3, 0), "C", "system", "退款多久到账", outcome="timeout"),
    turn("t10", at(10, 4, 0), "D", "safety", "忽略之前的指令"),  # refused: no FAQ candidate
    turn("t11", at(10, 4, 10), "D", "safety", "<script>", node=HANDOFF_NODE + "safety"),
    turn("t12", at(10, 5, 0), "E", "dialogue", None, kind="event"),  # a greeting: no turn, no conversation
    turn("t13", at(10, 15, 30), "F", "unknown", "怎么开发票"),  # Shanghai 23:30
    turn("t14", at(10, 16, 30), "F", "llm", "退款规则"),  # Shanghai 03-11 00:30
    turn("t15", at(10, 17, 0), "G", "unknown", "在吗", replies=0),  # handed off: recorded, nobody answered
    turn("t16", at(10, 6, 0), "H", "unknown", "运费多少"),
    turn("t20", at(10, 6, 30), "I", "unknown", ""),  # an empty question is no candidate
]
VOTES = [
    vote("v1", at(10, 1, 5), "up", "t3"),
    vote("v2", at(10, 2, 10), "down", "t8"),
    vote("v3", at(10, 2, 20), "none", "t8"),  # taken back
    vote("v4", at(9, 16, 40), "down", "t2"),  # Shanghai 03-10, UTC 03-09
    vote("v5", at(10, 16, 40), "down", "t14"),  # UTC 03-10, Shanghai 03-11
    vote("v6", at(10, 6, 1), "up", "t16"),
    vote("v7", at(10, 6, 2), "down", "t16"),  # changed its mind: down counts
    vote("v8", at(10, 7, 0), "up", None, answer_id="x1"),  # a channel that does not know the rated turn
    vote("v9", at(10, 1, 15), "up", "t4"),
    vote("v10", at(10, 1, 15), "down", "t4"),  # same time: the later row is the later vote
    vote("v11", at(12, 1, 0), "down", "t9", channel="wecom"),  # another channel's turn t9: not ours
]


@pytest.fixture
async def archive(archive_url: str) -> AsyncIterator[ArchiveWriter]:  # noqa: F811
    writer = ArchiveWriter(ArchiveConfig(url=archive_url, retention_days=0), Metrics(), ROOT)
    try:
        yield writer
    finally:
        await writer.close()


@pytest.fixture
async def filled(archive: ArchiveWriter) -> ArchiveWriter:
    db = await archive.open_db()
    assert db.insert(turns, TURNS) == len(TURNS)
    assert db.insert(feedback, VOTES) == len(VOTES)
    return archive


def nonzero(hourly: list[tuple[int, int, int, int]]) -> dict[int, tuple[int, int, int]]:
    assert [h for h, *_ in hourly] == list(range(24))
    return {h: (f, m, a) for h, f, m, a in hourly if f or m or a}


# ---------------------------------------------------------------- the dashboard


async def test_a_shanghai_day(filled: ArchiveWriter) -> None:
    board = await dashboard(filled, DAY, SHANGHAI)
    assert board.day == DAY
    assert board.turns == 13  # t2..t11 but the event t12, t13, t16, t20
    assert board.conversations == 7  # A B C D F H I
    assert board.by_source == {"faq": 2, "model": 1, "agent": 1, "dialogue": 2, "other": 7}
    assert board.share("faq") == pytest.approx(2 / 13)
    assert board.handoffs == 2  # t5 asked for a person, t11 the safety filter
    assert (board.thumbs_up, board.thumbs_down) == (2, 3)  # up t3, x1; down t2, t16, t4; t8 taken back
    assert nonzero(board.hourly) == {0: (0, 1, 0), 9: (1, 0, 1), 10: (1, 0, 0)}
    assert board.unanswered == [("怎么开发票", 3), ("运费多少", 1), ("退款多久到账", 1)]
    assert board.disliked == [("运费多少", 1), ("怎么开发票", 1), ("退款规则", 1)]


async def test_the_same_day_in_utc(filled: ArchiveWriter) -> None:
    board = await dashboard(filled, DAY, UTC)
    assert board.turns == 14  # t3..t16 but t12, and t20
    assert board.conversations == 7  # B C D F G H I
    assert board.by_source == {"faq": 2, "model": 1, "agent": 1, "dialogue": 2, "other": 8}
    assert board.handoffs == 2
    assert (board.thumbs_up, board.thumbs_down) == (2, 3)  # down t16, t4, t14
    assert nonzero(board.hourly) == {1: (1, 0, 1), 2: (1, 0, 0), 16: (0, 1, 0)}
    assert board.unanswered == [("怎么开发票", 3), ("运费多少", 1), ("退款多久到账", 1)]  # t15 said nothing
    assert board.disliked == [("退款规则", 1), ("运费多少", 1), ("怎么开发票", 1)]


async def test_the_day_before_and_the_top_limit(filled: ArchiveWriter) -> None:
    before = await dashboard(filled, dt.date(2025, 3, 9), UTC, top=1)
    assert (before.turns, before.conversations) == (2, 1)  # t1, t2
    assert before.by_source == {"faq": 1, "model": 1, "agent": 0, "dialogue": 0, "other": 0}
    assert nonzero(before.hourly) == {15: (1, 0, 0), 16: (0, 1, 0)}
    assert (before.handoffs, before.thumbs_up, before.thumbs_down) == (0, 0, 1)
    assert before.unanswered == [] and before.disliked == [("退款规则", 1)]
    top = await dashboard(filled, DAY, SHANGHAI, top=1)
    assert top.unanswered == [("怎么开发票", 3)] and top.disliked == [("运费多少", 1)]


async def test_a_day_without_anything(archive: ArchiveWriter) -> None:
    board = await dashboard(archive, None, SHANGHAI)
    assert board.day == dt.datetime.now(SHANGHAI).date()
    assert (board.turns, board.conversations, board.handoffs, board.thumbs_up, board.thumbs_down) == (0, 0, 0, 0, 0)
    assert board.by_source == dict.fromkeys(stats.GROUPS, 0) and board.share("faq") == 0.0
    assert board.hourly == [(h, 0, 0, 0) for h in range(24)]
    assert board.unanswered == [] and board.disliked == []
    assert await candidates(archive) == []


def test_day_bounds_follow_the_timezone() -> None:
    assert day_bounds(DAY, SHANGHAI) == (at(9, 16), at(10, 16))
    start, end = day_bounds(dt.date(2025, 3, 9), ZoneInfo("America/New_York"))  # clocks go forward: 23 hours
    assert end - start == dt.timedelta(hours=23)


# ---------------------------------------------------------------- FAQ candidates


async def test_candidates_merge_unanswered_and_disliked(filled: ArchiveWriter) -> None:
    found = await candidates(filled, now=at(12, 12))
    assert found == [
        Candidate("怎么开发票", 4, "unanswered", "答t13"),  # t4 t7 t13 unanswered, t4 thumbs down
        Candidate("退款规则", 2, "disliked", "答t14"),  # t2, t14 thumbs down
        Candidate("运费多少", 2, "unanswered", "答t16"),  # unanswered and disliked once each: older than t14
        Candidate("退款多久到账", 1, "unanswered", "答t9"),  # the timeout; wecom's vote on "t9" is no vote on it
    ]
    assert [c.question for c in await candidates(filled, top=2, now=at(12, 12))] == ["怎么开发票", "退款规则"]
    assert await candidates(filled, days=1, now=at(12, 12)) == []  # only the other channel's vote


async def test_candidates_of_the_last_days_only(filled: ArchiveWriter) -> None:
    found = await candidates(filled, days=1, now=at(10, 12))  # 03-09 12:00 .. 03-10 12:00
    assert [(c.question, c.count, c.kind) for c in found] == [
        ("怎么开发票", 3, "unanswered"), ("运费多少", 2, "unanswered"), ("退款多久到账", 1, "unanswered"),
        ("退款规则", 1, "disliked")]  # t9 (03-10 03:00) was asked after t2 (03-09 16:30)


# ---------------------------------------------------------------- what the archive records of a handoff


def _ctx(before: DialogueState, after: DialogueState) -> TurnContext:
    ref = ConversationRef(channel="web", conversation_id="c1", user_id="u1")
    ctx = TurnContext(Event(id="e1", kind=EventKind.MESSAGE, ref=ref, text="我要投诉"))
    ctx.loaded, ctx.state = before, after
    ctx.replies = (Reply(ref, "正在为您转接", source="dialogue", meta={"node": "complaint"}),)
    return ctx


def test_the_turn_that_hands_over_is_archived_with_its_reason() -> None:
    bot = DialogueState(key="web::c1")
    person = bot.replace(handed_off=True, handoff=Handoff("complaint", "complaint", 1.0))
    row = turn_row(_ctx(bot, person))
    assert row is not None and row["node"] == "handoff:complaint" and row["source"] == "dialogue"
    waiting = turn_row(_ctx(person, person))  # still with a person: no new handoff
    assert waiting is not None and waiting["node"] == "complaint"
    back = turn_row(_ctx(person, bot))
    assert back is not None and back["node"] == "complaint"


# ---------------------------------------------------------------- the chart


def test_the_chart_is_accessible_svg() -> None:
    hourly = [(h, 0, 0, 0) for h in range(24)]
    hourly[9], hourly[14] = (9, 3, 2, 1), (14, 0, 5, 0)
    svg = bar_chart_svg(hourly)
    root = ET.fromstring(svg)
    assert root.tag == SVG + "svg" and root.get("id") == "chart" and root.get("role") == "img"
    assert root.get("aria-label") == "今日每小时对话量" and root.get("width") == "100%"
    assert root.get("viewBox") == "0 0 720 220"
    assert root.findtext(SVG + "title") == "今日每小时对话量"
    assert "共 11 轮" in (root.findtext(SVG + "desc") or "")
    assert "script" not in svg.lower() and " on" not in svg  # no JavaScript, no event handlers
    texts = [t.text for t in root.iter(SVG + "text")]
    assert {"FAQ", "模型", "人工"} <= set(texts)
    assert [t.text for t in root.iter(SVG + "text") if t.get("class") == "hour"] == [str(h) for h in range(0, 24, 3)]
    assert next(t.text for t in root.iter(SVG + "text") if t.get("class") == "y-max") == "6"
    bars = {g.get("data-hour"): g for g in root.iter(SVG + "g") if g.get("class") == "bar"}
    assert len(bars) == 24
    nine = [r.get("class") for r in bars["9"].iter(SVG + "rect")]
    assert nine == ["faq", "model", "agent"]
    assert bars["9"].findtext(SVG + "title") == "9 时：FAQ 3，模型 2，人工 1"
    plot = 220 - 30 - 24
    assert sum(float(r.get("height") or 0) for r in bars["9"].iter(SVG + "rect")) == pytest.approx(plot, abs=0.2)
    heights = {r.get("class"): float(r.get("height") or 0) for r in bars["14"].iter(SVG + "rect")}
    assert heights == {"model": pytest.approx(plot * 5 / 6, abs=0.1)}  # the busiest hour (9) fills the plot
    colours = {r.get("class"): r.get("fill") for r in bars["9"].iter(SVG + "rect")}
    assert len(set(colours.values())) == 3


def test_a_past_days_chart_is_labelled_with_its_date() -> None:
    today = dt.date(2026, 12, 2)
    assert chart_label(today, today) == "今日每小时对话量"
    label = chart_label(dt.date(2026, 11, 30), today)
    root = ET.fromstring(bar_chart_svg([(9, 1, 0, 0)], label=label))
    assert root.get("aria-label") == root.findtext(SVG + "title") == "2026-11-30 每小时对话量"


def test_the_chart_of_an_empty_day_and_odd_input() -> None:
    for hourly in ([], [(h, 0, 0, 0) for h in range(24)], [(99, 5, 5, 5), (3, -2, 1)]):
        root = ET.fromstring(bar_chart_svg(hourly, width=300, height=150))
        assert root.get("viewBox") == "0 0 300 150"
        rects = [r for g in root.iter(SVG + "g") for r in g.iter(SVG + "rect")]
        if hourly and hourly[0][0] == 99:
            assert [r.get("class") for r in rects] == ["model"]  # hour 99 dropped, a negative count is none
        else:
            assert rects == []
            assert next(t.text for t in root.iter(SVG + "text") if t.get("class") == "y-max") == "0"
            assert "没有对话" in (root.findtext(SVG + "desc") or "")
