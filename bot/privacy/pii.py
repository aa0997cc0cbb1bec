"""Personal data found in text, and text with it replaced: the one place that decides what is personal.

Kinds (placeholders in brackets):

- ``mobile`` [手机号]: mainland mobile numbers ``1[3-9]`` + 9 digits, also after ``+86`` / ``0086`` / ``86``;
- ``landline`` [电话]: ``0`` + area code (010, 02x, 0xxx) + a 7-8 digit number, ``(010) 1234 5678``,
  ``+86 10 12345678``; a ``转123`` / ``ext 123`` extension goes with it;
- ``id`` [身份证号]: 18-digit resident identity numbers whose check digit (ISO 7064 MOD 11-2) and birth date
  are valid (python-stdnum ``cn.ric``; the region code is not required to be in stdnum's table, which lags
  new districts);
- ``card`` [银行卡号]: 13-19 digit card numbers with a card-network first digit (2-6) that pass Luhn;
- ``email`` [邮箱];
- configured extra patterns (``privacy.extra_patterns: {name: regex}``) [name].

How numbers are read, so that customers' spellings are caught and nothing else is:

- matching runs on an NFKC-normalized copy (full-width ``１３８``, ``＠``, ideographic spaces; invisible
  format characters such as U+200B dropped), and the replacement is made in the original text at the
  mapped positions: the rest of the text stays exactly as it was;
- a number may be written in groups joined by one or two of ``space - . ( )``
  (``138 1234 5678``, ``+86-138-1234-5678``, ``6222 0212 3456 7890 123``); groups are never split, so a digit
  run is a phone only when the whole run is one;
- a digit run glued to a Latin letter or digit is part of a longer token and is left alone: the order number
  ``DD20240315123456789``, ``YD2405120001``, a uuid; so are prices (``¥1380.00``) and dates;
- a 19-digit order number that fails Luhn stays; one in ten pure-digit numbers starting 2-6 passes Luhn by
  chance and is redacted as a card (a letter prefix, as this shop's order numbers have, avoids it).

Placeholders rather than masks like ``138****5678``: a mask keeps seven of eleven digits, and a placeholder
has no digits left, so redacting twice changes nothing.

The policy (extra patterns, values never redacted) is process-wide, like the logging configuration: the log
filter and :meth:`bot.state.DialogueState.with_turn`, which take no configuration, must apply the same rules
as the stores. ``serve`` sets it once at start (:func:`configure`); until then the built-in kinds apply.

For data leaving the hub in bulk (training exports, a Q&A cache), :func:`redact_json` redacts every string of
a JSON-like value: ``[redact_json(record) for record in records]``.
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from stdnum import luhn
from stdnum.cn import ric

PLACEHOLDERS: Mapping[str, str] = {
    "mobile": "[手机号]",
    "landline": "[电话]",
    "id": "[身份证号]",
    "card": "[银行卡号]",
    "email": "[邮箱]",
}
BUILT_IN_KINDS = frozenset(PLACEHOLDERS)

_GROUP = re.compile(r"[0-9]+(?:[Xx](?![0-9A-Za-z]))?")  # a digit run; an ID may end in X
# what may join the groups of one number; not ".": 130000000.00 is a price
_LINK = re.compile(r"[ \-()\u2010-\u2015]{1,2}")
_GLUE = re.compile(r"[0-9A-Za-z]")
_MOBILE = re.compile(r"(?:0086|86)?1[3-9][0-9]{9}")
_LANDLINE = re.compile(r"(?:(?:0086|86)|0)(?:10|2[0-9]|[3-9][0-9]{2})[1-9][0-9]{6,7}")
_CARD_PREFIX = re.compile(r"[3-6]|2[2-7]")
_EXTENSION = re.compile(r"[ ]?(?:转|分机|ext\.?|x|#)[ ]?[0-9]{1,6}(?![0-9A-Za-z])", re.IGNORECASE)
# No look-behind: a local part in a longer run is matched from as far left as 64 characters allow.
_EMAIL = re.compile(
    r"[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?![A-Za-z0-9])"
)
_MAYBE = re.compile(r"[0-9@]")  # after NFKC: text without a digit or an @ holds no built-in kind
_MAX_DIGITS = 23  # 0086 + a 19-digit card: the longest number worth reading


@dataclass(frozen=True, slots=True)
class PiiMatch:
    """One piece of personal data: ``text[start:end]`` of the original text is of ``kind``."""

    kind: str
    start: int
    end: int
    value: str = field(default="", repr=False, compare=False)  # canonical form (digits, lower-case e-mail)


class _Normalized:
    """The NFKC form of a text, character by character, with each character's position in the original."""

    __slots__ = ("origin", "text")

    def __init__(self, text: str) -> None:
        self.origin: list[int] | None = None
        if text.isascii():
            self.text = text
            return
        out: list[str] = []
        origin: list[int] = []
        for i, ch in enumerate(text):
            if ch.isascii() or "\u4e00" <= ch <= "\u9fff":  # the common case, stable under NFKC
                out.append(ch)
                origin.append(i)
                continue
            if unicodedata.category(ch) == "Cf":  # zero-width and other invisible format characters
                continue
            norm = unicodedata.normalize("NFKC", ch)
            out.append(norm)
            origin.extend([i] * len(norm))
        self.text = "".join(out)
        self.origin = origin

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original positions of ``self.text[start:end]``."""
        if self.origin is None:
            return start, end
        return self.origin[start], self.origin[end - 1] + 1


def _valid_id(s: str) -> bool:
    if len(s) != 18 or not s[:17].isdigit():
        return False
    try:
        born = ric.get_birth_date(s)
    except Exception:  # stdnum's InvalidComponent: no such date
        return False
    return ric.calc_check_digit(s) == s[17] and date(1890, 1, 1) <= born <= date.today()


def _classify(s: str, shortest: int) -> str | None:
    """The kind of a number written as ``s`` (digits, an ID's final X upper-cased), or None; ``shortest``:
    the fewest digits in a group but the last (no limit for a number in one group)."""
    if s.endswith("X"):
        return "id" if _valid_id(s) else None
    if _MOBILE.fullmatch(s):
        return "mobile"
    if _valid_id(s):
        return "id"
    # Luhn passes one number in ten: a card is one run or groups of 3+ digits (6222 0212 ... 1), never a list
    if 13 <= len(s) <= 19 and shortest >= 3 and _CARD_PREFIX.match(s) and luhn.is_valid(s):
        return "card"
    if _LANDLINE.fullmatch(s):
        return "landline"
    return None


def _numbers(norm: str) -> Iterator[tuple[str, int, int, str]]:
    """(kind, start, end, digits) of every number in the normalized text."""
    if not _MAYBE.search(norm):
        return
    chain: list[tuple[int, int, str]] = []
    prev_end = -1
    for m in _GROUP.finditer(norm):
        start, end = m.span()
        glued = (start > 0 and _GLUE.match(norm, start - 1)) or (end < len(norm) and _GLUE.match(norm, end))
        linked = chain and prev_end >= 0 and _LINK.fullmatch(norm, prev_end, start) is not None
        if not linked:
            yield from _read_chain(norm, chain)
            chain = []
        if glued:
            yield from _read_chain(norm, chain)
            chain, prev_end = [], -1
            continue
        chain.append((start, end, m.group().upper()))
        prev_end = end
    yield from _read_chain(norm, chain)


def _read_chain(norm: str, chain: list[tuple[int, int, str]]) -> Iterator[tuple[str, int, int, str]]:
    """Left to right, the longest run of whole groups that is a number of some kind."""
    i = 0
    while i < len(chain):
        found = None
        digits = ""
        shortest = _MAX_DIGITS
        ends: list[tuple[int, str, int]] = []
        for j in range(i, len(chain)):
            digits += chain[j][2]
            if len(digits) > _MAX_DIGITS or ("X" in digits[:-1]):
                break
            ends.append((j, digits, shortest))
            shortest = min(shortest, len(chain[j][2]))  # for the runs that go on past this group
        for j, digits, least in reversed(ends):
            kind = _classify(digits, least)
            if kind is not None:
                found = (kind, j, digits)
                break
        if found is None:
            i += 1
            continue
        kind, j, digits = found
        start, end = chain[i][0], chain[j][1]
        if start > 0 and norm[start - 1] == "+" and digits.startswith("86"):
            start -= 1
        if start > 0 and norm[start - 1] == "(" and ")" in norm[start:end] and "(" not in norm[start:end]:
            start -= 1
        if kind == "landline" and (ext := _EXTENSION.match(norm, end)):
            end = ext.end()
        yield kind, start, end, digits
        i = j + 1


def _canonical(value: str) -> str:
    norm = _Normalized(value).text.strip()
    digits = re.sub(r"[^0-9Xx]", "", norm)
    return digits.upper() if len(digits) >= 7 and "@" not in norm else norm.lower()


class Redactor:
    """The built-in kinds plus ``extra_patterns`` (name -> regex, matched on the NFKC form); values in
    ``keep`` (the company's own hotline and service addresses, say) are never redacted."""

    def __init__(self, extra_patterns: Mapping[str, str] | None = None, keep: Collection[str] = ()) -> None:
        self.extra = {name: re.compile(rx) for name, rx in (extra_patterns or {}).items()}
        self.keep = frozenset(_canonical(v) for v in keep if v.strip())

    @classmethod
    def from_config(cls, cfg: Any) -> Redactor:
        """From a ``bot.config.PrivacyConfig``."""
        return cls(cfg.extra_patterns, cfg.keep)

    def placeholder(self, kind: str) -> str:
        return PLACEHOLDERS.get(kind) or f"[{kind}]"

    def find(self, text: str) -> list[PiiMatch]:
        """Every piece of personal data in ``text``, in order, none overlapping (the longer wins)."""
        if not text:
            return []
        n = _Normalized(text)
        found: list[PiiMatch] = []
        for kind, start, end, digits in _numbers(n.text):
            found.append(PiiMatch(kind, *n.span(start, end), value=digits.removeprefix("0086")))
        if "@" in n.text:
            for m in _EMAIL.finditer(n.text):
                found.append(PiiMatch("email", *n.span(*m.span()), value=m.group().lower()))
        for name, rx in self.extra.items():
            for m in rx.finditer(n.text):
                if m.end() > m.start():
                    found.append(PiiMatch(name, *n.span(*m.span()), value=m.group()))
        return _disjoint(found)

    def redact(self, text: str, *, keep: Collection[str] = ()) -> str:
        """``text`` with each piece of personal data replaced by its placeholder, except the values in
        ``keep`` (and the redactor's own), compared in canonical form (digits only, e-mail lower-case)."""
        matches = self.find(text)
        if not matches:
            return text
        kept = self.keep | {_canonical(v) for v in keep} if keep else self.keep
        out: list[str] = []
        last = 0
        for m in matches:
            if kept and _canonical(text[m.start : m.end]) in kept:
                continue
            out.append(text[last : m.start])
            out.append(self.placeholder(m.kind))
            last = m.end
        out.append(text[last:])
        return "".join(out)


def _disjoint(found: list[PiiMatch]) -> list[PiiMatch]:
    """In order of position, none overlapping: of two that overlap the longer stays."""
    if len(found) < 2:
        return found
    chosen: list[PiiMatch] = []
    for m in sorted(found, key=lambda m: (m.start, m.start - m.end)):
        if chosen and m.start < chosen[-1].end:
            if m.end - m.start > chosen[-1].end - chosen[-1].start:
                chosen[-1] = m  # it starts after the one before the last ended
            continue
        chosen.append(m)
    return chosen


# --- the process's policy --------------------------------------------------------------------------------------

_policy = Redactor()


def configure(redactor: Redactor) -> Redactor:
    """Make ``redactor`` the process's policy (``serve`` does, from ``privacy:``); returns the one before."""
    global _policy
    before, _policy = _policy, redactor
    return before


def policy() -> Redactor:
    return _policy


@contextlib.contextmanager
def using(redactor: Redactor) -> Iterator[Redactor]:
    """The policy for a block (tests), restored after it."""
    before = configure(redactor)
    try:
        yield redactor
    finally:
        configure(before)


def find_pii(text: str) -> list[PiiMatch]:
    """Personal data in ``text`` under the process's policy."""
    return _policy.find(text)


def redact(text: str, *, keep: Collection[str] = ()) -> str:
    """``text`` with personal data replaced by typed placeholders (``[手机号]``...) under the process's
    policy; ``keep``: values to leave (compared digits-only, e-mails case-insensitively)."""
    return _policy.redact(text, keep=keep)


def redact_json(value: Any, *, keep: Collection[str] = ()) -> Any:
    """Every string in a JSON-like value (dicts, lists, tuples; keys too) redacted; other values as they are.
    For records that leave the hub in bulk: training exports, a Q&A cache, feedback meta."""
    if isinstance(value, str):
        return _policy.redact(value, keep=keep)
    if isinstance(value, Mapping):
        return {redact_json(k, keep=keep) if isinstance(k, str) else k: redact_json(v, keep=keep)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_json(v, keep=keep) for v in value]
    return value
