"""Held-out evaluation of a base model or an adapter (``python -m bot eval``).

Answers come from the engine itself (``HFEngine``: the same prompt fitting, control-token breaking,
adapter loading and decoding as serving), greedy and with bounded ``max_new_tokens``, one request at a
time so the latency is a single answer's. Scores are computed offline (HF ``evaluate`` downloads its metric
code at run time): sacrebleu BLEU with the ``zh`` tokenizer (CJK characters split) and chrF, and
rouge-score ROUGE-1/2/L over characters — its default tokenizer keeps only ASCII letters and digits, so
Chinese would score zero. The FAQ-hit rate is the bot's to compute (``faq_hit``), the engine knows no FAQ.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.base import GenerationRequest
from engine.config import EngineConfig
from engine.training.framing import Framer, TrainRecord

# The evaluated adapter's name inside the engine ("eval" would clash with Module.eval: peft refuses it).
ADAPTER = "evaluated"


def char_tokens(text: str) -> list[str]:
    """Characters without whitespace: the unit Chinese ROUGE is counted in (English words split too)."""
    return [c for c in text.lower() if not c.isspace()]


class _CharTokenizer:
    """rouge-score's tokenizer protocol (``tokenize(text) -> list[str]``)."""

    def tokenize(self, text: str) -> list[str]:
        return char_tokens(text)


def rouge_scorer() -> Any:
    from rouge_score import rouge_scorer as rs

    return rs.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_CharTokenizer())


@dataclass(slots=True)
class Example:
    query: str
    reference: str
    output: str
    chrf: float
    latency_s: float


@dataclass(slots=True)
class EvalResult:
    label: str
    examples: list[Example]
    bleu: float
    chrf: float
    rouge1: float
    rouge2: float
    rougeL: float  # the metric's own name
    latency_p50_s: float
    latency_p95_s: float
    faq_hit_rate: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, float | None]:
        return {"BLEU": self.bleu, "chrF": self.chrf, "ROUGE-1": self.rouge1, "ROUGE-2": self.rouge2,
                "ROUGE-L": self.rougeL, "FAQ hit": self.faq_hit_rate, "p50 s": self.latency_p50_s,
                "p95 s": self.latency_p95_s}

    def lines(self) -> list[str]:
        out = [f"{self.label}: {len(self.examples)} examples",
               f"  BLEU (zh) {self.bleu:.2f}  chrF {self.chrf:.2f}",
               f"  ROUGE-1 {self.rouge1:.4f}  ROUGE-2 {self.rouge2:.4f}  ROUGE-L {self.rougeL:.4f} (characters)",
               f"  latency p50 {self.latency_p50_s * 1000:.0f} ms  p95 {self.latency_p95_s * 1000:.0f} ms"]
        if self.faq_hit_rate is not None:
            out.append(f"  FAQ hit rate {self.faq_hit_rate:.1%} (queries the FAQ answers confidently)")
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> EvalResult:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        data["examples"] = [Example(**e) for e in data["examples"]]
        return cls(**data)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def score(label: str, queries: Sequence[str], references: Sequence[str], outputs: Sequence[str],
          latencies: Sequence[float], faq_hit_rate: float | None = None) -> EvalResult:
    """Corpus BLEU/chrF, mean character ROUGE F1, per-example chrF."""
    from sacrebleu.metrics import BLEU, CHRF

    bleu = BLEU(tokenize="zh")
    chrf = CHRF()
    scorer = rouge_scorer()
    rouge = {"rouge1": [], "rouge2": [], "rougeL": []}
    examples = []
    for q, ref, out, lat in zip(queries, references, outputs, latencies, strict=True):
        for name, s in scorer.score(ref, out).items():
            rouge[name].append(s.fmeasure)
        examples.append(Example(q, ref, out, chrf.sentence_score(out, [ref]).score, lat))
    n = max(1, len(examples))
    return EvalResult(
        label=label,
        examples=examples,
        bleu=bleu.corpus_score(list(outputs), [list(references)]).score if outputs else 0.0,
        chrf=chrf.corpus_score(list(outputs), [list(references)]).score if outputs else 0.0,
        rouge1=sum(rouge["rouge1"]) / n,
        rouge2=sum(rouge["rouge2"]) / n,
        rougeL=sum(rouge["rougeL"]) / n,
        latency_p50_s=statistics.median(latencies) if latencies else 0.0,
        latency_p95_s=percentile(latencies, 0.95),
        faq_hit_rate=faq_hit_rate,
    )


def evaluate(
    base: str | Path,
    records: Sequence[TrainRecord],
    framer: Framer,
    *,
    adapter: str | Path | None = None,
    label: str | None = None,
    max_new_tokens: int = 128,
    device: str = "auto",
    faq_hit: Callable[[str], bool] | None = None,
) -> EvalResult:
    """Greedy answers from the engine for every record, scored against the record's response."""
    return asyncio.run(_evaluate(base, records, framer, adapter, label, max_new_tokens, device, faq_hit))


async def _evaluate(base: str | Path, records: Sequence[TrainRecord], framer: Framer, adapter: str | Path | None,
                    label: str | None, max_new_tokens: int, device: str,
                    faq_hit: Callable[[str], bool] | None) -> EvalResult:
    from engine.hf import HFEngine

    cfg = EngineConfig(kind="hf", model_path=str(base), device=device, temperature=0.0,
                       max_new_tokens=max_new_tokens, batch_window_ms=0.0, max_batch_size=1,
                       adapters={ADAPTER: str(adapter)} if adapter is not None else {})
    engine = HFEngine(cfg)
    await engine.start()
    outputs, latencies = [], []
    try:
        for r in records:
            request = GenerationRequest(messages=tuple(framer(r.query, r.context or "")),
                                        adapter=ADAPTER if adapter is not None else None,
                                        max_new_tokens=max_new_tokens, temperature=0.0)
            started = time.perf_counter()
            text = "".join([delta async for delta in engine.stream(request)])
            latencies.append(time.perf_counter() - started)
            outputs.append(text.strip())
    finally:
        await engine.close()
    hits = None
    if faq_hit is not None and records:
        hits = sum(1 for r in records if faq_hit(r.query)) / len(records)
    result = score(label or (Path(adapter).name if adapter is not None else "base"), [r.query for r in records],
                   [r.response for r in records], outputs, latencies, hits)
    result.meta = {"base": str(base), "adapter": str(adapter) if adapter is not None else None,
                   "max_new_tokens": max_new_tokens}
    return result
