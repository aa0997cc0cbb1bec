"""One normalisation of customer (and model) text for every safety check.

The blocklist, the injection patterns and the output filter must all see the
same thing, or an attacker finds the one check that normalises differently.
:func:`normalize` gives two forms of a text, each with a map back to the
positions of the original, so a hit can be masked where the customer wrote it:

``text``
    NFKC (full-width ``ｉｇｎｏｒｅ`` and ``ⓘ`` / ``𝐢`` letters become ASCII, U+3000
    a space), Latin look-alikes from Cyrillic and Greek made Latin, traditional
    to simplified Chinese (OpenCC ``t2s``), lower case; zero-width and other
    format characters and combining marks dropped (they only hide things).
    Separators are kept, so patterns can still see words and punctuation
    (``' OR 1=1 --``, ``<|im_start|>``).

``squeezed``
    ``text`` with every space, punctuation mark and symbol removed: ``忽 略 之 前``,
    ``忽.略.之.前``, ``忽★略★之★前`` and ``i g n o r e`` all become ``忽略之前`` /
    ``ignore``. Checks that match squeezed text of English terms confirm the
    match starts and ends at a word edge of ``text`` (:meth:`Normalized.at_word_edges`),
    so ``ass`` is not found in ``class``.

Length changes (NFKC's ``ﬁ`` → ``fi``, ``㈱`` → ``(株)``) are handled per
character, so the maps stay exact.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass

import opencc

# Latin look-alikes (Cyrillic, Greek) used to dodge ASCII patterns: "ignоre" with a Cyrillic о.
_CONFUSABLES = str.maketrans({
    "а": "a", "в": "b", "с": "c", "е": "e", "ё": "e", "н": "h", "і": "i", "ј": "j", "к": "k", "м": "m",
    "о": "o", "р": "p", "ѕ": "s", "т": "t", "у": "y", "х": "x", "ԁ": "d", "ɡ": "g", "ո": "n",
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t",
    "υ": "u", "χ": "x", "ω": "w",
})
_DROPPED = frozenset(("Cc", "Cf", "Co", "Cs", "Cn", "Mn", "Me", "Mc"))  # control, format, marks
_SQUEEZED_OUT = frozenset(("Zs", "Zl", "Zp", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So"))
_KEEP_CONTROLS = frozenset("\n\t")


@functools.cache
def _t2s() -> opencc.OpenCC:
    """Created once per process: loading the dictionaries costs milliseconds, a conversion microseconds."""
    return opencc.OpenCC("t2s")


@functools.lru_cache(maxsize=4096)
def _char(c: str) -> str:
    """What one original character becomes in ``text`` (may be empty or several characters)."""
    out = []
    for d in unicodedata.normalize("NFKC", c).lower().translate(_CONFUSABLES):
        if d in _KEEP_CONTROLS:
            out.append(" ")
        elif unicodedata.category(d) not in _DROPPED:
            out.append(d)
    return "".join(out)


@functools.lru_cache(maxsize=4096)
def _squeezed_out(c: str) -> bool:
    return unicodedata.category(c) in _SQUEEZED_OUT


def is_word_char(c: str) -> bool:
    """ASCII letters and digits: the characters whose runs make English words and numbers."""
    return c.isascii() and c.isalnum()


@dataclass(frozen=True, slots=True)
class Normalized:
    original: str
    text: str
    text_pos: tuple[int, ...]  # text[i] came from original[text_pos[i]]
    squeezed: str
    squeezed_pos: tuple[int, ...]  # squeezed[i] is text[squeezed_pos[i]]

    def span(self, start: int, end: int, *, squeezed: bool = True) -> tuple[int, int]:
        """The original's ``[start, end)`` that ``squeezed[start:end]`` (or ``text[...]``) came from."""
        if end <= start:
            return start, start
        if squeezed:
            start, end = self.squeezed_pos[start], self.squeezed_pos[end - 1] + 1
        return self.text_pos[start], self.text_pos[end - 1] + 1

    def at_word_edges(self, start: int, end: int, *, left: bool = True, right: bool = True) -> bool:
        """Whether ``squeezed[start:end]`` neither starts nor ends inside an ASCII word of ``text``
        (``left`` / ``right`` say which ends to check: only ends that are word characters need it)."""
        if end <= start:
            return False
        t_start, t_end = self.squeezed_pos[start], self.squeezed_pos[end - 1] + 1
        if left and t_start > 0 and is_word_char(self.text[t_start - 1]):
            return False
        return not (right and t_end < len(self.text) and is_word_char(self.text[t_end]))


def normalize(original: str) -> Normalized:
    chars: list[str] = []
    pos: list[int] = []
    if original.isascii():
        lowered = original.lower()
        for i, c in enumerate(lowered):
            if c in _KEEP_CONTROLS:
                chars.append(" ")
                pos.append(i)
            elif c.isprintable():
                chars.append(c)
                pos.append(i)
        text = "".join(chars)
    else:
        for i, c in enumerate(original):
            for d in _char(c):
                chars.append(d)
                pos.append(i)
        text = _to_simplified("".join(chars))
    squeezed_pos = tuple(i for i, c in enumerate(text) if not _squeezed_out(c))
    squeezed = "".join(text[i] for i in squeezed_pos)
    return Normalized(original, text, tuple(pos), squeezed, squeezed_pos)


def _to_simplified(text: str) -> str:
    """Traditional to simplified, one character for one so the position map holds. OpenCC's phrase table
    can change a length in rare cases; then each character is converted on its own."""
    if text.isascii():
        return text
    converted = _t2s().convert(text)
    if len(converted) == len(text):
        return converted
    out = []
    for c in text:
        d = _t2s().convert(c)
        out.append(d if len(d) == 1 else c)
    return "".join(out)


def squeeze(text: str) -> str:
    """The squeezed form alone (terms and patterns are prepared with it)."""
    return normalize(text).squeezed
