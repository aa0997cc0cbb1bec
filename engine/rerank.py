"""Cross-encoder scoring of (customer question, FAQ entry) pairs, for the FAQ's semantic re-ranking.

The lexical retriever (bot/faq/index.py) finds candidates fast but only by shared characters, words and sounds; a
cross-encoder reads the question and an entry together and scores how well the entry answers it. Only the few
best lexical candidates are scored, so one question costs one small forward pass. Which entries, how the scores
are blended and when the FAQ is confident stay in bot/faq (policy); this module only loads the model and scores.

The model is any ``AutoModelForSequenceClassification`` checkpoint on local disk (bge-reranker-base or -large,
or one fine-tuned on the deployment's own FAQ): one logit is read through a sigmoid, two or more as the
probability of the last label ("relevant"). Heavy imports (torch, transformers) happen here only, and this
module is imported only when ``faq.reranker.path`` is set.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from engine.base import EngineError
from engine.config import RerankerConfig
from engine.hf import resolve_device, resolve_dtype

log = logging.getLogger(__name__)


class CrossEncoder:
    """Thread-safe: callers score from worker threads (bot/faq/index.py), one forward pass at a time."""

    def __init__(self, cfg: RerankerConfig, *, base_dir: Path | None = None) -> None:
        path = Path(cfg.path)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_dir():
            raise EngineError(f"faq.reranker.path: no model directory at {path}")
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, self.device)
        if self.device.type == "cuda" and dtype == torch.bfloat16:
            dtype = torch.float16  # rerankers are published and checked in fp16
        if cfg.torch_threads and self.device.type == "cpu":
            torch.set_num_threads(cfg.torch_threads)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True, dtype=dtype)
        except (OSError, ValueError) as exc:  # not a checkpoint, or not a sequence-classification one
            raise EngineError(f"faq.reranker.path: cannot load a sequence-classification model: "
                              f"{type(exc).__name__}") from None
        self.model = model.to(self.device).eval()
        self.labels = int(model.config.num_labels)
        self._lock = threading.Lock()
        log.info("FAQ re-ranker loaded from %s on %s (%s, %d label(s))", path.name, self.device,
                 str(dtype).removeprefix("torch."), self.labels)

    def scores(self, query: str, passages: Sequence[str]) -> list[float]:
        """Relevance of each passage to ``query`` in [0, 1], in the passages' order."""
        if not passages:
            return []
        out: list[float] = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(passages), self.cfg.batch_size):
                chunk = list(passages[start:start + self.cfg.batch_size])
                batch = self.tokenizer([query] * len(chunk), chunk, padding=True, truncation="longest_first",
                                       max_length=self.cfg.max_length, return_tensors="pt").to(self.device)
                logits = self.model(**batch).logits.float()
                if self.labels == 1:
                    probs = torch.sigmoid(logits[:, 0])
                else:
                    probs = torch.softmax(logits, dim=-1)[:, -1]
                out.extend(float(p) for p in probs.cpu())
        return out
