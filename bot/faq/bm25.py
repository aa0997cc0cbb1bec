"""Word-level BM25 over jieba tokens, scaled into [0, 1].

The ranking itself is bm25s (maintained, sparse, numpy only). It returns raw, unbounded scores; the FAQ needs
a confidence, so each score is divided by the query's own idf mass (the score a document with every query word
once, at average length, would get). A query word the FAQ never uses counts in that mass at the highest idf:
a message about 火锅 or 股票 stays low however well its one shared word matches. The idf follows bm25s's
"lucene" variant, pinned below so the two agree.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import bm25s
import numpy as np

_K1 = 1.2
_B = 0.75
_EMPTY = "\u2205"  # a token for a document with no words left (bm25s needs one)


class Bm25View:
    def __init__(self, docs: Sequence[Sequence[str]]) -> None:
        corpus = [list(d) or [_EMPTY] for d in docs]
        self._model = bm25s.BM25(method="lucene", k1=_K1, b=_B)
        self._model.index(corpus, show_progress=False)
        n = len(corpus)
        df = Counter(t for d in corpus for t in set(d))
        self._idf = {t: math.log(1 + (n - c + 0.5) / (c + 0.5)) for t, c in df.items()}
        self._unknown_idf = math.log(1 + (n + 0.5) / 0.5)
        self._n = n

    def idf(self, token: str) -> float:
        return self._idf.get(token, self._unknown_idf)

    def scores(self, tokens: Sequence[str]) -> np.ndarray:
        unique = list(dict.fromkeys(tokens))
        if not unique:
            return np.zeros(self._n)
        known = [t for t in unique if t in self._idf]
        raw = self._model.get_scores(known) if known else np.zeros(self._n)
        # lucene's term weight is tf / (tf + k1 * norm): one occurrence at average length is 1 / (1 + k1)
        mass = sum(self.idf(t) for t in unique) / (1 + _K1)
        return np.clip(np.asarray(raw, dtype=float) / mass, 0.0, 1.0)
