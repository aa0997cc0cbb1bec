"""Training records cleaned for fine-tuning: ``python -m bot data clean IN OUT``.

The original design's cleaning (``re.sub(r'[^\\w\\s\\u4e00-\\u9fff，。？]', '', text)``) deletes quotes,
exclamation marks, colons, brackets, ``%``, ``¥`` and every English punctuation mark, so "满 59 元包邮！"
and "“我的-订单”" lose meaning the model should learn. Here the text keeps its punctuation and only what a
person would not want a model to learn is removed:

- width folding: full-width letters, digits and spaces (ＹＤ２４０５, U+3000) become ASCII, but Chinese
  punctuation stays full-width (，。！？：；（）「」“” are what a Chinese answer should contain);
- HTML markup from exported tickets and rich-text editors (tags go, ``<br>``/``<p>`` become line breaks,
  entities are decoded once);
- control and invisible format characters (zero-width spaces, BOMs, bidi overrides), lone surrogates;
- runs of spaces, trailing spaces, more than one blank line;
- personal data, replaced by typed placeholders (:func:`bot.privacy.pii.redact`): phone numbers, resident
  IDs, bank cards and e-mails must never reach a model's weights.

Then records with an empty query or response, an over-long field, or the same query, context and response
as an earlier record (after normalisation, ignoring punctuation and case) are dropped, each with its reason.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser

from bot.privacy.pii import redact
from bot.text import normalize

# Full-width punctuation kept as written: NFKC would turn ，！？：；（） into ASCII.
_KEEP = frozenset("，。、！？：；（）【】「」『』《》〈〉“”‘’～…—·￥")
_BLOCK_TAGS = frozenset({"br", "p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote"})
_SKIP_TAGS = frozenset({"script", "style"})
_TAG_HINT = re.compile(r"<[a-zA-Z/!][^>]*>|&(#\d+|#x[0-9a-fA-F]+|[a-zA-Z]+);")
_SPACES = re.compile(r"[ \t]+")
_BLANK_LINES = re.compile(r"\n{3,}")


@dataclass(frozen=True, slots=True)
class Record:
    query: str
    response: str
    context: str = ""


@dataclass(frozen=True, slots=True)
class Limits:
    max_query_chars: int = 1000
    max_response_chars: int = 4000
    max_context_chars: int = 4000


@dataclass(slots=True)
class CleanReport:
    read: int = 0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[int]] = field(default_factory=dict)  # reason -> first record numbers (1-based)

    def drop(self, reason: str, number: int) -> None:
        self.dropped[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(number)

    def lines(self) -> list[str]:
        out = [f"records read: {self.read}; kept: {self.kept}; dropped: {sum(self.dropped.values())}"]
        for reason, count in self.dropped.most_common():
            where = ", ".join(f"#{n}" for n in self.examples.get(reason, ()))
            out.append(f"  dropped {count} × {reason} (e.g. {where})")
        return out


class _TextOnly(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skip += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def strip_html(text: str) -> str:
    """Text content of markup; plain text (the usual case) is returned as it is, so "1<2" survives."""
    if not _TAG_HINT.search(text):
        return text
    parser = _TextOnly()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)


def fold_width(text: str) -> str:
    """NFKC per character except the Chinese punctuation in ``_KEEP``."""
    return "".join(ch if ch in _KEEP else unicodedata.normalize("NFKC", ch) for ch in text)


def _visible(ch: str) -> str:
    if ch in "\n\t":
        return ch
    cat = unicodedata.category(ch)
    if cat == "Cs":  # a lone surrogate from a broken export
        return ""
    if cat in ("Cc", "Cf", "Zl", "Zp"):
        return "\n" if ch in "\r\u2028\u2029\x85" else ""
    return ch


def clean_text(text: str) -> str:
    text = text.replace("\r\n", "\n")
    text = strip_html(text)
    text = html.unescape(text) if "&" in text else text  # entities left outside any markup
    text = "".join(_visible(ch) for ch in fold_width(text))
    text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    text = _BLANK_LINES.sub("\n\n", text).strip()
    return redact(text)


def _squeeze(text: str) -> str:
    return "".join(normalize(text).split())


def _key(record: Record) -> tuple[str, str, str]:
    """What makes two records the same example: their words, not their spacing, punctuation or case."""
    return _squeeze(record.query), _squeeze(record.context), _squeeze(record.response)


def clean_records(
    raw: Iterable[Record | str], limits: Limits = Limits(), report: CleanReport | None = None
) -> Iterator[Record]:
    """Cleaned records in input order. ``raw`` may hold a reason string in place of a record that could not
    be read (counted as dropped with that reason)."""
    report = report if report is not None else CleanReport()
    seen: set[tuple[str, str, str]] = set()
    for number, item in enumerate(raw, 1):
        report.read += 1
        if isinstance(item, str):
            report.drop(item, number)
            continue
        record = Record(clean_text(item.query), clean_text(item.response), clean_text(item.context))
        if not record.query:
            report.drop("empty query", number)
        elif not record.response:
            report.drop("empty response", number)
        elif len(record.query) > limits.max_query_chars:
            report.drop(f"query over {limits.max_query_chars} characters", number)
        elif len(record.response) > limits.max_response_chars:
            report.drop(f"response over {limits.max_response_chars} characters", number)
        elif len(record.context) > limits.max_context_chars:
            report.drop(f"context over {limits.max_context_chars} characters", number)
        elif (key := _key(record)) in seen:
            report.drop("duplicate", number)
        else:
            seen.add(key)
            report.kept += 1
            yield record
