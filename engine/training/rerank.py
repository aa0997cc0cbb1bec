"""Fine-tuning a cross-encoder re-ranker on (question, FAQ entry) pairs (``python -m bot train-reranker``).

Why: a general reranker (bge-reranker-base) knows Chinese but not this shop: that 云朵会员 is the membership, that
寄回的仓库 is the return address. The FAQ's own phrasings say so: each is a question its entry answers (label 1)
and, for the entries the lexical retriever confuses it with, one that entry does not answer (label 0). Training
on those pairs teaches the model the deployment's distinctions. The pairs are built in bot/learning/rerank.py;
this module trains and scores, and knows nothing of the FAQ.

Why sentence-transformers and not a loop of our own: its ``CrossEncoderTrainer`` with ``BinaryCrossEntropyLoss``
is the maintained way to train rerankers on transformers' Trainer (schedules, mixed precision on CUDA, logging),
and what it saves is a plain ``AutoModelForSequenceClassification`` checkpoint that engine/rerank.py loads.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.training.sft import TrainingError

CARD = "reranker_card.json"
ScoreFn = Callable[[str, Sequence[str]], Sequence[float]]


@dataclass(frozen=True, slots=True)
class RerankParams:
    epochs: float = 2.0
    batch_size: int = 16
    lr: float = 2e-5  # a pretrained reranker's usual fine-tuning rate; a model trained from scratch wants more
    max_length: int = 128  # tokens of one pair: a customer question and an entry's question and answer start
    warmup_ratio: float = 0.1
    seed: int = 42

    def check(self) -> None:
        for name, value in {"epochs": self.epochs, "batch-size": self.batch_size, "lr": self.lr,
                            "max-length": self.max_length}.items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise TrainingError(f"--{name} must be a positive number, got {value}")
        if not 0 <= self.warmup_ratio < 1:
            raise TrainingError(f"the warm-up ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclass(frozen=True, slots=True)
class Pair:
    query: str
    passage: str
    label: float  # 1.0: the passage answers the query; 0.0: it does not


@dataclass(frozen=True, slots=True)
class RankCase:
    """A held-out question and candidate passages, ``right`` the one that answers it."""

    query: str
    passages: tuple[str, ...]
    right: int


def rank_accuracy(score: ScoreFn, cases: Sequence[RankCase]) -> float:
    """Share of cases whose right passage the model scores highest (ties count against it)."""
    if not cases:
        return 0.0
    hits = 0
    for case in cases:
        scores = list(score(case.query, case.passages))
        best = max(scores)
        hits += scores[case.right] == best and scores.count(best) == 1
    return hits / len(cases)


def train(base: Path, pairs: Sequence[Pair], out: Path, params: RerankParams = RerankParams(), *,
          device: str = "auto", progress: bool = True, threads: int = 0) -> dict[str, Any]:
    """Fine-tune ``base`` on ``pairs`` and save the model to ``out``; returns the training figures (losses).
    ``threads``: CPU intra-op threads (0: torch's default); on a box shared with other work, torch's threads
    spin against it and a small model trains a hundred times slower, so the CLI lets the operator say."""
    params.check()
    if not base.is_dir():
        raise TrainingError(f"--base {str(base)!r} is not a model directory")
    labels = {p.label for p in pairs}
    if not pairs or not labels <= {0.0, 1.0} or len(labels) < 2:
        raise TrainingError("training needs pairs labelled 1 (answers) and 0 (does not answer)")
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    from engine.hf import resolve_device

    dev = resolve_device(device).type  # auto: CUDA when there is one; cuda without it is an EngineError
    if threads and dev == "cpu":
        import torch

        torch.set_num_threads(threads)
    try:
        model = CrossEncoder(str(base), max_length=params.max_length, device=dev, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise TrainingError(f"--base {base.name}: cannot load a cross-encoder ({type(exc).__name__})") from None
    if model.num_labels != 1:
        raise TrainingError(f"--base {base.name} has {model.num_labels} labels; a re-ranker has one relevance logit "
                            "(bge-reranker-base, -large, ...)")
    data = Dataset.from_dict({"query": [p.query for p in pairs], "passage": [p.passage for p in pairs],
                              "label": [float(p.label) for p in pairs]})
    out.mkdir(parents=True, exist_ok=True)
    args = CrossEncoderTrainingArguments(
        output_dir=str(out / "checkpoints"), num_train_epochs=params.epochs,
        per_device_train_batch_size=params.batch_size, learning_rate=params.lr,
        warmup_steps=params.warmup_ratio,  # transformers 5: a float below 1 is a share of the steps
        seed=params.seed, logging_steps=max(1, len(pairs) // params.batch_size // 20), save_strategy="no",
        report_to="none", use_cpu=dev == "cpu", fp16=dev == "cuda", bf16=False, disable_tqdm=not progress)
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=data, loss=BinaryCrossEntropyLoss(model))
    started = time.monotonic()
    trainer.train()
    model.save_pretrained(str(out))
    checkpoints = out / "checkpoints"
    if checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()  # save_strategy "no": the trainer made it and left it empty
    losses = [float(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
    return {"pairs": len(pairs), "positives": sum(p.label == 1.0 for p in pairs), "device": dev,
            "seconds": round(time.monotonic() - started, 1), "losses": losses, "params": asdict(params)}


def scorer(path: Path, *, device: str = "auto", max_length: int = 128) -> ScoreFn:
    """The scores engine/rerank.py would serve, for measuring a model before and after training."""
    from engine.config import RerankerConfig
    from engine.rerank import CrossEncoder

    return CrossEncoder(RerankerConfig(path=str(path), device=device, max_length=max_length)).scores


def write_card(out: Path, card: dict[str, Any]) -> Path:
    path = out / CARD
    path.write_text(json.dumps(card, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path
