"""Sentiment: Chinese-first lexicon with negation and intensity."""

from __future__ import annotations

import pytest

from bot.dialogue.sentiment import analyze


@pytest.mark.parametrize(
    "text", ["你们这什么破服务，气死我了", "垃圾客服", "骗子！退钱！", "this is ridiculous", "WTF is this"]
)
def test_hostile_messages_are_angry(text: str) -> None:
    assert analyze(text).angry


@pytest.mark.parametrize(
    "text", ["不满意", "非常失望", "发货太慢了", "这个真的很差劲", "I am not happy", "terrible service"]
)
def test_complaints_are_negative_but_not_angry(text: str) -> None:
    result = analyze(text)
    assert result.label == "negative", result


@pytest.mark.parametrize("text", ["谢谢，很满意", "客服很专业，给好评", "不错", "thanks, that was helpful"])
def test_thanks_are_positive(text: str) -> None:
    assert analyze(text).label == "positive"


@pytest.mark.parametrize(
    "text", ["怎么操作退差价", "包裹破损了怎么办", "你好", "我要退款", "YD2405120001", "不好意思打扰了"]
)
def test_ordinary_requests_are_neutral(text: str) -> None:
    assert analyze(text).label == "neutral"


def test_negation_flips_and_damps() -> None:
    assert analyze("满意").score > 0 > analyze("不是很满意").score
    assert analyze("不是很满意").terms == ("not:满意",)
    assert analyze("not good").label == "negative"
    assert 0 < analyze("不差").score < abs(analyze("差").score)


def test_intensity_and_exclamations_add_weight() -> None:
    assert analyze("非常失望").score < analyze("失望").score
    assert analyze("太慢了！！！").score < analyze("太慢了").score
    assert analyze("这也太差了").score < analyze("差").score
    assert analyze("非常的失望").score < analyze("失望").score  # reach spans a particle


def test_strong_negativity_without_swearing_reads_as_anger() -> None:
    assert analyze("太失望了，太过分了，太差劲了！！").angry
