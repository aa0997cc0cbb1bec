"""Intent recognition: held-out accuracy, the rule layer, confidence, and the
intent-eval command."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bot.config import ROOT
from bot.dialogue.intent import MIN_EXAMPLES, IntentConfigError, IntentRecognizer, load_eval_cases

REQUIRED = {"greeting", "account", "billing", "order", "refund", "tech_fault", "complaint", "human", "goodbye",
            "other"}


@pytest.fixture(scope="module")
def recognizer() -> IntentRecognizer:
    return IntentRecognizer.load(ROOT / "config" / "intents.yaml")


def test_the_required_intents_ship_with_enough_examples(recognizer: IntentRecognizer) -> None:
    assert recognizer.names == REQUIRED
    assert all(len(s.examples) >= 15 for s in recognizer.specs)


def test_held_out_cases_are_not_training_examples(recognizer: IntentRecognizer) -> None:
    training = {ex for s in recognizer.specs for ex in s.examples}
    cases = load_eval_cases(ROOT / "config" / "intents_eval.yaml")
    assert len(cases) >= 80 and not training & {text for text, _ in cases}
    assert {name for _, name in cases} == REQUIRED


def test_held_out_accuracy_is_at_least_85_percent(recognizer: IntentRecognizer) -> None:
    result = recognizer.evaluate(load_eval_cases(ROOT / "config" / "intents_eval.yaml"))
    assert result.accuracy >= 0.85, result.misses
    assert result.model_accuracy >= 0.85  # the classifier alone, not only the keyword rules


def test_the_longest_rule_wins(recognizer: IntentRecognizer) -> None:
    assert recognizer.recognize("支付密码忘了").name == "account"  # 支付密码 beats 支付
    assert recognizer.recognize("快递员态度很差还骂人").name == "complaint"  # beats 快递
    hit = recognizer.recognize("我要转人工")
    assert (hit.name, hit.source, hit.confidence) == ("human", "rule", 1.0)


def test_ascii_keywords_match_whole_words_only(recognizer: IntentRecognizer) -> None:
    assert recognizer.match_rules("my parcel is late") == "order"
    assert recognizer.match_rules("parcels") is None  # no whole word: left to the classifier


def test_a_clarifying_quick_reply_selects_its_intent(recognizer: IntentRecognizer) -> None:
    for spec in recognizer.specs:
        for label in spec.labels.values():
            assert recognizer.recognize(label).name == spec.name, label


def test_nonsense_is_not_confident(recognizer: IntentRecognizer) -> None:
    for text in ("12345", "嗯", "还是不行", "那个"):
        result = recognizer.recognize(text)
        assert result.source == "model" and not result.confident(0.45), (text, result)
    assert recognizer.recognize("   ").name is None


def test_the_classifier_generalizes_beyond_keywords(recognizer: IntentRecognizer) -> None:
    result = recognizer.recognize("能帮我把这单的钱退回来吗")
    assert result.name == "refund"
    assert recognizer.classify("页面一直转圈加载不出来")[0][0] == "tech_fault"


def test_too_few_examples_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "intents.yaml"
    path.write_text(yaml.safe_dump({"intents": [{"name": "a", "examples": ["x"] * (MIN_EXAMPLES - 1)},
                                                {"name": "b", "examples": ["y"] * MIN_EXAMPLES}]}))
    with pytest.raises(IntentConfigError, match=r"intent 'a'.*at least 15"):
        IntentRecognizer.load(path)


def test_the_intent_eval_command_prints_the_accuracy() -> None:
    proc = subprocess.run([sys.executable, "-m", "bot", "intent-eval"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    accuracy = re.search(r"held-out accuracy \(rules \+ classifier\): ([\d.]+)%", proc.stdout)
    assert accuracy is not None and float(accuracy.group(1)) >= 85
