"""One vocabulary for customers and the FAQ: the synonym, colloquialism, typo and abbreviation table of
config/synonyms.yaml, applied to the query and to every phrasing before matching.

Kept as data so operators extend it without touching code; applied to both sides so an FAQ phrasing that says
快递 and a customer who says 包裹 meet on the same canonical word.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import yaml

from bot.text import CJK, normalize

_LATIN = re.compile(r"[a-z0-9]")


def _bounded(term: str) -> str:
    """A regex for ``term`` that never matches inside a latin word (ems is not in items)."""
    pattern = re.escape(term)
    if _LATIN.match(term[0]):
        pattern = r"(?<![a-z])" + pattern
    if _LATIN.match(term[-1]):
        pattern += r"(?![a-z])"
    return pattern


def _alternation(terms: Iterable[str]) -> re.Pattern[str] | None:
    ordered = sorted(set(terms), key=lambda t: (-len(t), t))  # longest first: 快递费 before 快递
    return re.compile("|".join(_bounded(t) for t in ordered)) if ordered else None


class Synonyms:
    def __init__(
        self,
        canonical: Mapping[str, str],
        fillers: Sequence[str] = (),
        leading: Sequence[str] = (),
        english: Mapping[str, str] | None = None,
    ) -> None:
        self.canonical = dict(canonical)  # variant (or canonical) -> canonical, typos and abbreviations included
        self.english = dict(english or {})  # English word -> Chinese canonical, for mixed zh/en text only
        self._terms = _alternation(self.canonical)
        self._english = _alternation(self.english)
        self._fillers = _alternation(f for f in fillers if f)
        lead = _alternation(f for f in leading if f)
        self._leading = re.compile(rf"(^|\s)(?:{lead.pattern})+") if lead else None

    @classmethod
    def load(cls, path: str | Path) -> Synonyms:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        return cls.build(
            groups=data.get("groups") or (),
            typos=data.get("typos") or {},
            abbreviations=data.get("abbreviations") or {},
            fillers=data.get("fillers") or (),
            leading=data.get("leading") or (),
            english=data.get("english") or {},
        )

    @classmethod
    def build(
        cls,
        *,
        groups: Iterable[Sequence[str]] = (),
        typos: Mapping[str, str] | None = None,
        abbreviations: Mapping[str, str] | None = None,
        fillers: Iterable[str] = (),
        leading: Iterable[str] = (),
        english: Mapping[str, str] | None = None,
    ) -> Synonyms:
        canonical: dict[str, str] = {}
        for group in groups:
            terms = [normalize(str(t)) for t in group if normalize(str(t))]
            if not terms:
                continue
            for term in terms:
                canonical.setdefault(term, terms[0])  # a term in two groups keeps its first
        # a typo or abbreviation lands on the canonical word of the group its target is in
        for table in (typos or {}, abbreviations or {}):
            for wrong, right in table.items():
                target = normalize(str(right))
                canonical[normalize(str(wrong))] = canonical.get(target, target)
        mixed = {}
        for word, meaning in (english or {}).items():
            target = normalize(str(meaning))
            mixed[normalize(str(word))] = canonical.get(target, target)
        return cls(
            canonical,
            tuple(normalize(str(f)) for f in fillers),
            tuple(normalize(str(f)) for f in leading),
            mixed,
        )

    @property
    def words(self) -> frozenset[str]:
        """Canonical words, for the word segmenter (so 退款 or 物流停滞 stay one word)."""
        return frozenset(w for w in self.canonical.values() if not w.isascii())

    def strip_fillers(self, norm: str) -> str:
        """Greetings and padding out; the text stays as it was when nothing else would be left."""
        text = norm
        if self._fillers is not None:
            text = self._fillers.sub(" ", text)
        if self._leading is not None:
            text = self._leading.sub(" ", text)
        text = " ".join(text.split())
        return text if text else norm

    def rewrite(self, norm: str) -> str:
        """``norm`` (bot.text.normalize'd) with fillers removed and every known term in its canonical form."""
        text = self.strip_fillers(norm)
        if self._english is not None and CJK.search(text):
            text = self._english.sub(lambda m: self.english[m.group(0)], text)
        if self._terms is not None:
            text = self._terms.sub(lambda m: self.canonical[m.group(0)], text)
        return text


EMPTY = Synonyms({})
