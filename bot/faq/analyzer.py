"""How a text is read before matching: one pass shared by the query and every FAQ phrasing, so both sides
are rewritten the same way (fillers out, synonyms canonical, typed pinyin read as words), then cut into the
three views the index scores: characters, jieba words, pinyin syllables."""

from __future__ import annotations

import functools
import itertools
import logging
import re
from collections.abc import Iterable

import jieba

from bot.faq.pinyin import SoundCorrector, TypedPinyin, syllables
from bot.faq.synonyms import Synonyms
from bot.text import normalize

jieba.setLogLevel(logging.WARNING)

# Function words that make unrelated questions look alike ("…是什么", "怎么…"). The kind of question they ask
# is weighed separately (bot/faq/head.py), not by sharing them.
STOPWORDS = frozenset(
    "的 了 吗 呢 吧 啊 呀 么 嘛 哦 我 你 您 他 她 它 我们 你们 是 在 有 和 与 怎么 怎样 如何 什么 为什么 "
    "哪 哪里 哪个 可以 能 能不能 可不可以 请问 一下 一个 这个 那个 还 就 都 也 要 想 会 给 把 被 让 "
    "不 没 吧 啥 咋 到底 现在 已经 怎么弄 弄 搞 下 个 这 那 又 再 才 呗 么 得 着 过 "
    "a an the is are do does i you my me to of for how what can it in on and or be".split()
)
_FUNCTION_CHARS = re.compile(
    "什么|怎么|怎样|如何|为什么|可以|能不能|可不可以|请问|一下|你们|我们|吗|呢|吧|啊|呀|的|了|么|是|我|你|您"
)
_CLAUSE_MIN_CHARS = 4


def content(text: str) -> str:
    """Text without function words, for the character and sound views. Falls back to the whole text when
    almost nothing would be left ("你们是做什么的")."""
    stripped = " ".join(_FUNCTION_CHARS.sub(" ", text).split())
    return stripped if len(stripped.replace(" ", "")) >= 2 else text


@functools.lru_cache(maxsize=4)
def _tokenizer(words: frozenset[str]) -> jieba.Tokenizer:
    """One jieba dictionary per word list, shared by every index built with it: a dictionary is ~65 MB, and it
    is only read once built (a process, or a test run, builds many indexes of the same FAQ)."""
    tokenizer = jieba.Tokenizer()
    for word in sorted(words):
        tokenizer.add_word(word, freq=20000)
    tokenizer.initialize()
    return tokenizer


class Analyzer:
    """Owns its own jieba dictionary (with the synonym table's words added), so the FAQ's vocabulary never
    changes how the intent recognizer, which uses jieba's global one, cuts a sentence."""

    def __init__(self, synonyms: Synonyms, phrasings: Iterable[str]) -> None:
        self.synonyms = synonyms
        self.tokenizer = _tokenizer(frozenset(synonyms.words))
        texts = [synonyms.rewrite(normalize(p)) for p in phrasings]
        english = {w for t in texts if t.isascii() for w in re.findall(r"[a-z]+", t)}
        vocab = {w for t in texts for w in self.tokenizer.lcut(t)} | set(synonyms.canonical) | synonyms.words
        self.english = frozenset(english)
        self.typed = TypedPinyin(vocab, english)
        self.sound = SoundCorrector(vocab, [*texts, *synonyms.canonical], self.tokenizer.lcut)

    def prepare(self, text: str) -> str:
        """The normalized, rewritten text every view starts from."""
        first = self.synonyms.rewrite(normalize(text))
        return self.synonyms.rewrite(self.sound.correct(self.typed.rewrite(first)))

    def words(self, prepared: str) -> list[str]:
        return [w for w in self.tokenizer.lcut_for_search(prepared) if w.strip() and w not in STOPWORDS]

    def sounds(self, prepared: str) -> list[str]:
        """Syllable unigrams and bigrams of the content."""
        syl = syllables(content(prepared), self.english)
        return syl + [a + "_" + b for a, b in itertools.pairwise(syl)]

    @staticmethod
    def clauses(prepared: str) -> list[str]:
        """The message's clauses (punctuation became spaces in normalize), for long messages whose question is
        one part among context and padding; the whole text is always scored too."""
        parts = [p for p in prepared.split() if len(p) >= _CLAUSE_MIN_CHARS]
        if len(parts) < 2:
            return []
        pairs = [a + " " + b for a, b in itertools.pairwise(parts)] if len(parts) > 2 else []
        return parts + pairs
