"""Semantic re-ranking of the FAQ's lexical candidates by a cross-encoder, when one is configured.

Shared characters cannot tell that 叫同事来注册能拿啥 asks about the invite reward, or that 尺码买小了 wants an
exchange; a cross-encoder (``faq.reranker``, engine/rerank.py) reads the question and each candidate entry
together. The lexical retriever still chooses the candidates (``faq.rerank_top_k``, so the model sees a handful of
pairs, not the whole FAQ) and keeps a share of the score (``1 - faq.rerank_weight``): a question worded as an FAQ
phrasing stays that entry's, and the thresholds keep their meaning. Only the blend is here; the model is I/O
(engine/), and when it fails the ranking is the lexical one (bot/faq/index.py logs it and does not cache it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bot.faq.model import FaqEntry

if TYPE_CHECKING:
    from bot.config import FaqConfig

Scorer = Callable[[str, Sequence[str]], Sequence[float]]  # (question, passages) -> relevance in [0, 1] each
ANSWER_CHARS = 160  # of the answer read with the question: enough to say what the entry is about
NEAR_EXACT = 0.9  # a best phrasing this close is the question reworded (index.py too): kept whatever the model says


def passage(entry: FaqEntry) -> str:
    """What the model reads for an entry: its question and the start of its answer (a question alone is often
    too short to say what it covers; the whole answer would cost tokens for nothing)."""
    return f"{entry.question}\n{entry.answer[:ANSWER_CHARS]}"


def _one_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="faq-rerank")


@dataclass(frozen=True)
class Reranking:
    scorer: Scorer
    weight: float = 0.7
    top_k: int = 10
    # The model reads one question at a time (engine/rerank.py holds a lock): turns queue here, in order, instead of
    # each taking a thread of the loop's default pool to wait on that lock. Shared by every index built with this
    # re-ranking (FAQ curation rebuilds the index; the model and its thread stay).
    executor: ThreadPoolExecutor = field(default_factory=_one_thread, compare=False, repr=False)

    def apply(self, query: str, entries: Sequence[FaqEntry], lexical: np.ndarray) -> np.ndarray:
        """Scores of every entry: the top ``top_k`` lexical candidates blended with the model's score, the rest
        with the model's share taken as 0 (they were not read). Raises whatever the scorer raises."""
        order = [int(i) for i in np.argsort(-lexical, kind="stable")[: self.top_k] if lexical[i] > 0]
        out = lexical * (1.0 - self.weight)
        if order:
            model = np.asarray(self.scorer(query, [passage(entries[i]) for i in order]), dtype=float)
            if model.shape != (len(order),) or not np.all(np.isfinite(model)):
                raise ValueError(f"the re-ranker gave {model.shape} scores for {len(order)} candidates")
            out[order] += self.weight * np.clip(model, 0.0, 1.0)
        return np.where(lexical >= NEAR_EXACT, np.maximum(out, lexical), out)


def open_reranking(cfg: FaqConfig, resolve: Callable[[str], Path]) -> Reranking | None:
    """The configured re-ranking, loaded now (seconds, at start); None when ``faq.reranker.path`` is empty.
    A missing or unloadable model is a configuration error (ValueError naming the key), not a silent fallback:
    whoever set the path expects the model to be used."""
    if not cfg.reranker.path:
        return None
    try:
        from engine.base import EngineError
        from engine.rerank import CrossEncoder
    except ImportError as exc:
        raise ValueError(f"faq.reranker needs the llm extra (torch, transformers): {exc}") from None
    try:
        model = CrossEncoder(cfg.reranker.model_copy(update={"path": str(resolve(cfg.reranker.path))}))
    except EngineError as exc:
        raise ValueError(str(exc)) from None
    return Reranking(model.scores, weight=cfg.rerank_weight, top_k=cfg.rerank_top_k)
