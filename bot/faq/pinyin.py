"""The sound of a text: pinyin syllables, so homophone typos (退宽 for 退款, 发漂 for 发票) score like the
word meant, and typed pinyin (tuikuan, fapiao, mima) is read back as the Chinese word it spells."""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Iterable

from pypinyin import Style, lazy_pinyin
from pypinyin.constants import PINYIN_DICT

_CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_LATIN_RUN = re.compile(r"[a-z]+(?: [a-z]+)*")
# Fuzzy pinyin, as phone IMEs offer it: southern speakers merge these, so their typos do too.
_FUZZY = (("zh", "z"), ("ch", "c"), ("sh", "s"))
_FUZZY_FINAL = (("ing", "in"), ("eng", "en"), ("ang", "an"))
_MAX_SYLLABLE = 6  # zhuang, shuang


def _toneless(syllable: str) -> str:
    plain = "".join(c for c in unicodedata.normalize("NFKD", syllable) if not unicodedata.combining(c))
    return plain.replace("ü", "v")


@functools.cache
def syllable_set() -> frozenset[str]:
    """Every toneless Mandarin syllable (about 410), from pypinyin's own table."""
    return frozenset(_toneless(p) for value in PINYIN_DICT.values() for p in value.split(","))


def segment(token: str) -> list[str] | None:
    """``token`` split into pinyin syllables, fewest first (xian, not xi an); None when it is not pinyin."""
    valid = syllable_set()
    n = len(token)
    best: list[list[str] | None] = [None] * (n + 1)
    best[0] = []
    for end in range(1, n + 1):
        for start in range(max(0, end - _MAX_SYLLABLE), end):
            head = best[start]
            piece = token[start:end]
            if head is not None and piece in valid and (best[end] is None or len(head) + 1 < len(best[end])):
                best[end] = [*head, piece]
    return best[n]


def fuzzy(syllable: str) -> str:
    for a, b in _FUZZY:
        if syllable.startswith(a):
            syllable = b + syllable[len(a):]
            break
    for a, b in _FUZZY_FINAL:
        if syllable.endswith(a):
            return syllable[: -len(a)] + b
    return syllable


def chinese_syllables(text: str) -> list[str]:
    return [fuzzy(s) for s in lazy_pinyin(text, style=Style.NORMAL, errors="ignore")]


def syllables(text: str, english: frozenset[str] = frozenset()) -> list[str]:
    """The text as a sequence of (fuzzy) syllables; latin words that are not pinyin stay as they are."""
    out: list[str] = []
    for token in re.findall(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+|[a-z]+|[0-9]+", text):
        if _CJK_RUN.fullmatch(token):
            out += chinese_syllables(token)
        elif token.isalpha() and token not in english and (parts := segment(token)):
            out += [fuzzy(p) for p in parts]
        else:
            out.append(token)
    return out


class TypedPinyin:
    """Reads typed pinyin back as the domain word it spells: a latin run whose syllables spell words of the
    FAQ vocabulary (tuikuan -> 退款, "wo de kuaidi" -> 快递). English words of the English entries are left alone,
    so "change password" is never read as 长额."""

    def __init__(self, words: Iterable[str], english: Iterable[str] = ()) -> None:
        self.english = frozenset(english)
        self._words: dict[tuple[str, ...], str] = {}
        for word in sorted(set(words)):
            if len(word) >= 2 and _CJK_RUN.fullmatch(word):
                self._words.setdefault(tuple(fuzzy(s) for s in chinese_syllables(word)), word)
        self._longest = max((len(k) for k in self._words), default=0)

    def rewrite(self, norm: str) -> str:
        return _LATIN_RUN.sub(lambda m: self._run(m.group(0)), norm) if self._words else norm

    def _run(self, run: str) -> str:
        tokens = run.split()
        out: list[str] = []
        pending: list[str] = []  # consecutive pinyin tokens, read together ("tui kuan")

        def flush() -> None:
            if pending:
                out.append(self._read(pending))
                pending.clear()

        for token in tokens:
            if token not in self.english and segment(token):
                pending.append(token)
            else:
                flush()
                out.append(token)
        flush()
        return " ".join(o for o in out if o)

    def _read(self, tokens: list[str]) -> str:
        parts = [fuzzy(p) for t in tokens for p in (segment(t) or [])]
        words: list[str] = []
        i = 0
        while i < len(parts):
            for size in range(min(self._longest, len(parts) - i), 1, -1):
                word = self._words.get(tuple(parts[i : i + size]))
                if word:
                    words.append(word)
                    i += size
                    break
            else:
                i += 1
        return "".join(words) if words else " ".join(tokens)


class SoundCorrector:
    """Puts right a homophone typo of a domain word (油箱 for 邮箱, 续废 for 续费, 扫吗 for 扫码): a character pair
    that no FAQ phrasing uses, whose exact pinyin is that of one two-character word the FAQ does use, and that
    the segmenter reads as one word or as two lone characters (荐一 in 推荐/一下 and 家火 in 哪家/火锅 straddle
    words: not typos)."""

    def __init__(self, words: Iterable[str], texts: Iterable[str], cut: Callable[[str], list[str]]) -> None:
        self._cut = cut
        self._known: set[str] = set()
        for text in texts:
            for run in _CJK_RUN.findall(text):
                self._known.update(run[i : i + 2] for i in range(len(run) - 1))
        by_sound: dict[tuple[str, ...], set[str]] = {}
        for word in words:
            if len(word) == 2 and _CJK_RUN.fullmatch(word):
                by_sound.setdefault(tuple(lazy_pinyin(word, style=Style.NORMAL)), set()).add(word)
        self._by_sound = {k: next(iter(v)) for k, v in by_sound.items() if len(v) == 1}

    def correct(self, text: str) -> str:
        return _CJK_RUN.sub(lambda m: self._run(m.group(0)), text)

    def _run(self, run: str) -> str:
        if len(run) < 2:
            return run
        sounds = lazy_pinyin(run, style=Style.NORMAL)
        if len(sounds) != len(run):
            return run
        alone: set[int] = set()  # positions of characters the segmenter leaves on their own
        whole: set[int] = set()  # starts of two-character words
        pos = 0
        for token in self._cut(run):
            if len(token) == 1:
                alone.add(pos)
            elif len(token) == 2:
                whole.add(pos)
            pos += len(token)
        out: list[str] = []
        i = 0
        while i < len(run):
            pair = run[i : i + 2]
            suspect = len(pair) == 2 and pair not in self._known and (i in whole or {i, i + 1} <= alone)
            word = self._by_sound.get((sounds[i], sounds[i + 1])) if suspect else None
            if word:
                out.append(word)
                i += 2
            else:
                out.append(run[i])
                i += 1
        return "".join(out)
