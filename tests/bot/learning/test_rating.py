"""Human rating: ``eval sample`` draws a reproducible, redacted sheet of archived answers (CSV with BOM and an
HTML form), ``eval ratings`` reports per arm the mean and 95% CI of each criterion, skipping bad rows by number."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.archive.db import ArchiveDb, database_url
from bot.archive.writer import ArchiveWriter
from bot.config import ROOT, ArchiveConfig
from bot.learning.rating import (
    COLUMNS,
    SheetRow,
    candidates,
    draw,
    mean_ci,
    read_ratings,
    report_lines,
    sheet_csv,
    sheet_html,
)
from bot.metrics import Metrics
from tests.bot.archive.helpers import PHONE, RESIDENT_ID

DAY = dt.datetime(2025, 3, 10, 10, 0, tzinfo=dt.UTC)


def turn(i: int, question: str, answer: str, **over: Any) -> dict[str, Any]:
    return {"created_at": DAY + dt.timedelta(minutes=i), "channel": "web", "tenant": "", "conversation": f"web::{i}",
            "event_id": f"e{i}", "kind": "message", "question": question, "answer": answer, "replies": 1,
            "source": "faq", "outcome": "ok", "adapter": None, "arm": None, **over}


@pytest.fixture
async def archive(tmp_path: Path) -> Any:
    """40 answered turns over two arms, plus some that must never be sampled; written through the writer."""
    url = f"sqlite:///{tmp_path / 'archive.db'}"
    writer = ArchiveWriter(ArchiveConfig(url=url, retention_days=0), Metrics(), ROOT)
    for i in range(40):
        arm = "tone/control" if i % 4 else "tone/warm"  # 30 control, 10 warm
        question = f"第{i}个问题：我的手机号{PHONE}，身份证{RESIDENT_ID}" if i == 7 else f"第{i}个问题怎么办"
        adapter = "warm" if i % 4 == 0 else None
        assert writer.record("turns", turn(i, question, f"第{i}个回答", arm=arm, adapter=adapter))
    assert writer.record("turns", turn(50, "还在吗", "抱歉，系统繁忙。", source="system", outcome="timeout"))
    assert writer.record("turns", turn(51, "", "欢迎光临", kind="event"))
    assert writer.record("turns", turn(52, "人工", "已为您转接人工", source="agent"))
    await writer.flush()
    await writer.close()
    db = ArchiveDb.open(database_url(url, ROOT))
    yield url, db
    db.close()


def test_the_sample_is_reproducible_with_a_seed_and_has_n_answered_rows(archive: Any) -> None:
    _, db = archive
    pool = candidates(db)
    assert len(pool) == 40  # the timeout, the platform event and the agent's answer are not the bot's answers
    first = draw(pool, 12, seed=5)
    assert len(first) == 12 and len({r.id for r in first}) == 12
    assert [r.id for r in draw(pool, 12, seed=5)] == [r.id for r in first]
    assert [r.id for r in draw(pool, 12, seed=6)] != [r.id for r in first]
    assert len(draw(pool, 100, seed=1)) == 40  # fewer than asked: all of them


def test_stratified_sampling_takes_an_equal_share_per_arm(archive: Any) -> None:
    _, db = archive
    rows = draw(candidates(db), 10, seed=3, stratified=True)
    groups = [r.group for r in rows]
    assert groups.count("tone/warm") == 5 and groups.count("tone/control") == 5
    small = draw(candidates(db), 30, seed=3, stratified=True)  # warm has only 10: control takes the rest
    assert [r.group for r in small].count("tone/warm") == 10 and len(small) == 30


def test_the_cli_writes_a_redacted_csv_with_bom_and_an_html_form(archive: Any, tmp_path: Path) -> None:
    url, _ = archive
    env = {**os.environ, "BOT__ARCHIVE__URL": url}
    out = tmp_path / "sheet"
    done = subprocess.run([sys.executable, "-m", "bot", "eval", "sample", "--n", "40", "--seed", "1", "--out",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "sampled 40 of 40 answered turns (simple random, seed 1)" in done.stdout
    raw = (tmp_path / "sheet.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    assert len(rows) == 40 and tuple(rows[0]) == COLUMNS
    assert all(r["accuracy"] == r["fluency"] == r["completeness"] == "" for r in rows)
    assert {r["arm"] for r in rows} == {"tone/control", "tone/warm"}
    page = (tmp_path / "sheet.html").read_text(encoding="utf-8")
    for text in (raw.decode("utf-8-sig"), page):
        assert PHONE not in text and RESIDENT_ID not in text
    assert "[手机号]" in page
    assert "准确性" in page and "流畅性" in page and "完整性" in page
    assert page.count('type="radio"') == 40 * 3 * 5
    assert "http://" not in page and "https://" not in page and "<link" not in page  # self-contained


def test_the_html_escapes_every_text() -> None:
    row = SheetRow("9", "a\"dapter", "t/<b>", "llm", '<script>alert("x")</script>', "答 & <img src=x onerror=y>")
    page = sheet_html([row])
    assert '<script>alert("x")</script>' not in page and "<img" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert page.count("<script>") == 1  # the download script alone
    assert 'data-adapter="a&quot;dapter"' in page


def _sheet(path: Path, rows: list[list[str]], *, bom: bool = True) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8-sig" if bom else "utf-8")
    return path


def r(id_: str, adapter: str, arm: str, a: str, f: str, c: str) -> list[str]:
    return [id_, adapter, arm, "llm", "问", "答", a, f, c, ""]


def test_ratings_are_reported_per_arm_with_means_and_95_percent_cis(tmp_path: Path) -> None:
    sheet = _sheet(tmp_path / "filled.csv", [
        r("1", "", "tone/control", "4", "5", "3"),
        r("2", "", "tone/control", "2", "5", "3"),
        r("3", "", "tone/control", "3", "5", "3"),
        r("4", "warm", "tone/warm", "5", "4", "5"),
        r("5", "warm", "", "5", "4", "4"),  # an adapter outside the test
        r("6", "", "", "", "", ""),  # not rated yet
        r("7", "", "tone/warm", "6", "4", "5"),  # row 8 of the file
        r("8", "", "tone/warm", "4.5", "", "x"),  # row 9
    ], bom=False)
    ratings = read_ratings(sheet)
    assert ratings.scores["tone/control"] == [(4, 5, 3), (2, 5, 3), (3, 5, 3)]
    assert ratings.scores["warm"] == [(5, 4, 4)] and ratings.scores["tone/warm"] == [(5, 4, 5)]
    assert ratings.unrated == 1
    assert ratings.bad == ["row 8: accuracy '6' is not a whole number 1-5",
                           "row 9: accuracy '4.5' is not a whole number 1-5; fluency is empty; "
                           "completeness 'x' is not a whole number 1-5"]
    mean, half = mean_ci([4, 2, 3])
    assert mean == 3.0 and half == pytest.approx(4.302653 * 1.0 / 3 ** 0.5, rel=1e-5)  # t(0.975, 2), sd 1
    lines = report_lines(ratings)
    at = lines.index("tone/control: 3 rated")
    assert lines[at + 1].endswith("3.00 ± 2.48") and "准确性" in lines[at + 1]
    assert lines[at + 2].endswith("5.00 ± 0.00")
    assert lines[at + 4].endswith("3.67 ± 0.83")  # overall: per-turn means 4, 3.33, 3.67
    assert "warm: 1 rated" in lines and any(line.endswith("5.00 (n=1, no CI)") for line in lines)
    assert "bad rows skipped: 2" in lines


def test_the_ratings_cli_reports_bad_rows_and_refuses_what_is_no_sheet(tmp_path: Path) -> None:
    sheet = _sheet(tmp_path / "filled.csv", [r("1", "", "ab/x", "5", "5", "4"), r("2", "", "ab/x", "0", "1", "1")])

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bot", "eval", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)

    done = run("ratings", str(sheet))
    assert done.returncode == 0, done.stderr
    assert "ab/x: 1 rated" in done.stdout and "row 3: accuracy '0' is not a whole number 1-5" in done.stdout
    (tmp_path / "other.csv").write_text("query,response\na,b\n", encoding="utf-8")
    for target, message in ((tmp_path / "other.csv", "missing column(s) adapter, arm, accuracy"),
                            (tmp_path / "missing.csv", "cannot read")):
        done = run("ratings", str(target))
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    done = run("sample", "--n", "0")
    assert done.returncode == 2 and "positive whole number" in done.stderr
    done = run()  # neither a verb nor the model evaluation's --base
    assert done.returncode == 2 and "--base is required" in done.stderr and "Traceback" not in done.stderr


def test_sheet_csv_round_trips_through_the_reader(tmp_path: Path) -> None:
    rows = [SheetRow("1", "", "t/a", "faq", '带,逗号和"引号"', "多行\n回答")]
    path = tmp_path / "s.csv"
    path.write_text(sheet_csv(rows).replace(",,,,\r\n", ",4,4,5,好\r\n"), encoding="utf-8-sig")
    assert read_ratings(path).scores == {"t/a": [(4, 4, 5)]}


async def test_an_empty_archive_is_one_clear_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "bot", "eval", "sample", "--out", str(tmp_path / "s")], cwd=ROOT,
        capture_output=True, text=True, timeout=120, env={**os.environ, "BOT__ARCHIVE__URL": url})
    assert done.returncode == 2 and "no answered message turns" in done.stderr and "Traceback" not in done.stderr
