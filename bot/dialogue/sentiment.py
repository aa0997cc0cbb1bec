"""Sentiment of a customer message, Chinese first: a lexicon with negation and
intensity, so an angry customer is noticed before they give up.

A lexicon, not a model, because it is transparent (the flagged terms are
logged with the turn), needs no training data and handles the phrases that
matter in customer service. The text is scanned left to right taking the
longest lexicon term at each position, so 不满 is one negative word while
不 + 满意 is a negated positive. A negator (不, 没, not ...) within the next
three terms flips and damps a sentiment word; an intensifier (太, 非常, so ...)
multiplies it; repeated ! or ? and shouting in capitals add weight.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# term -> weight; negative weights are complaints, the anger set marks hostility.
_NEGATIVE_ZH = {
    "差": -1.0, "太差": -2.0, "很差": -2.0, "差劲": -2.0, "烂": -1.5, "糟糕": -1.5, "失望": -1.5, "不满": -1.5,
    "生气": -2.0, "愤怒": -3.0, "气死": -3.0, "火大": -2.5, "恼火": -2.0, "恶心": -2.5, "无语": -1.5,
    "离谱": -2.0, "过分": -2.0, "坑": -1.5, "坑人": -2.5, "忽悠": -2.0, "敷衍": -2.0, "欺骗": -2.5, "骗子": -3.0,
    "骗钱": -3.0, "黑店": -3.0, "垃圾": -3.0, "破": -1.0, "差评": -2.0, "投诉": -1.0, "慢": -0.5, "太慢": -1.5,
    "麻烦死": -2.0, "受够": -3.0, "忍无可忍": -3.5, "岂有此理": -3.0, "凭什么": -2.0, "搞什么": -2.0,
    "什么玩意": -3.0, "耍我": -3.0, "没人管": -2.0, "没人理": -2.0, "没人回": -1.5, "滚": -3.0, "傻": -2.5,
    "白痴": -3.0, "智障": -3.0, "有病": -3.0, "混蛋": -3.5, "王八蛋": -3.5, "妈的": -3.0, "他妈": -3.5,
    "tmd": -3.5, "nmd": -3.5, "cnm": -4.0, "操": -3.0, "靠": -1.5, "着急": -1.0, "急死": -2.5,
    "难用": -1.5, "不靠谱": -2.0, "烦": -1.0, "烦死": -2.5, "退钱": -2.0, "赔钱": -2.0, "曝光": -2.5,
    "报警": -2.5, "起诉": -2.5,
}
_ANGER_ZH = {
    "生气", "愤怒", "气死", "火大", "恼火", "骗子", "骗钱", "黑店", "垃圾", "受够", "忍无可忍", "岂有此理",
    "凭什么", "搞什么", "什么玩意", "耍我", "滚", "傻", "白痴", "智障", "有病", "混蛋", "王八蛋", "妈的", "他妈",
    "tmd", "nmd", "cnm", "操", "急死", "烦死", "曝光", "报警", "起诉",
}
# Everyday words that contain a lexicon character but carry no feeling (操作, 差价, 破损 ...).
_NEUTRAL_ZH = (
    "操作", "操心", "体操", "差价", "差额", "差不多", "差异", "出差", "误差", "时差", "相差", "滚动", "滚筒",
    "破损", "破了", "打破", "靠近", "依靠", "好像", "好多", "好几", "正好", "最好", "最近", "最后", "最新",
    "真实", "真人", "真假", "认真", "太阳", "不好意思",
)
_POSITIVE_ZH = {
    "谢谢": 1.0, "感谢": 1.5, "多谢": 1.0, "满意": 1.5, "好评": 2.0, "不错": 1.5, "很好": 1.5, "棒": 1.5,
    "赞": 1.5, "给力": 1.5, "贴心": 1.5, "专业": 1.0, "耐心": 1.0, "解决了": 1.5, "喜欢": 1.0, "开心": 1.5,
    "好的": 0.5, "辛苦": 0.5, "没问题": 0.5, "满分": 2.0, "靠谱": 1.5, "可靠": 1.0, "好用": 1.5,
}
_NEGATORS_ZH = ("不", "没", "没有", "别", "并不", "不是", "毫不", "从不", "从没", "未", "无法", "不太", "不怎么")
_INTENSIFIERS_ZH = {
    "太": 1.6, "非常": 1.6, "特别": 1.6, "极其": 2.0, "超级": 1.8, "真的": 1.4, "真": 1.3, "十分": 1.5,
    "很": 1.3, "巨": 1.8, "贼": 1.6, "简直": 1.8, "实在": 1.5, "完全": 1.5, "一直": 1.3, "越来越": 1.5,
    "最": 1.5,
}

_NEGATIVE_EN = {
    "bad": -1.0, "terrible": -2.0, "awful": -2.0, "horrible": -2.0, "worst": -2.5, "poor": -1.0,
    "disappointed": -1.5, "disappointing": -1.5, "unhappy": -1.5, "annoying": -1.5, "annoyed": -1.5,
    "rude": -2.0, "useless": -2.0, "slow": -0.5, "unacceptable": -2.5, "ridiculous": -2.5, "angry": -2.5,
    "furious": -3.0, "scam": -3.0, "fraud": -3.0, "liar": -3.0, "liars": -3.0, "hate": -2.5, "stupid": -2.5,
    "idiot": -3.0, "idiots": -3.0, "wtf": -3.0, "damn": -2.0, "fuck": -4.0, "fucking": -4.0, "shit": -3.0,
    "pathetic": -3.0, "complaint": -1.0, "sucks": -2.5,
}
_ANGER_EN = {
    "angry", "furious", "scam", "fraud", "liar", "liars", "hate", "stupid", "idiot", "idiots", "wtf", "damn",
    "fuck", "fucking", "shit", "pathetic", "ridiculous", "unacceptable", "sucks",
}
_POSITIVE_EN = {
    "thanks": 1.0, "thank": 1.0, "great": 1.5, "good": 1.0, "excellent": 2.0, "helpful": 1.5, "love": 1.5,
    "perfect": 2.0, "awesome": 2.0, "nice": 1.0, "happy": 1.5, "solved": 1.5, "appreciate": 1.5,
}
_NEGATORS_EN = ("not", "no", "never", "dont", "don't", "isnt", "isn't", "wasnt", "wasn't", "nothing", "hardly")
_INTENSIFIERS_EN = {"so": 1.5, "very": 1.5, "really": 1.4, "extremely": 2.0, "totally": 1.6, "absolutely": 1.8,
                    "too": 1.4, "completely": 1.6}

_NEGATION_DAMP = 0.8  # 不满意 is milder than 很糟糕; 不差 is only faintly positive
_REACH = 3  # a negator or intensifier covers this many following characters or words
_ANGRY_SCORE = -4.0  # this negative without any hostile word still reads as anger
_ZH_TERMS: dict[str, tuple[str, float]] = {}
for _t, _w in _NEGATIVE_ZH.items():
    _ZH_TERMS[_t] = ("word", _w)
for _t, _w in _POSITIVE_ZH.items():
    _ZH_TERMS[_t] = ("word", _w)
for _t in _NEGATORS_ZH:
    _ZH_TERMS.setdefault(_t, ("neg", 0.0))
for _t, _w in _INTENSIFIERS_ZH.items():
    _ZH_TERMS.setdefault(_t, ("int", _w))
for _t in _NEUTRAL_ZH:
    _ZH_TERMS[_t] = ("other", 0.0)
_MAX_TERM = max(len(t) for t in _ZH_TERMS)
_EN_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_CAPS_WORD = re.compile(r"\b[A-Z]{3,}\b")
_REPEAT_MARK = re.compile(r"[!！?？]{2,}")


@dataclass(frozen=True, slots=True)
class Sentiment:
    label: str  # positive | neutral | negative | angry
    score: float  # sum of term weights; below 0 is negative
    terms: tuple[str, ...] = ()  # lexicon terms that counted, for logs and the admin view

    @property
    def angry(self) -> bool:
        return self.label == "angry"

    @property
    def negative(self) -> bool:
        return self.label in ("negative", "angry")


def _tokens(text: str) -> list[str]:
    """Longest-match lexicon terms (Chinese) and words (Latin), in order; any
    other character becomes "" so negation and intensity reach stay local."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i].isascii() and text[i].isalpha():
            m = _EN_WORD.match(text, i)
            assert m is not None
            out.append(m.group(0))
            i = m.end()
            continue
        for size in range(min(_MAX_TERM, len(text) - i), 0, -1):
            if text[i : i + size] in _ZH_TERMS:
                out.append(text[i : i + size])
                i += size
                break
        else:
            if not text[i].isspace():
                out.append("")
            i += 1
    return out


