"""The operator blocklist (敏感词): thousands of terms found in one pass over a message.

Terms come from a file (``safety.blocklist_path``), one per line, ``#`` starts a
comment, an optional category after a tab (``term<TAB>category``; without one a
term is in ``blocklist``). Terms and text go through the same
:func:`bot.safety.normalize.normalize`, and the Aho-Corasick automaton
(pyahocorasick) runs over the *squeezed* text, so ``賭 博``, ``賭.博`` and
``ＤＵＢＯ`` are found as well as ``赌博``, in time linear in the message whatever
the number of terms. A term that starts or ends with an ASCII letter or digit
must sit at a word edge (``ass`` is not in ``class``); Chinese has no word
edges, so Chinese terms match anywhere.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import ahocorasick

from bot.safety.normalize import Normalized, is_word_char, normalize

log = logging.getLogger(__name__)

DEFAULT_CATEGORY = "blocklist"
MASK_CHAR = "*"


class BlocklistError(Exception):
    """The blocklist file cannot be read or holds a malformed line (the message names the line, not the term)."""


@dataclass(frozen=True, slots=True)
class Hit:
    term: str  # as the operator wrote it
    category: str
    start: int  # [start, end) in the original text
    end: int


@dataclass(frozen=True, slots=True)
class _Entry:
    term: str
    category: str
    length: int  # of the squeezed term
    left_edge: bool  # the squeezed term starts with an ASCII word character: must start at a word edge
    right_edge: bool


def parse_terms(text: str, *, default_category: str = DEFAULT_CATEGORY) -> list[tuple[str, str]]:
    """``(term, category)`` pairs of a blocklist file's text."""
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = "" if raw.lstrip().startswith("#") else re.sub(r"\s+#.*$", "", raw)
        if not line.strip():
            continue
        term, _, category = line.partition("\t")
        term, category = term.strip(), category.strip() or default_category
        if not term or "\t" in category or not category.replace("_", "").replace("-", "").isalnum():
            raise BlocklistError(f"blocklist line {n}: expected 'term' or 'term<TAB>category' (category a-z 0-9 _ -)")
        out.append((term, category.lower()))
    return out


class Blocklist:
    def __init__(self, terms: Iterable[tuple[str, str] | str], *, default_category: str = DEFAULT_CATEGORY) -> None:
        self._automaton = ahocorasick.Automaton()
        self.categories: set[str] = set()
        count = skipped = 0
        for item in terms:
            term, category = (item, default_category) if isinstance(item, str) else item
            key = normalize(term).squeezed
            if not key:
                skipped += 1  # nothing left once spaces and symbols go; it would match everywhere or nowhere
                continue
            if key in self._automaton:
                continue  # the same term twice (perhaps written differently): the first line's category wins
            self._automaton.add_word(key, _Entry(term, category, len(key), is_word_char(key[0]),
                                                 is_word_char(key[-1])))
            self.categories.add(category)
            count += 1
        if skipped:
            log.warning("blocklist: %d terms are only spaces or symbols and were skipped", skipped)
        self._size = count
        if count:
            self._automaton.make_automaton()

    @classmethod
    def from_file(cls, path: str | Path, *, default_category: str = DEFAULT_CATEGORY) -> Blocklist:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BlocklistError(f"cannot read blocklist file {path}: {exc.__class__.__name__}") from None
        return cls(parse_terms(text, default_category=default_category), default_category=default_category)

    def __len__(self) -> int:
        return self._size

    def find(self, text: str | Normalized) -> list[Hit]:
        """Every blocked term in ``text``, sorted by position (overlapping hits included)."""
        if not self._size:
            return []
        norm = text if isinstance(text, Normalized) else normalize(text)
        hits = []
        for last, entry in self._automaton.iter(norm.squeezed):
            start = last + 1 - entry.length
            if (entry.left_edge or entry.right_edge) and not norm.at_word_edges(
                start, last + 1, left=entry.left_edge, right=entry.right_edge
            ):
                continue
            o_start, o_end = norm.span(start, last + 1)
            hits.append(Hit(entry.term, entry.category, o_start, o_end))
        hits.sort(key=lambda h: (h.start, -h.end))
        return hits

    def mask(self, text: str, hits: Iterable[Hit] | None = None, *, char: str = MASK_CHAR) -> str:
        """``text`` with every blocked term's characters (and what was inserted between them) masked."""
        return mask_spans(text, [(h.start, h.end) for h in (self.find(text) if hits is None else hits)], char=char)


def mask_spans(text: str, spans: Iterable[tuple[int, int]], *, char: str = MASK_CHAR) -> str:
    """``text`` with each ``[start, end)`` replaced by as many ``char`` (spaces inside are masked too)."""
    out = list(text)
    for start, end in spans:
        for i in range(max(0, start), min(len(out), end)):
            out[i] = char
    return "".join(out)
