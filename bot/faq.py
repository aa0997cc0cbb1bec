"""FAQ retrieval: the embedded answerer and the fallback when the model is down.

Each entry is indexed by its question and every paraphrase. A query is scored
against all of them with two TF-IDF views, character 1-3 grams (robust to
Chinese word-segmentation mistakes and typos) and jieba words (precise on
multi-character terms such as 发票 or 退款), and an entry scores its best
phrasing. Below ``threshold`` the FAQ does not claim to know.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jieba
import numpy as np
import sklearn
import yaml
from sklearn.feature_extraction.text import TfidfVectorizer

from bot.text import normalize

jieba.setLogLevel(logging.WARNING)

_CHAR_WEIGHT = 0.7
_ENTRY_WEIGHT = 0.4  # share of the score from the entry's phrasings taken together
_MAX_HITS = 10
# Function words that make unrelated questions look alike ("…是什么", "怎么…").
_STOPWORDS = frozenset(
    "的 了 吗 呢 吧 啊 呀 么 我 你 您 他 她 它 我们 你们 是 在 有 和 与 怎么 怎样 如何 什么 为什么 "
    "哪 哪里 哪个 可以 能 能不能 可不可以 请问 一下 一个 这个 那个 还 就 都 也 要 想 会 给 把 被 让 "
    "a an the is are do does i you my me to of for how what can".split()
)


@dataclass(frozen=True, slots=True)
class FaqEntry:
    id: str
    category: str
    question: str
    answer: str
    paraphrases: tuple[str, ...] = ()
    lang: str = "zh"


@dataclass(frozen=True, slots=True)
class FaqHit:
    entry: FaqEntry
    score: float


@dataclass(frozen=True, slots=True)
class EvalCase:
    query: str
    expect: str | None  # None: no entry should answer


@dataclass(frozen=True, slots=True)
class EvalResult:
    total: int
    correct: int
    misses: tuple[tuple[str, str | None, str | None, float], ...]  # query, expected, got, score
    unknown_total: int
    unknown_refused: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def refusal_rate(self) -> float:
        return self.unknown_refused / self.unknown_total if self.unknown_total else 1.0


_FUNCTION_CHARS = re.compile(
    "什么|怎么|怎样|如何|为什么|可以|能不能|可不可以|请问|一下|你们|我们|吗|呢|吧|啊|呀|的|了|么|是|我|你|您"
)


def _content(text: str) -> str:
    """Normalized text without function words, for the character view. Falls
    back to the whole text when almost nothing would be left ("你们是做什么的")."""
    norm = normalize(text)
    stripped = " ".join(_FUNCTION_CHARS.sub(" ", norm).split())
    return stripped if len(stripped.replace(" ", "")) >= 2 else norm


def _words(text: str) -> list[str]:
    return [w for w in jieba.lcut_for_search(normalize(text)) if w.strip() and w not in _STOPWORDS]


class _View:
    """Character n-grams plus jieba words, fitted on one set of documents."""

    def __init__(self, docs: Sequence[str], char_ngrams: tuple[int, int]) -> None:
        self.char = TfidfVectorizer(analyzer="char", ngram_range=char_ngrams, preprocessor=_content, sublinear_tf=True)
        self.word = TfidfVectorizer(analyzer=_words, sublinear_tf=True)
        self.char_m = self.char.fit_transform(docs)
        self.word_m = self.word.fit_transform(docs)

    def scores(self, norm: str) -> np.ndarray:
        char = (self.char_m @ self.char.transform([norm]).T).toarray().ravel()
        word = (self.word_m @ self.word.transform([norm]).T).toarray().ravel()
        return _CHAR_WEIGHT * char + (1 - _CHAR_WEIGHT) * word


class FaqIndex:
    """Scores blend the best single phrasing of an entry (precise on close
    rewordings) with all its phrasings as one document (robust when a short
    query shares words with a phrasing of some other entry)."""

    def __init__(self, entries: Sequence[FaqEntry], threshold: float) -> None:
        if not entries:
            raise ValueError("the FAQ has no entries")
        self.entries = tuple(entries)
        self.threshold = threshold
        self.by_id = {e.id: e for e in self.entries}
        texts: list[str] = []
        owner: list[int] = []
        for i, e in enumerate(self.entries):
            for phrasing in (e.question, *e.paraphrases):
                texts.append(phrasing)
                owner.append(i)
        self._owner = np.asarray(owner)
        self._phrasings = _View(texts, (1, 3))
        self._documents = _View([" ".join((e.question, *e.paraphrases)) for e in self.entries], (1, 2))

    @classmethod
    def load(cls, path: str | Path, threshold: float) -> FaqIndex:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        entries = [
            FaqEntry(
                id=str(e["id"]),
                category=str(e.get("category", "general")),
                question=str(e["question"]),
                answer=str(e["answer"]).strip(),
                paraphrases=tuple(str(p) for p in e.get("paraphrases") or ()),
                lang=str(e.get("lang", "zh")),
            )
            for e in data.get("entries") or ()
        ]
        return cls(entries, threshold)

    def search(self, query: str, k: int = 3) -> list[FaqHit]:
        """Best entries first. Results are cached: customers ask the same few
        questions all day, and one turn may look the same text up twice."""
        return list(self._ranked(normalize(query))[:k])

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - the index lives as long as the process
    def _ranked(self, norm: str) -> tuple[FaqHit, ...]:
        if not norm:
            return ()
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            phrasing = self._phrasings.scores(norm)
            document = self._documents.scores(norm)
        best = np.zeros(len(self.entries))
        np.maximum.at(best, self._owner, phrasing)
        best = (1 - _ENTRY_WEIGHT) * best + _ENTRY_WEIGHT * document
        order = np.argsort(-best)[:_MAX_HITS]
        return tuple(FaqHit(self.entries[i], float(best[i])) for i in order if best[i] > 0)

    def best(self, query: str) -> FaqHit | None:
        """The top entry when it clears the confidence threshold."""
        hits = self.search(query, k=1)
        return hits[0] if hits and hits[0].score >= self.threshold else None

    def evaluate(self, cases: Sequence[EvalCase]) -> EvalResult:
        correct = 0
        refused = 0
        misses = []
        known = [c for c in cases if c.expect is not None]
        unknown = [c for c in cases if c.expect is None]
        for case in known:
            hit = self.best(case.query)
            if hit is not None and hit.entry.id == case.expect:
                correct += 1
            else:
                top = self.search(case.query, k=1)
                got = (top[0].entry.id, top[0].score) if top else (None, 0.0)
                misses.append((case.query, case.expect, *got))
        for case in unknown:
            if self.best(case.query) is None:
                refused += 1
        return EvalResult(len(known), correct, tuple(misses), len(unknown), refused)


def load_eval_cases(path: str | Path) -> list[EvalCase]:
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    cases = [EvalCase(str(c["query"]), str(c["expect"])) for c in data.get("cases") or ()]
    cases += [EvalCase(str(q), None) for q in data.get("unknown") or ()]
    return cases
