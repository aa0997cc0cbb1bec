"""The FAQ's data: entries, hits and evaluation cases, and how they are read from YAML."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml


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
    score: float  # in [0, 1]; >= the index's threshold means confident


@dataclass(frozen=True, slots=True)
class EvalCase:
    query: str
    expect: str | None  # None: no entry should answer
    style: str = ""  # what makes the case hard (typo, pinyin, long, ...); "" when the file does not say


def load_entries(path: str | Path) -> list[FaqEntry]:
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return [
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


def load_eval_cases(path: str | Path) -> list[EvalCase]:
    """Cases are ``{query, expect, style}``; out-of-scope queries are plain strings (the first eval file) or
    ``{query, style}``."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    cases = [EvalCase(str(c["query"]), str(c["expect"]), str(c.get("style") or "")) for c in data.get("cases") or ()]
    for item in data.get("unknown") or ():
        if isinstance(item, dict):
            cases.append(EvalCase(str(item["query"]), None, str(item.get("style") or "")))
        else:
            cases.append(EvalCase(str(item), None))
    return cases
