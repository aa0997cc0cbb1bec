"""What the customer is doing with their words: asking to act, or asking about something.

The intent says what a message is *about* (refunds, a person, a complaint); the
speech act says whether the customer *wants it done now* (``request``: 我要退款,
帮我退了, 有人工吗, 转人工), *asks about it* (``question``: 退款多久到账, 退货运费谁出,
人工客服几点上班, 投诉电话多少) or neither (``other``: 好的, YD2405120001, 东西坏了,
a greeting or a complaint about how things went). The dialogue starts a flow for a
request and answers a question from the FAQ (bot/dialogue/manager.py).

Two layers, both kept as data in ``config/speech_acts.yaml`` so deployers can read
and change them (held-out accuracy: ``python -m bot speech-act-eval``):

1. ``rules``: a few ordered regular expressions that decide outright, for the
   conflicts a classifier would get wrong half the time: 我想问下退款多久到账 is a
   question although it starts with 我想; 能帮我退款吗 is a request although it ends
   with 吗; 有没有人工 is a request although 有没有 is a question word.
2. a classifier for everything else: character n-gram TF-IDF plus the ``cues``
   (question words and particles 吗/呢/多久/怎么/哪/谁/是否/能不能, request markers
   我要/我想/帮我/给我/申请/麻烦/要求) as extra features, with logistic regression
   trained at start on the labelled ``examples``. The cues make it generalise to
   phrasings nobody wrote down; the n-grams learn the rest (退了吧, 人工服务时间).

Every result names what decided it (``source`` and the rule or the cues seen), so a
surprising route can be explained from the logs.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import sklearn
import yaml
from scipy.sparse import csr_matrix, hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion
from threadpoolctl import threadpool_limits

from bot.config import ConfigError
from bot.text import normalize

ACTS = ("request", "question", "other")
MIN_EXAMPLES = 100  # per act: fewer and the classifier leans on whatever words the few examples share
_CUE_WEIGHT = 1.5  # a cue counts about as much as a strong n-gram


class SpeechActConfigError(ConfigError):
    """The speech-act file is missing, malformed or too thin to train on."""


@dataclass(frozen=True, slots=True)
class SpeechAct:
    act: str  # request | question | other
    confidence: float
    source: str  # rule | model | forced (a quick reply the bot offered) | none
    why: str = ""  # the rule that decided, or the cues the classifier saw

    @property
    def is_request(self) -> bool:
        return self.act == "request"

    @property
    def is_question(self) -> bool:
        return self.act == "question"


NONE = SpeechAct("other", 0.0, "none")


@dataclass(frozen=True, slots=True)
class SpeechActEval:
    total: int
    correct: int
    model_correct: int  # the classifier alone, without the rules
    per_act: Mapping[str, tuple[int, int]]
    misses: tuple[tuple[str, str, str, str], ...]  # text, expected, got, why

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def model_accuracy(self) -> float:
        return self.model_correct / self.total if self.total else 0.0


class SpeechActClassifier:
    def __init__(
        self,
        examples: Mapping[str, Sequence[str]],
        *,
        rules: Sequence[tuple[str, re.Pattern[str]]] = (),
        cues: Mapping[str, Sequence[re.Pattern[str]]] = MappingProxyType({}),
    ) -> None:
        for act in ACTS:
            if len(examples.get(act) or ()) < 2:
                raise SpeechActConfigError(f"speech acts: the classifier needs examples of {act!r}")
        self.rules = tuple(rules)
        self.cues = tuple((name, tuple(patterns)) for name, patterns in cues.items())
        texts = [t for act in ACTS for t in examples[act]]
        labels = [act for act in ACTS for _ in examples[act]]
        self.examples = frozenset(normalize(t) for t in texts)
        self._vectorizer = FeatureUnion([
            ("wb", TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True)),
            ("ch", TfidfVectorizer(analyzer="char", ngram_range=(2, 3), sublinear_tf=True)),
        ])
        forms = [_form(t) for t in texts]
        matrix = hstack([self._vectorizer.fit_transform(forms), self._cue_matrix(forms)]).tocsr()
        self._model = LogisticRegression(C=10.0, max_iter=2000)
        with threadpool_limits(limits=1):  # a tiny problem: more BLAS threads only spin on a busy host
            self._model.fit(matrix, labels)
        self._classes = tuple(str(c) for c in self._model.classes_)
        # A cache per instance: functools.lru_cache on the method would be the class's and keep every instance
        # ever built alive (each Services builds one; the FAQ's own jieba dictionary is ~65 MB). Customers
        # repeat themselves, and one turn may look the same text up twice.
        self.classify: Callable[[str], tuple[tuple[str, float], ...]] = functools.lru_cache(maxsize=4096)(
            self._classify)

    @classmethod
    def load(cls, path: str | Path) -> SpeechActClassifier:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise SpeechActConfigError(f"cannot read speech-act file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise SpeechActConfigError(f"speech-act file {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise SpeechActConfigError(f"{path}: expected a mapping with 'rules', 'cues' and 'examples'")
        unknown = set(data) - {"rules", "cues", "examples"}
        if unknown:
            raise SpeechActConfigError(f"{path}: unknown key(s) {sorted(unknown)}")
        rules: list[tuple[str, re.Pattern[str]]] = []
        for i, rule in enumerate(data.get("rules") or ()):
            if not isinstance(rule, dict) or rule.get("act") not in ACTS or not rule.get("pattern"):
                raise SpeechActConfigError(f"{path}: rule #{i + 1} needs 'act' ({'/'.join(ACTS)}) and 'pattern'")
            rules.append((str(rule["act"]), _regex(path, f"rule #{i + 1}", rule["pattern"])))
        cues = {
            str(name): tuple(_regex(path, f"cue {name!r}", p) for p in patterns or ())
            for name, patterns in (data.get("cues") or {}).items()
        }
        raw = data.get("examples") or {}
        if not isinstance(raw, dict) or set(raw) - set(ACTS):
            raise SpeechActConfigError(f"{path}: 'examples' must map {list(ACTS)} to lists of messages")
        examples = {act: [str(t).strip() for t in raw.get(act) or () if str(t).strip()] for act in ACTS}
        for act, texts in examples.items():
            if len(texts) < MIN_EXAMPLES:
                raise SpeechActConfigError(f"{path}: {act!r} has {len(texts)} examples; at least {MIN_EXAMPLES}")
        return cls(examples, rules=rules, cues=cues)

    # ------------------------------------------------------------------ deciding
    def rule(self, text: str) -> tuple[str, str] | None:
        """The act of the first rule that matches, and the rule, or None."""
        norm = _form(text)
        for act, pattern in self.rules:
            if pattern.search(norm):
                return act, pattern.pattern
        return None

    def _classify(self, text: str) -> tuple[tuple[str, float], ...]:
        """Classifier probabilities, best first."""
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            form = _form(text)
            row = hstack([self._vectorizer.transform([form]), self._cue_matrix([form])]).tocsr()
            probs = self._model.predict_proba(row)[0]
        order = np.argsort(-probs)
        return tuple((self._classes[i], float(probs[i])) for i in order)

    def recognize(self, text: str) -> SpeechAct:
        if not normalize(text):
            return NONE
        ruled = self.rule(text)
        if ruled is not None:
            return SpeechAct(ruled[0], 1.0, "rule", ruled[1])
        act, prob = self.classify(text)[0]
        return SpeechAct(act, prob, "model", ",".join(self.cues_in(text)))

    def cues_in(self, text: str) -> list[str]:
        form = _form(text)
        return [name for name, patterns in self.cues if any(p.search(form) for p in patterns)]

    def _cue_matrix(self, forms: Sequence[str]) -> csr_matrix:
        """One column per cue; ``forms`` are already :func:`_form` ed."""
        rows = [[_CUE_WEIGHT if any(p.search(f) for p in patterns) else 0.0 for _, patterns in self.cues]
                for f in forms]
        return csr_matrix(np.asarray(rows, dtype=float).reshape(len(forms), len(self.cues)))

    def evaluate(self, cases: Sequence[tuple[str, str]]) -> SpeechActEval:
        correct = model_correct = 0
        per: dict[str, list[int]] = {}
        misses: list[tuple[str, str, str, str]] = []
        for text, expect in cases:
            got = self.recognize(text)
            ok = got.act == expect
            correct += ok
            model_correct += self.classify(text)[0][0] == expect
            tally = per.setdefault(expect, [0, 0])
            tally[0] += ok
            tally[1] += 1
            if not ok:
                misses.append((text, expect, got.act, f"{got.source}: {got.why}"))
        return SpeechActEval(len(cases), correct, model_correct,
                             MappingProxyType({k: (v[0], v[1]) for k, v in per.items()}), tuple(misses))


def _form(text: str) -> str:
    """The normalized message, with a question mark kept as a trailing " ?" (normalize drops punctuation,
    but 退款多久到账？ and "refund?" say something the words alone may not)."""
    folded = unicodedata.normalize("NFKC", text)
    return normalize(folded) + (" ?" if "?" in folded else "")


def _regex(path: str | Path, where: str, raw: object) -> re.Pattern[str]:
    try:
        return re.compile(str(raw))
    except re.error as exc:
        raise SpeechActConfigError(f"{path}: {where}: {raw!r} is not a valid regular expression: {exc}") from None


def load_eval_cases(path: str | Path) -> list[tuple[str, str]]:
    """Held-out ``(text, act)`` pairs from a ``cases: {act: [texts]}`` file."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return [(str(t), str(act)) for act, texts in (data.get("cases") or {}).items() for t in texts or ()]


def report(clf: SpeechActClassifier, result: SpeechActEval) -> list[str]:
    """What ``python -m bot speech-act-eval`` prints."""
    lines = [
        f"speech acts: {len(clf.examples)} training examples; held-out cases: {result.total}",
        f"held-out accuracy (rules + classifier): {result.accuracy:.1%} ({result.correct}/{result.total})",
        f"held-out accuracy (classifier alone):   {result.model_accuracy:.1%} ({result.model_correct}/{result.total})",
    ]
    lines += [f"  {act:<9} {ok}/{total}" for act, (ok, total) in sorted(result.per_act.items())]
    lines += [f"  miss: {text!r} expected {expect} got {got} ({why})" for text, expect, got, why in result.misses]
    return lines