def _kind(token: str) -> tuple[str, float]:
    if token in _ZH_TERMS:
        return _ZH_TERMS[token]
    if token in _NEGATIVE_EN:
        return ("word", _NEGATIVE_EN[token])
    if token in _POSITIVE_EN:
        return ("word", _POSITIVE_EN[token])
    if token in _NEGATORS_EN or token.endswith("n't"):
        return ("neg", 0.0)
    if token in _INTENSIFIERS_EN:
        return ("int", _INTENSIFIERS_EN[token])
    return ("other", 0.0)


def analyze(text: str) -> Sentiment:
    """Score one message; see the module docstring for the rules."""
    shouted = len(_CAPS_WORD.findall(text))
    folded = unicodedata.normalize("NFKC", text).lower()
    score = 0.0
    hostile = False
    terms: list[str] = []
    negated = boosted = 0  # how many more tokens the last negator / intensifier covers
    boost = 1.0
    for token in _tokens(folded):
        kind, weight = _kind(token)
        if kind == "neg":
            negated = _REACH
        elif kind == "int":
            boost = boost * weight if boosted else weight
            boosted = _REACH
        elif kind == "word":
            value = weight * (boost if boosted else 1.0)
            if negated:
                value = -value * _NEGATION_DAMP
                terms.append(f"not:{token}")
            else:
                hostile = hostile or token in _ANGER_ZH or token in _ANGER_EN
                terms.append(token)
            score += value
            negated = boosted = 0
        else:
            negated = max(0, negated - 1)
            boosted = max(0, boosted - 1)
    if score < 0:
        marks = len(_REPEAT_MARK.findall(folded))
        score *= 1.0 + 0.3 * min(marks, 3) + 0.2 * min(shouted, 3)
    if hostile or score <= _ANGRY_SCORE:
        label = "angry"
    elif score <= -0.5:
        label = "negative"
    elif score >= 0.5:
        label = "positive"
    else:
        label = "neutral"
    return Sentiment(label, round(score, 3), tuple(terms))
