"""FAQ retrieval: the embedded answerer and the fallback when the model is down.

Each entry is indexed by its question and every paraphrase, after the synonym table and typed-pinyin reading
(bot/faq/analyzer.py). A query is scored against all of them with three views: character 1-3 gram TF-IDF
(robust to segmentation mistakes and shape typos), word BM25 over jieba tokens (precise on terms such as 发票
or 退款, and lets a rare shared word count more than a common one), and pinyin syllable TF-IDF (homophone
typos). An entry blends its best phrasing with all its phrasings taken together; long messages are also
scored clause by clause; the result is re-ranked by what is asked (bot/faq/head.py) and, when a cross-encoder
is configured, by what it means (bot/faq/rerank.py). Scores are in [0, 1]; below ``threshold`` the FAQ does not
claim to know.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import sklearn
from sklearn.feature_extraction.text import TfidfVectorizer

from bot.faq import head
from bot.faq.analyzer import Analyzer, content
from bot.faq.bm25 import Bm25View
from bot.faq.evaluate import EvalResult, evaluate
from bot.faq.model import EvalCase, FaqEntry, FaqHit, load_entries
from bot.faq.rerank import NEAR_EXACT, Reranking
from bot.faq.synonyms import EMPTY, Synonyms
from bot.text import detect_lang

if TYPE_CHECKING:
    from bot.config import FaqConfig

# Weights of the three views, of the best phrasing against the whole entry, and of a clause against the whole
# message; chosen on config/faq_eval_hard.yaml (the dev set) with config/faq_eval.yaml kept >= 95%.
_CHAR_WEIGHT = 0.60
_WORD_WEIGHT = 0.20
_SOUND_WEIGHT = 0.20
_ENTRY_WEIGHT = 0.80
_CLAUSE_WEIGHT = 0.92
_MAX_HITS = 10
_OTHER_LANGUAGE = 0.8  # a Chinese message answered by an English entry (or the reverse) only when clearly better
DEFAULT_SYNONYMS = "synonyms.yaml"  # looked up beside the FAQ file
DEFAULT_FLOOR = 0.20  # the defaults of bot.config.FaqConfig, for callers that build an index without a config
DEFAULT_MARGIN = 0.02
_CACHE_SIZE = 4096
_WARN_EVERY_S = 60.0

log = logging.getLogger(__name__)


def _identity(tokens: list[str]) -> list[str]:
    return tokens


class _Views:
    """Characters, words and sounds fitted on one set of documents (phrasings, or whole entries)."""

    def __init__(self, docs: Sequence[str], analyzer: Analyzer, char_ngrams: tuple[int, int]) -> None:
        self.analyzer = analyzer
        self.char = TfidfVectorizer(analyzer="char", ngram_range=char_ngrams, preprocessor=content, sublinear_tf=True)
        self.char_m = self.char.fit_transform(docs)
        self.words = [analyzer.words(d) for d in docs]
        self.bm25 = Bm25View(self.words)
        self.sound = TfidfVectorizer(analyzer=_identity, sublinear_tf=True)
        self.sound_m = self.sound.fit_transform([analyzer.sounds(d) for d in docs])

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """One row per text (a message and its clauses, scored in one pass), one column per document."""
        char = (self.char.transform(texts) @ self.char_m.T).toarray()
        word = np.vstack([self.bm25.scores(self.analyzer.words(t)) for t in texts])
        sound = (self.sound.transform([self.analyzer.sounds(t) for t in texts]) @ self.sound_m.T).toarray()
        return _CHAR_WEIGHT * char + _WORD_WEIGHT * word + _SOUND_WEIGHT * sound


class FaqIndex:
    """Scores blend the best single phrasing of an entry (precise on close rewordings) with all its phrasings
    as one document (robust when a short query shares words with a phrasing of some other entry)."""

    def __init__(
        self,
        entries: Sequence[FaqEntry],
        threshold: float,
        synonyms: Synonyms = EMPTY,
        *,
        floor: float = DEFAULT_FLOOR,
        margin: float = DEFAULT_MARGIN,
        reranking: Reranking | None = None,
    ) -> None:
        if not entries:
            raise ValueError("the FAQ has no entries")
        self.entries = tuple(entries)
        self.threshold = threshold  # confident: the FAQ answers
        self.floor = floor  # uncertain between floor and threshold: 猜你想问 offers the closest questions
        self.margin = margin  # a top hit this close to the second is uncertain too
        self.reranking = reranking  # None: lexical only
        self.by_id = {e.id: e for e in self.entries}
        raw: list[str] = []
        owner: list[int] = []
        for i, e in enumerate(self.entries):
            for phrasing in (e.question, *e.paraphrases):
                raw.append(phrasing)
                owner.append(i)
        self.analyzer = Analyzer(synonyms, raw)
        texts = [self.analyzer.prepare(t) for t in raw]
        owners = np.asarray(owner)
        self._owner_groups = [np.flatnonzero(owners == i) for i in range(len(self.entries))]
        # A cache per instance (functools.lru_cache on the method would be the class's and keep every instance
        # ever built alive; the FAQ's own jieba dictionary is ~65 MB). Customers repeat themselves, and one turn
        # looks the same text up several times. Written from worker threads too (asearch), hence the lock.
        self._cache: OrderedDict[str, tuple[FaqHit, ...]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._warned_at = -_WARN_EVERY_S
        self._phrasings = _Views(texts, self.analyzer, (1, 3))
        docs = [" ".join(t for t, o in zip(texts, owner, strict=True) if o == i) for i in range(len(self.entries))]
        self._documents = _Views(docs, self.analyzer, (1, 2))
        self._kinds = [head.kinds(self.analyzer.prepare(e.question)) for e in self.entries]

    @classmethod
    def load(
        cls,
        path: str | Path,
        threshold: float,
        synonyms_path: str | Path | None = None,
        *,
        floor: float = DEFAULT_FLOOR,
        margin: float = DEFAULT_MARGIN,
        reranking: Reranking | None = None,
    ) -> FaqIndex:
        """``synonyms_path`` defaults to synonyms.yaml beside the FAQ file; no table when there is none."""
        path = Path(path)
        syn_path = Path(synonyms_path) if synonyms_path is not None else path.parent / DEFAULT_SYNONYMS
        synonyms = Synonyms.load(syn_path) if syn_path.is_file() else EMPTY
        return cls(load_entries(path), threshold, synonyms, floor=floor, margin=margin, reranking=reranking)

    @classmethod
    def from_config(cls, cfg: FaqConfig, resolve: Callable[[str], Path], *,
                    reranking: Reranking | None = None) -> FaqIndex:
        return cls.load(resolve(cfg.path), cfg.threshold, resolve(cfg.synonyms_path), floor=cfg.floor,
                        margin=cfg.margin, reranking=reranking)

    def search(self, query: str, k: int = 3) -> list[FaqHit]:
        """Best entries first. Results are cached: customers ask the same few questions all day, and one turn
        may look the same text up several times. With a re-ranker an uncached question runs the model here, on
        the caller's thread: callers on the event loop warm the cache with :meth:`asearch` first."""
        key = query.strip()
        with self._cache_lock:
            hits = self._cache.get(key)
            if hits is not None:
                self._cache.move_to_end(key)
                return list(hits[:k])
        hits, complete = self._rank(key)
        if complete:
            with self._cache_lock:
                self._cache[key] = hits
                while len(self._cache) > _CACHE_SIZE:
                    self._cache.popitem(last=False)
        return list(hits[:k])

    async def asearch(self, query: str, k: int = 3) -> list[FaqHit]:
        """``search`` that keeps the event loop free while the re-ranker reads (it runs in a thread); without
        a re-ranker, or for a question already looked up, the same as ``search``. The model runs on the
        re-ranker's own thread (bot/faq/rerank.py), one question after another."""
        if self.reranking is None:
            return self.search(query, k)
        with self._cache_lock:
            cached = query.strip() in self._cache
        if cached:
            return self.search(query, k)
        return await asyncio.get_running_loop().run_in_executor(self.reranking.executor, self.search, query, k)

    def _rank(self, query: str) -> tuple[tuple[FaqHit, ...], bool]:
        """The hits, and whether they are the full answer (False: the re-ranker failed, the lexical ranking
        stands in and is not cached, so the model is asked again next time)."""
        prepared = self.analyzer.prepare(query)
        if not prepared.strip():
            return (), True
        clauses = self.analyzer.clauses(prepared)
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            scores = self._score([prepared, *clauses])
        best = scores[0]
        if clauses:
            best = np.maximum(best, _CLAUSE_WEIGHT * scores[1:].max(axis=0))
        best = self._rerank(prepared, best)
        complete = True
        if self.reranking is not None:
            try:
                best = self.reranking.apply(query, self.entries, best)
            except Exception as exc:
                complete = False
                now = time.monotonic()
                if now - self._warned_at >= _WARN_EVERY_S:
                    self._warned_at = now
                    log.warning("FAQ re-ranker failed (%s); matching lexically until it answers again",
                                type(exc).__name__)
        order = np.argsort(-best, kind="stable")[:_MAX_HITS]
        return tuple(FaqHit(self.entries[i], float(best[i])) for i in order if best[i] > 0), complete

    def _score(self, texts: Sequence[str]) -> np.ndarray:
        phrasing = self._phrasings.scores(texts)
        best = np.zeros((len(texts), len(self.entries)))
        for i, owner in enumerate(self._owner_groups):
            best[:, i] = phrasing[:, owner].max(axis=1)
        blend = (1 - _ENTRY_WEIGHT) * best + _ENTRY_WEIGHT * self._documents.scores(texts)
        # a message worded (almost) as one phrasing is that question: it scores as such, above dialogue.faq_strong
        return np.where(best >= NEAR_EXACT, np.maximum(blend, best), blend)

    def _rerank(self, prepared: str, scores: np.ndarray) -> np.ndarray:
        query_kinds = head.kinds(prepared)
        lang = detect_lang(prepared)
        factors = np.array([
            head.factor(query_kinds, kinds) * (1.0 if entry.lang == lang else _OTHER_LANGUAGE)
            for entry, kinds in zip(self.entries, self._kinds, strict=True)
        ])
        return np.clip(scores * factors, 0.0, 1.0)

    def confident(self, hits: Sequence[FaqHit]) -> bool:
        """Whether the first of ``hits`` (best first, as ``search`` gives them) may be answered: above the
        threshold and not a near tie with the second, which is a guess between two questions."""
        if not hits or hits[0].score < self.threshold:
            return False
        return len(hits) < 2 or hits[0].score - hits[1].score >= self.margin

    def uncertain(self, hits: Sequence[FaqHit]) -> bool:
        """Close enough to offer the top questions (猜你想问), not close enough to answer."""
        return bool(hits) and hits[0].score >= self.floor and not self.confident(hits)

    def best(self, query: str) -> FaqHit | None:
        """The top entry when it is a confident match."""
        hits = self.search(query, k=2)
        return hits[0] if self.confident(hits) else None

    def evaluate(self, cases: Sequence[EvalCase]) -> EvalResult:
        return evaluate(self, cases)
