"""The speech-act classifier (bot/dialogue/speech_act.py): request, question or other, with the
held-out cases of config/speech_acts_eval.yaml kept out of training."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import ROOT
from bot.dialogue.speech_act import (
    ACTS,
    MIN_EXAMPLES,
    SpeechActClassifier,
    SpeechActConfigError,
    load_eval_cases,
)
from bot.text import normalize

EVAL = ROOT / "config" / "speech_acts_eval.yaml"


@pytest.fixture(scope="module")
def acts() -> SpeechActClassifier:
    return SpeechActClassifier.load(ROOT / "config" / "speech_acts.yaml")


def test_held_out_cases_are_not_training_examples(acts: SpeechActClassifier) -> None:
    cases = load_eval_cases(EVAL)
    assert {a for _, a in cases} == set(ACTS) and len(cases) >= 60
    assert not [t for t, _ in cases if normalize(t) in acts.examples]


def test_held_out_accuracy_is_at_least_90_percent(acts: SpeechActClassifier) -> None:
    result = acts.evaluate(load_eval_cases(EVAL))
    assert result.accuracy >= 0.9, result.misses
    assert result.model_accuracy >= 0.85, result.misses  # the classifier alone, for phrasings no rule covers
    assert all(ok / total >= 0.8 for ok, total in result.per_act.values()), result.per_act


@pytest.mark.parametrize(("text", "act"), [
    ("我想问下退款多久到账", "question"),  # starts like a request, asks
    ("我要退款怎么弄", "request"),  # ends like a question, wants it
    ("能帮我退款吗", "request"),
    ("有没有人工", "request"),
    ("有人工吗", "request"),
    ("周末有人工客服吗", "question"),
    ("人工客服几点上班", "question"),
    ("投诉电话多少", "question"),
    ("要是拆了包装还能退吗", "question"),
    ("这单不要了给我退掉", "request"),
    ("退了吧", "request"),
    ("请问可以帮我把这单退了吗", "request"),
    ("YD2405120001", "other"),
    ("好的谢谢", "other"),
    ("Could you cancel my order", "request"),
    ("How much does return shipping cost?", "question"),
])
def test_conflicting_cues_resolve_sensibly(acts: SpeechActClassifier, text: str, act: str) -> None:
    got = acts.recognize(text)
    assert got.act == act, got


def test_a_rule_says_why(acts: SpeechActClassifier) -> None:
    got = acts.recognize("我想问下退款多久到账")
    assert got.source == "rule" and "想问" in got.why and got.confidence == 1.0
    assert acts.recognize("").source == "none"


def test_the_classifier_sees_the_cues(acts: SpeechActClassifier) -> None:
    assert "question_particle" in acts.cues_in("退货要自己出钱吗")
    assert "request_marker" in acts.cues_in("这个麻烦处理下")
    assert "question_mark" in acts.cues_in("退款？")  # ？ survives normalisation as a cue


def test_too_few_examples_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "acts.yaml"
    path.write_text("examples:\n  request: [我要退款]\n  question: [退款多久到账]\n  other: [好的]\n", encoding="utf-8")
    with pytest.raises(SpeechActConfigError, match=f"at least {MIN_EXAMPLES}"):
        SpeechActClassifier.load(path)
    path.write_text("rules:\n  - {act: wish, pattern: x}\n", encoding="utf-8")
    with pytest.raises(SpeechActConfigError, match="rule #1"):
        SpeechActClassifier.load(path)
