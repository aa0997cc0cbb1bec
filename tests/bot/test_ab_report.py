"""``python -m bot ab-report``: archived turns with known votes give the rates, intervals, z-test p-value
(the same as statsmodels'), P(B beats A) and sample-size warnings they should; the last vote on a turn counts
and a vote taken back leaves it unrated; --test and --since select."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from statsmodels.stats.proportion import proportion_confint, proportions_ztest

from bot.__main__ import main
from bot.ab.report import PEEKING, lines, prob_beats, report
from bot.archive.db import ArchiveDb, database_url
from bot.archive.schema import feedback, turns
from bot.config import ROOT
from engine.config import AbArm, AbTest

TEST = AbTest(name="lora-v2", arms=[AbArm(name="base", weight=1), AbArm(name="v2", adapter="zh_v2", weight=1)])
DAY = dt.datetime(2025, 3, 1, 12, tzinfo=dt.UTC)
_ids = itertools.count()


@pytest.fixture
def db(tmp_path: Path) -> Any:
    archive = ArchiveDb.open(database_url(f"sqlite:///{tmp_path}/archive.db", ROOT))
    yield archive
    archive.close()


def add_arm(db: ArchiveDb, arm: str, *, up: int, down: int, unrated: int = 0, fallbacks: int = 0,
            at: dt.datetime = DAY) -> None:
    """Turns of one arm: ``up`` rated up, ``down`` rated down, ``unrated`` without a vote."""
    turn_rows, votes = [], []
    for k, rating in enumerate(["up"] * up + ["down"] * down + [None] * unrated):
        n = next(_ids)
        source = "fallback" if k < fallbacks else "llm"
        turn_rows.append({"created_at": at, "channel": "web", "tenant": "", "conversation": f"web::c{n}",
                          "event_id": f"e{n}", "kind": "message", "replies": 1, "source": source,
                          "outcome": "ok", "arm": arm})
        if rating is not None:
            votes.append({"created_at": at + dt.timedelta(minutes=1), "channel": "web", "tenant": "",
                          "conversation": f"web::c{n}", "event_id": f"v{n}", "rated_event_id": f"e{n}",
                          "rating": rating})
    db.insert(turns, turn_rows)
    db.insert(feedback, votes)


def test_rates_intervals_and_the_z_test_match_statsmodels(db: ArchiveDb) -> None:
    add_arm(db, "lora-v2/base", up=120, down=80, unrated=50, fallbacks=10)
    add_arm(db, "lora-v2/v2", up=150, down=50, unrated=20)
    add_arm(db, "other/x", up=5, down=5)  # another test: its own report
    (rep,) = report(db, [TEST], test="lora-v2")
    base, v2 = rep.arms
    assert (base.name, base.turns, base.rated, base.up, base.fallbacks) == ("base", 250, 200, 120, 10)
    assert (v2.name, v2.turns, v2.rated, v2.up, v2.fallbacks) == ("v2", 220, 200, 150, 0)
    assert base.rate == pytest.approx(0.6) and v2.rate == pytest.approx(0.75)
    assert base.interval() == pytest.approx(proportion_confint(120, 200, alpha=0.05, method="wilson"))
    (c,) = rep.comparisons
    z, p = proportions_ztest([150, 120], [200, 200])
    assert c.z == pytest.approx(z) and c.p_value == pytest.approx(p) and c.p_value < 0.01
    assert c.difference == pytest.approx(0.15)
    assert 0.99 < c.p_better <= 1.0
    assert c.warnings == ()  # 200 a side detect 15 points at about 90 % power
    text = "\n".join(lines([rep]))
    assert "v2 vs base: +15.0 points" in text and f"p = {p:.4f}" in text and PEEKING in text
    assert "WARNING" not in text
    assert {r.test for r in report(db, [TEST])} == {"lora-v2", "other"}


def test_p_beats_is_exact_and_agrees_with_monte_carlo() -> None:
    rng = np.random.default_rng(7)
    for up_b, down_b, up_a, down_a in [(30, 20, 25, 25), (3, 1, 1, 3), (0, 4, 2, 2), (400, 600, 410, 590)]:
        draws_b = rng.beta(1 + up_b, 1 + down_b, 200_000)
        draws_a = rng.beta(1 + up_a, 1 + down_a, 200_000)
        assert prob_beats(up_b, down_b, up_a, down_a) == pytest.approx(float((draws_b > draws_a).mean()), abs=0.005)
    assert prob_beats(10, 10, 10, 10) == pytest.approx(0.5, abs=1e-9)
    assert prob_beats(10, 5, 5, 10) + prob_beats(5, 10, 10, 5) == pytest.approx(1.0)


def test_a_small_sample_is_warned_about_and_a_large_one_with_a_real_effect_is_not(db: ArchiveDb) -> None:
    add_arm(db, "lora-v2/base", up=6, down=4)
    add_arm(db, "lora-v2/v2", up=9, down=1)
    (small,) = report(db, [TEST], test="lora-v2")
    (c,) = small.comparisons
    assert c.power < 0.8 and c.needed_per_arm is not None and c.needed_per_arm > 10
    text = "\n".join(lines([small]))
    assert "WARNING: sample too small for the difference it shows: 10 + 10 rated turns give" in text
    assert f"about {c.needed_per_arm} rated turns per arm" in text
    assert "normal approximation is rough" in text  # one down in v2

    add_arm(db, "big/base", up=1200, down=800)
    add_arm(db, "big/v2", up=1400, down=600)
    (large,) = report(db, [], test="big")
    (c,) = large.comparisons
    assert c.power > 0.99 and c.warnings == () and c.p_value < 1e-6
    assert "not in engine.ab_tests" in large.notes[0]  # control: the first arm by name (base)


def test_the_last_vote_counts_and_a_vote_taken_back_leaves_the_turn_unrated(db: ArchiveDb) -> None:
    add_arm(db, "lora-v2/base", up=0, down=0, unrated=3)
    later = DAY + dt.timedelta(hours=1)
    ids = [r["event_id"] for r in db.rows(turns)]
    db.insert(feedback, [
        {"created_at": later + dt.timedelta(minutes=k), "channel": "web", "tenant": "", "conversation": "c",
         "event_id": f"x{k}", "rated_event_id": rated, "rating": rating}
        for k, (rated, rating) in enumerate([(ids[0], "down"), (ids[0], "up"), (ids[1], "up"), (ids[1], "none")])
    ])
    (rep,) = report(db, [TEST], test="lora-v2")
    base, v2 = rep.arms
    assert (base.turns, base.rated, base.up) == (3, 1, 1)
    assert v2.turns == 0 and rep.comparisons == []
    assert any("no rated turns" in note for note in rep.notes)


def test_the_command_reads_the_configured_archive(db: ArchiveDb, tmp_path: Path, capsys: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    add_arm(db, "lora-v2/base", up=10, down=10, at=DAY - dt.timedelta(days=10))  # before --since
    add_arm(db, "lora-v2/base", up=30, down=20)
    add_arm(db, "lora-v2/v2", up=35, down=15)
    monkeypatch.setenv("BOT__ARCHIVE__URL", f"sqlite:///{tmp_path}/archive.db")
    monkeypatch.setenv("BOT__ENGINE__ADAPTERS", "{zh_v2: x}")
    monkeypatch.setenv("BOT__ENGINE__AB_TESTS", json.dumps([TEST.model_dump()]))
    assert main(["ab-report", "--test", "lora-v2", "--since", "2025-03-01"]) == 0
    out = capsys.readouterr().out
    assert "== A/B test lora-v2: control base" in out
    assert "base                  50        0     50     30    60.0%" in out
    assert "P(v2 beats base) =" in out and "WARNING: sample too small" in out and PEEKING in out
    assert main(["ab-report", "--test", "nothing-here"]) == 0
    assert "no archived turns for this test" in capsys.readouterr().out
