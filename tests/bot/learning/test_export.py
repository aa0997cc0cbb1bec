"""``python -m bot data export``: archived turns and their votes become cleaned training records, filtered by
feedback, date and source, with the previous turns as context, and no phone or ID number left."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.archive.writer import ArchiveWriter
from bot.config import ROOT, ArchiveConfig
from bot.learning.export import ExportFilter, ExportReport, archived_records
from bot.metrics import Metrics

PHONE = "13812345678"
RESIDENT_ID = "11010519491231002X"
DAY = dt.date(2025, 3, 10)


def _at(day: dt.date, minute: int) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(10, minute), tzinfo=dt.UTC)


def turn(conversation: str, event_id: str, question: str, answer: str, when: dt.datetime, **over: Any) -> dict:
    return {"created_at": when, "channel": "web", "tenant": "", "conversation": conversation, "event_id": event_id,
            "kind": "message", "question": question, "answer": answer, "replies": 1, "source": "faq",
            "outcome": "ok", **over}


def vote(conversation: str, rated: str, rating: str, when: dt.datetime) -> dict:
    return {"created_at": when, "channel": "web", "tenant": "", "conversation": conversation,
            "event_id": f"vote-{rated}-{rating}-{when.minute}", "rated_event_id": rated, "rating": rating}


@pytest.fixture
async def archive(tmp_path: Path) -> Any:
    """An archive written through the writer (so redacted as in production) with two conversations."""
    url = f"sqlite:///{tmp_path / 'archive.db'}"
    writer = ArchiveWriter(ArchiveConfig(url=url, retention_days=0), Metrics(), ROOT)  # fixed days: keep them
    a, b = "web::a", "web::b"
    for row in (
        turn(a, "a1", "怎么退货", "在订单页申请售后。", _at(DAY, 0)),
        turn(a, "a2", "运费谁出", "质量问题由我们承担运费。", _at(DAY, 1)),
        turn(a, "a3", f"我的手机号{PHONE}，身份证{RESIDENT_ID}，能查订单吗", f"已记录{PHONE}，稍后回电。",
             _at(DAY, 2), source="llm"),
        turn(a, "a4", "还在吗", "抱歉，系统繁忙。", _at(DAY, 3), source="system", outcome="timeout"),
        turn(b, "b1", "发票怎么开", "在订单详情里申请电子发票。", _at(DAY - dt.timedelta(days=10), 0)),
        turn(b, "b2", "要多久", "1-3 个工作日。", _at(DAY - dt.timedelta(days=10), 1), source="fallback"),
    ):
        assert writer.record("turns", row)
    for row in (
        vote(a, "a1", "up", _at(DAY, 5)),
        vote(a, "a2", "up", _at(DAY, 6)),
        vote(a, "a2", "down", _at(DAY, 7)),  # changed its mind: the last vote counts
        vote(b, "b1", "down", _at(DAY, 8)),
        vote(b, "b1", "none", _at(DAY, 9)),  # and took it back: unrated
    ):
        assert writer.record("feedback", row)
    await writer.flush()
    db = await writer.open_db()
    yield url, db
    await writer.close()


def queries(db: Any, **flt: Any) -> list[str]:
    return [r.query for r in archived_records(db, ExportFilter(**flt))]


async def test_the_default_drops_thumbs_down_and_what_was_not_answered(archive: Any) -> None:
    _, db = archive
    report = ExportReport()
    records = list(archived_records(db, ExportFilter(), report))
    # a2 rated down, a4 timed out, b2 a fallback
    assert [r.query for r in records] == ["怎么退货", records[1].query, "发票怎么开"]
    assert records[1].query.startswith("我的手机号")
    assert report.scanned == 6 and report.exported == 3
    assert report.skipped == {"feedback down": 1, "not answered": 1, "source fallback": 1}


async def test_feedback_filters(archive: Any) -> None:
    _, db = archive
    assert queries(db, feedback="up") == ["怎么退货"]
    assert queries(db, feedback="down") == ["运费谁出"]
    assert queries(db, feedback="rated") == ["怎么退货", "运费谁出"]
    assert queries(db, feedback="unrated") == [queries(db, feedback="unrated")[0], "发票怎么开"]
    assert len(queries(db, feedback="any")) == 4
    with pytest.raises(ValueError):
        ExportFilter(feedback="sideways")


async def test_date_and_source_filters(archive: Any) -> None:
    _, db = archive
    assert queries(db, since=DAY, feedback="any") == ["怎么退货", "运费谁出", queries(db, since=DAY)[1]]
    assert queries(db, until=DAY - dt.timedelta(days=1), feedback="any") == ["发票怎么开"]
    assert queries(db, since=DAY, until=DAY, feedback="any", sources=frozenset({"llm"}))[0].startswith("我的手机号")
    assert queries(db, sources=frozenset({"fallback"})) == ["要多久"]
    assert queries(db, since=DAY + dt.timedelta(days=1)) == []


async def test_the_context_is_the_previous_turns_of_the_same_conversation(archive: Any) -> None:
    _, db = archive
    records = {r.query: r for r in archived_records(db, ExportFilter(feedback="any", sources=frozenset(
        {"faq", "llm", "fallback"})))}
    assert records["怎么退货"].context == "" and records["发票怎么开"].context == ""
    assert records["运费谁出"].context == "用户：怎么退货\n客服：在订单页申请售后。"
    third = next(r for q, r in records.items() if q.startswith("我的手机号"))
    assert third.context.startswith("用户：怎么退货") and "运费谁出" in third.context  # the two before it
    assert records["要多久"].context == "用户：发票怎么开\n客服：在订单详情里申请电子发票。"


async def test_the_cli_writes_records_without_phone_or_id_numbers(archive: Any, tmp_path: Path) -> None:
    url, _ = archive
    out = tmp_path / "train.jsonl"
    env = {**os.environ, "BOT__ARCHIVE__URL": url}
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "bot", "data", "export", str(out), "--feedback", "any",
                         "--since", "2025-03-01", "--until", "2025-03-31", "--source", "faq,llm"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["query"][:4] for r in written] == ["怎么退货", "运费谁出", "我的手机"]
    assert all(set(r) == {"query", "response", "context"} for r in written)
    text = out.read_text(encoding="utf-8")
    assert PHONE not in text and RESIDENT_ID not in text and RESIDENT_ID.lower() not in text
    assert "[手机号]" in text
    assert "archived turns scanned: 4; passed the filters: 3" in done.stdout
    assert f"wrote 3 records to {out}" in done.stdout
    assert PHONE not in done.stdout + done.stderr


def test_the_cli_refuses_bad_days_and_sources(tmp_path: Path) -> None:
    for args in (["--since", "2025-13-01"], ["--source", "faq,nonsense"]):
        done = subprocess.run([sys.executable, "-m", "bot", "data", "export", str(tmp_path / "o.jsonl"), *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr
