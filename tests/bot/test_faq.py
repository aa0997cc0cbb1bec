"""FAQ retrieval on the shipped FAQ: the entries, the easy held-out paraphrases, and the hard dev set of how
customers really write (config/faq_eval_hard.yaml), and the held-out hard set (faq_eval_holdout.yaml, written
by another hand and measured once, after the retriever was done: its test only guards against losing ground;
never tune the retriever, synonyms or thresholds on its misses)."""

from collections import Counter

import pytest
import yaml

from bot.config import ROOT, DialogueConfig, FaqConfig
from bot.faq import FaqIndex, load_eval_cases
from bot.text import normalize

FAQ = ROOT / "config" / "faq.yaml"
EVAL = ROOT / "config" / "faq_eval.yaml"
HARD = ROOT / "config" / "faq_eval_hard.yaml"
HOLDOUT = ROOT / "config" / "faq_eval_holdout.yaml"
FRESH = ROOT / "config" / "faq_eval_fresh.yaml"


@pytest.fixture(scope="module")
def index() -> FaqIndex:
    return FaqIndex.from_config(FaqConfig(), lambda p: ROOT / p)


def test_ships_enough_realistic_entries(index: FaqIndex) -> None:
    assert len(index.entries) >= 80
    cats = Counter(e.category for e in index.entries)
    for cat in ("account", "billing", "order", "refund", "tech", "membership", "privacy", "human"):
        assert cats[cat] >= 3, cat
    assert sum(e.lang == "en" for e in index.entries) >= 3
    assert all(len(e.paraphrases) >= 3 for e in index.entries)
    assert len({e.id for e in index.entries}) == len(index.entries)


@pytest.mark.parametrize("path", [EVAL, HARD, HOLDOUT, FRESH])
def test_eval_sets_are_held_out(path) -> None:
    entries = yaml.safe_load(FAQ.read_text())["entries"]
    indexed = {normalize(t) for e in entries for t in (e["question"], *e["paraphrases"])}
    cases = load_eval_cases(path)
    assert cases and all(normalize(c.query) not in indexed for c in cases)
    ids = {e["id"] for e in entries}
    assert all(c.expect in ids for c in cases if c.expect is not None)


def test_easy_paraphrases_stay_above_95_percent(index: FaqIndex) -> None:
    result = index.evaluate(load_eval_cases(EVAL))
    assert result.total >= 80
    assert result.accuracy >= 0.95, result.misses
    assert result.top3_accuracy >= 0.98
    assert result.refusal_rate >= 0.9, result.accepted


def test_hard_dev_set_as_measured(index: FaqIndex) -> None:
    """Where the lexical retriever stands on the dev set (85.1% top-1, 98.5% top-3, 97.5% refused since the FAQ
    got 16-20 paraphrases an entry, written without the evaluation sets; 75.7%, 95.5%, 90% before): a change
    that loses ground fails here."""
    result = index.evaluate(load_eval_cases(HARD))
    assert result.total >= 250 and result.unknown_total >= 30
    assert result.accuracy >= 0.83, result.confusions
    assert result.top3_accuracy >= 0.97
    assert result.refusal_rate >= 0.95, result.accepted
    assert set(result.per_style) >= {"colloquial", "typo", "pinyin", "long", "emotional", "mixed", "confusable"}


def test_held_out_hard_set_as_measured(index: FaqIndex) -> None:
    """Measured when the retriever was finished (67.6% top-1, 94.3% top-3, 80% refused; the retriever before it:
    50.6%, 90.9%, 76.7%) and once after the FAQ's paraphrases were densified (79.0%, 97.2%, 83.3%). A guard,
    not a target: the gap to the dev set is the honest figure. Figures only: never look at its misses."""
    result = index.evaluate(load_eval_cases(HOLDOUT))
    assert result.total >= 170 and result.unknown_total >= 30
    assert result.accuracy >= 0.77
    assert result.top3_accuracy >= 0.95
    assert result.refusal_rate >= 0.80


def test_fresh_held_out_set_as_measured(index: FaqIndex) -> None:
    """The second held-out set (written blind from the answers only): 70.6% top-1, 92.5% top-3, 84.3% refused
    before the densified paraphrases, 78.3%, 97.5%, 85.7% after. A guard: figures only, never its misses."""
    result = index.evaluate(load_eval_cases(FRESH))
    assert result.total >= 350 and result.unknown_total >= 60
    assert result.accuracy >= 0.76
    assert result.top3_accuracy >= 0.95
    assert result.refusal_rate >= 0.82


@pytest.mark.xfail(strict=True, reason="issue 14 target: 95% top-1 on the dev set; the lexical retriever is at ~85%")
def test_hard_dev_set_target(index: FaqIndex) -> None:
    assert index.evaluate(load_eval_cases(HARD)).accuracy >= 0.95


def test_every_entry_question_is_its_own_confident_near_exact_hit(index: FaqIndex) -> None:
    """A 猜你想问 suggestion, tapped, sends the entry's question back: it must answer that entry, and strongly
    enough (dialogue.faq_strong) to win over an intent route. Every paraphrase too."""
    strong = DialogueConfig().faq_strong
    for entry in index.entries:
        for phrasing in (entry.question, *entry.paraphrases):
            hits = index.search(phrasing, k=3)
            assert index.confident(hits) and hits[0].entry.id == entry.id, (phrasing, hits[:2])
            assert hits[0].score >= strong, (phrasing, hits[0].score)


def test_answers_the_design_example(index: FaqIndex) -> None:
    hit = index.best("如何重置密码?")
    assert hit is not None and "忘记密码" in hit.entry.answer


def test_low_confidence_says_it_does_not_know(index: FaqIndex) -> None:
    assert index.best("附近哪家火锅店好吃") is None
    assert index.best("股票明天会涨吗") is None
    assert index.best("   ") is None
    assert index.search("？？？") == []


def test_scores_stay_between_zero_and_one(index: FaqIndex) -> None:
    for query in ("退款", "如何重置密码", "你好你好你好 退款退款退款 多久多久", "tuikuan", "x" * 500):
        assert all(0.0 <= h.score <= 1.0 for h in index.search(query, k=10))


def test_english_questions_find_english_entries(index: FaqIndex) -> None:
    hit = index.best("I forgot my password, how can I reset it?")
    assert hit is not None and hit.entry.lang == "en"
    hit = index.best("where is my parcel, I want to track it")
    assert hit is not None and hit.entry.id == "en-where-is-my-order"
