from collections import Counter

import pytest
import yaml

from bot.config import ROOT
from bot.faq import FaqIndex, load_eval_cases
from bot.text import normalize

FAQ = ROOT / "config" / "faq.yaml"
EVAL = ROOT / "config" / "faq_eval.yaml"


@pytest.fixture(scope="module")
def index() -> FaqIndex:
    return FaqIndex.load(FAQ, threshold=0.35)


def test_ships_enough_realistic_entries(index: FaqIndex) -> None:
    assert len(index.entries) >= 80
    cats = Counter(e.category for e in index.entries)
    for cat in ("account", "billing", "order", "refund", "tech", "membership", "privacy", "human"):
        assert cats[cat] >= 3, cat
    assert sum(e.lang == "en" for e in index.entries) >= 3
    assert all(len(e.paraphrases) >= 3 for e in index.entries)
    assert len({e.id for e in index.entries}) == len(index.entries)


def test_eval_set_is_held_out() -> None:
    entries = yaml.safe_load(FAQ.read_text())["entries"]
    indexed = {normalize(t) for e in entries for t in (e["question"], *e["paraphrases"])}
    cases = load_eval_cases(EVAL)
    assert all(normalize(c.query) not in indexed for c in cases)


def test_top1_accuracy_on_held_out_paraphrases(index: FaqIndex) -> None:
    result = index.evaluate(load_eval_cases(EVAL))
    assert result.total >= 80
    assert result.accuracy >= 0.85, result.misses
    assert result.refusal_rate >= 0.8


def test_answers_the_design_example(index: FaqIndex) -> None:
    hit = index.best("如何重置密码?")
    assert hit is not None and "忘记密码" in hit.entry.answer


def test_low_confidence_says_it_does_not_know(index: FaqIndex) -> None:
    assert index.best("附近哪家火锅店好吃") is None
    assert index.best("股票明天会涨吗") is None
    assert index.best("   ") is None
    assert index.search("？？？") == []


def test_english_questions_find_english_entries(index: FaqIndex) -> None:
    hit = index.best("I forgot my password, how can I reset it?")
    assert hit is not None and hit.entry.lang == "en"
