"""Intent recognition: a rule layer from YAML, then a trained classifier.

Rules (keywords and regular expressions) are for what deployers must be able
to force, such as 转人工 or 投诉; the longest match wins, so a specific phrase
(支付密码) beats a generic one (支付). Everything else goes to a character
1-3 gram TF-IDF + logistic-regression classifier trained at start on the
labelled examples in ``config/intents.yaml`` (a few hundred sentences train in
well under a second). Character n-grams need no word segmentation and work for
Chinese and English alike. Its probability is the confidence; below the
threshold the dialogue asks a clarifying question instead of guessing.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
import sklearn
import yaml
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion
from threadpoolctl import threadpool_limits

from bot.config import ConfigError
from bot.text import normalize

MIN_EXAMPLES = 15


class IntentConfigError(ConfigError):
    """The intents file is missing, malformed or too thin to train on."""


@dataclass(frozen=True, slots=True)
class IntentSpec:
    name: str
    labels: Mapping[str, str]  # lang -> label shown in clarifying questions
    keywords: tuple[str, ...] = ()
    patterns: tuple[re.Pattern[str], ...] = ()
    examples: tuple[str, ...] = ()

    def label(self, lang: str) -> str:
        return self.labels.get(lang) or self.labels.get("zh") or self.name


@dataclass(frozen=True, slots=True)
class IntentResult:
    name: str | None  # None: nothing to go on (empty text)
    confidence: float
    source: str  # rule | model | none
    ranked: tuple[tuple[str, float], ...] = field(default=())  # classifier probabilities, best first

    def confident(self, threshold: float) -> bool:
        return self.name is not None and self.confidence >= threshold


@dataclass(frozen=True, slots=True)
class IntentEval:
    total: int
    correct: int
    model_correct: int  # the classifier alone, without the rule layer
    per_intent: Mapping[str, tuple[int, int]]  # name -> (correct, total)
    misses: tuple[tuple[str, str, str | None, float], ...]  # text, expected, got, confidence

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def model_accuracy(self) -> float:
        return self.model_correct / self.total if self.total else 0.0


class IntentRecognizer:
    def __init__(self, specs: Sequence[IntentSpec]) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise IntentConfigError(f"duplicate intent names in {names}")
        self.specs = tuple(specs)
        self.by_name = MappingProxyType({s.name: s for s in specs})
        self._rules = self._compile_rules(specs)
        texts = [ex for s in specs for ex in s.examples]
        labels = [s.name for s in specs for _ in s.examples]
        if len(set(labels)) < 2:
            raise IntentConfigError("the classifier needs examples for at least two intents")
        # Two character views: within word boundaries (robust for English) and
        # across them (Chinese has no spaces, so this sees whole phrases).
        self._vectorizer = FeatureUnion(
            [
                ("wb", TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), preprocessor=normalize,
                                       sublinear_tf=True)),
                ("ch", TfidfVectorizer(analyzer="char", ngram_range=(2, 4), preprocessor=normalize,
                                       sublinear_tf=True)),
            ]
        )
        matrix = self._vectorizer.fit_transform(texts)
        self._model = LogisticRegression(C=20.0, max_iter=2000)
        # One BLAS thread: a tiny problem, and on a busy host more threads only spin (20x slower).
        with threadpool_limits(limits=1):
            self._model.fit(matrix, labels)
        self._classes: tuple[str, ...] = tuple(str(c) for c in self._model.classes_)
        # A cache per instance: functools.lru_cache on the method would be the class's and keep every instance
        # ever built alive (each Services builds one; the FAQ's own jieba dictionary is ~65 MB). Customers
        # repeat themselves, and one turn may look the same text up twice.
        self.classify: Callable[[str], tuple[tuple[str, float], ...]] = functools.lru_cache(maxsize=4096)(
            self._classify)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.by_name)

    @classmethod
    def load(cls, path: str | Path, labelled: str | Path | None = None) -> IntentRecognizer:
        """``labelled``: a ``{intent: [texts]}`` file of extra examples (``python -m bot data label-import``);
        missing means none, and names no longer in ``path`` are ignored so removing an intent never stops a start."""
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise IntentConfigError(f"cannot read intents file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise IntentConfigError(f"intents file {path} is not valid YAML: {exc}") from None
        items = data.get("intents") if isinstance(data, dict) else None
        if not isinstance(items, list) or not items:
            raise IntentConfigError(f"{path}: expected a non-empty list under 'intents'")
        specs = [_parse_spec(path, i, item) for i, item in enumerate(items)]
        extra = read_labelled(labelled) if labelled is not None else {}
        return cls([s if not extra.get(s.name) else dataclasses.replace(
            s, examples=s.examples + tuple(t for t in extra[s.name] if t not in s.examples)) for s in specs])

    @staticmethod
    def _compile_rules(specs: Sequence[IntentSpec]) -> tuple[tuple[str, re.Pattern[str]], ...]:
        rules: list[tuple[str, re.Pattern[str]]] = []
        for spec in specs:
            for word in filter(None, (normalize(k) for k in spec.keywords)):
                if word.isascii():  # whole words only: "hi" must not fire inside "this"
                    rules.append((spec.name, re.compile(rf"(?<![a-z0-9]){re.escape(word)}(?![a-z0-9])")))
                else:
                    rules.append((spec.name, re.compile(re.escape(word))))
            # A label typed back (a clarifying question's quick reply) selects its intent.
            for label in filter(None, (normalize(v) for v in spec.labels.values())):
                rules.append((spec.name, re.compile(f"^{re.escape(label)}$")))
            rules += [(spec.name, p) for p in spec.patterns]
        return tuple(rules)

    def match_rules(self, text: str) -> str | None:
        """The intent of the longest rule match; ties go to the intent listed first."""
        norm = normalize(text)
        best: tuple[int, str] | None = None
        for name, rule in self._rules:
            m = rule.search(norm)
            if m is None:
                continue
            span = max(1, m.end() - m.start())
            if best is None or span > best[0]:
                best = (span, name)
        return best[1] if best else None

    def _classify(self, text: str) -> tuple[tuple[str, float], ...]:
        """Classifier probabilities, best first."""
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            probs = self._model.predict_proba(self._vectorizer.transform([text]))[0]
        order = np.argsort(-probs)
        return tuple((self._classes[i], float(probs[i])) for i in order)

    def recognize(self, text: str) -> IntentResult:
        if not normalize(text):
            return IntentResult(None, 0.0, "none")
        ranked = self.classify(text)
        rule = self.match_rules(text)
        if rule is not None:
            return IntentResult(rule, 1.0, "rule", ranked)
        name, prob = ranked[0]
        return IntentResult(name, prob, "model", ranked)

    def evaluate(self, cases: Sequence[tuple[str, str]]) -> IntentEval:
        correct = model_correct = 0
        per: dict[str, list[int]] = {}
        misses: list[tuple[str, str, str | None, float]] = []
        for text, expect in cases:
            result = self.recognize(text)
            ok = result.name == expect
            correct += ok
            model_correct += self.classify(text)[0][0] == expect
            tally = per.setdefault(expect, [0, 0])
            tally[0] += ok
            tally[1] += 1
            if not ok:
                misses.append((text, expect, result.name, result.confidence))
        return IntentEval(
            total=len(cases),
            correct=correct,
            model_correct=model_correct,
            per_intent=MappingProxyType({k: (v[0], v[1]) for k, v in per.items()}),
            misses=tuple(misses),
        )


def _parse_spec(path: str | Path, index: int, item: object) -> IntentSpec:
    where = f"{path}: intent #{index + 1}"
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"].strip():
        raise IntentConfigError(f"{where}: needs a 'name'")
    name = item["name"].strip()
    where = f"{path}: intent {name!r}"
    unknown = set(item) - {"name", "label", "keywords", "patterns", "examples"}
    if unknown:
        raise IntentConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
    label = item.get("label") or {}
    if isinstance(label, str):
        label = {"zh": label}
    if not isinstance(label, dict):
        raise IntentConfigError(f"{where}: 'label' must be a string or a {{lang: text}} mapping")
    examples = [str(e).strip() for e in item.get("examples") or () if str(e).strip()]
    if len(examples) < MIN_EXAMPLES:
        raise IntentConfigError(f"{where}: has {len(examples)} examples; at least {MIN_EXAMPLES} are needed")
    patterns = []
    for p in item.get("patterns") or ():
        try:
            patterns.append(re.compile(str(p)))
        except re.error as exc:
            raise IntentConfigError(f"{where}: pattern {p!r} is not a valid regular expression: {exc}") from None
    return IntentSpec(
        name=name,
        labels=MappingProxyType({str(k): str(v) for k, v in label.items()}),
        keywords=tuple(str(k) for k in item.get("keywords") or ()),
        patterns=tuple(patterns),
        examples=tuple(examples),
    )


def read_labelled(path: str | Path) -> dict[str, list[str]]:
    """Labelled examples ``{intent: [texts]}``; a missing file is none (nothing was labelled yet)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise IntentConfigError(f"cannot read labelled intents file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise IntentConfigError(f"labelled intents file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise IntentConfigError(f"{path}: expected a mapping {{intent: [texts]}}")
    return {str(name): [str(t).strip() for t in texts or () if str(t).strip()] for name, texts in data.items()}


def load_eval_cases(path: str | Path) -> list[tuple[str, str]]:
    """Held-out ``(text, intent)`` pairs from a ``cases: {intent: [texts]}`` file."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    cases = data.get("cases") or {}
    return [(str(text), str(name)) for name, texts in cases.items() for text in texts or ()]
