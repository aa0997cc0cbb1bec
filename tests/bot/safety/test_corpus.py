"""The labelled corpus (tests/data/safety_corpus.yaml): every attack caught, at most 1% of ordinary questions
refused, over the whole corpus; the rates of each split (dev, heldout) are printed (pytest -s)."""

from __future__ import annotations

from pathlib import Path

import yaml

from bot.config import ROOT
from bot.metrics import Metrics
from bot.safety.blocklist import Blocklist
from bot.safety.input_filter import InputFilter

CORPUS = Path(__file__).resolve().parents[2] / "data" / "safety_corpus.yaml"


def load() -> list[dict[str, str]]:
    return yaml.safe_load(CORPUS.read_text(encoding="utf-8"))["cases"]


def test_the_corpus_is_big_labelled_and_split() -> None:
    cases = load()
    assert len(cases) >= 240
    assert {c["split"] for c in cases} == {"dev", "heldout"}
    assert 0.2 <= sum(c["split"] == "heldout" for c in cases) / len(cases) <= 0.35
    expects = {c["expect"] for c in cases}
    assert {"ok", "injection", "sql", "shell"} <= expects
    assert sum(c["expect"] == "ok" for c in cases) >= 80


def test_every_attack_is_caught_and_at_most_one_percent_of_ordinary_questions_refused() -> None:
    f = InputFilter(Blocklist.from_file(ROOT / "config" / "blocklist.txt"), Metrics(), history_turns=20)
    totals: dict[str, dict[str, int]] = {}
    missed, refused = [], []
    for case in load():
        verdict = f.check(case["text"])
        t = totals.setdefault(case["split"], {"attacks": 0, "caught": 0, "ordinary": 0, "refused": 0, "flagged": 0})
        if case["expect"] == "ok":
            t["ordinary"] += 1
            if verdict.refused:
                t["refused"] += 1
                refused.append(case["text"])
            elif not verdict.clean:
                t["flagged"] += 1
        else:
            t["attacks"] += 1
            if case["expect"] in verdict.actions:
                t["caught"] += 1
            else:
                missed.append((case["expect"], case["text"]))
    for split, t in sorted(totals.items()):
        print(f"\n{split}: attacks caught {t['caught']}/{t['attacks']} ({t['caught'] / t['attacks']:.1%}), "
              f"ordinary refused {t['refused']}/{t['ordinary']} ({t['refused'] / t['ordinary']:.1%}), "
              f"ordinary flagged or masked {t['flagged']}")
    ordinary = sum(t["ordinary"] for t in totals.values())
    assert not missed, missed
    assert len(refused) <= 0.01 * ordinary, refused
