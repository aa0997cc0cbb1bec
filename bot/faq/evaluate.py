"""Measuring retrieval on labelled cases: top-1 (a confident answer of the right entry, as ``FaqIndex.best``
would give it), top-3 (the right
entry among the first three hits, what 猜你想问 offers), out-of-scope refusals, per style, and which entry
answered instead (the confusions, worst first), so a miss points at the vocabulary gap behind it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bot.faq.model import EvalCase, FaqHit


class _Searchable(Protocol):
    threshold: float

    def search(self, query: str, k: int = 3) -> list[FaqHit]: ...

    def confident(self, hits: Sequence[FaqHit]) -> bool: ...


@dataclass(frozen=True, slots=True)
class EvalResult:
    total: int
    correct: int
    misses: tuple[tuple[str, str | None, str | None, float], ...]  # query, expected, got, score
    unknown_total: int
    unknown_refused: int
    top3: int = 0
    per_style: dict[str, tuple[int, int]] = field(default_factory=dict)  # style -> (right, total)
    confusions: tuple[tuple[str, str, int], ...] = ()  # expected, got ("-" when refused), count; worst first
    accepted: tuple[tuple[str, str, float], ...] = ()  # out-of-scope query, entry that answered, score

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def top3_accuracy(self) -> float:
        return self.top3 / self.total if self.total else 0.0

    @property
    def refusal_rate(self) -> float:
        return self.unknown_refused / self.unknown_total if self.unknown_total else 1.0


def evaluate(index: _Searchable, cases: Sequence[EvalCase]) -> EvalResult:
    correct = top3 = refused = 0
    misses: list[tuple[str, str | None, str | None, float]] = []
    accepted: list[tuple[str, str, float]] = []
    confusions: Counter[tuple[str, str]] = Counter()
    styles: dict[str, list[int]] = {}
    known = [c for c in cases if c.expect is not None]
    unknown = [c for c in cases if c.expect is None]
    for case in known:
        hits = index.search(case.query, k=3)
        right = index.confident(hits) and hits[0].entry.id == case.expect
        tally = styles.setdefault(case.style or "-", [0, 0])
        tally[1] += 1
        if right:
            correct += 1
            tally[0] += 1
        else:
            got = (hits[0].entry.id, hits[0].score) if hits else (None, 0.0)
            misses.append((case.query, case.expect, *got))
            wrong = got[0] if got[0] is not None and got[0] != case.expect else "-"
            confusions[(str(case.expect), wrong)] += 1
        if any(h.entry.id == case.expect for h in hits):
            top3 += 1
    for case in unknown:
        hits = index.search(case.query, k=2)
        refusal = not index.confident(hits)
        if refusal:
            refused += 1
        else:
            accepted.append((case.query, hits[0].entry.id, hits[0].score))
        tally = styles.setdefault(case.style or "unknown", [0, 0])
        tally[1] += 1
        tally[0] += refusal
    return EvalResult(
        total=len(known),
        correct=correct,
        misses=tuple(misses),
        unknown_total=len(unknown),
        unknown_refused=refused,
        top3=top3,
        per_style={k: (v[0], v[1]) for k, v in sorted(styles.items())},
        confusions=tuple((e, g, n) for (e, g), n in sorted(confusions.items(), key=lambda kv: (-kv[1], kv[0]))),
        accepted=tuple(accepted),
    )
