"""Chinese-aware text helpers shared by retrieval, intent and channel limits."""

from __future__ import annotations

import re
import unicodedata

_PUNCT = re.compile(r"[\s\u3000-\u303f\uff00-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65!-/:-@\[-`{-~“”‘’…—·]+")
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def normalize(text: str) -> str:
    """NFKC (full-width to half-width), lower case, punctuation to single spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _PUNCT.sub(" ", text).strip()


def detect_lang(text: str) -> str:
    """'zh' when the text has any CJK ideograph, 'en' when it is mostly Latin letters."""
    if CJK.search(text):
        return "zh"
    letters = sum(ch.isascii() and ch.isalpha() for ch in text)
    return "en" if letters >= 2 else "zh"


def split_utf8(text: str, limit: int) -> list[str]:
    """Split into pieces of at most ``limit`` UTF-8 bytes.

    Prefers line breaks (so a markdown line is never cut), then sentence ends,
    and never cuts inside a character.
    """
    if limit < 4:
        raise ValueError("limit must hold at least one character")
    pieces: list[str] = []
    current = ""
    for line in text.splitlines(keepends=True):
        if len((current + line).encode()) <= limit:
            current += line
            continue
        if current:
            pieces.append(current)
            current = ""
        while len(line.encode()) > limit:
            head = _cut(line, limit)
            pieces.append(head)
            line = line[len(head) :]
        current = line
    if current:
        pieces.append(current)
    return [p.rstrip("\n") for p in pieces if p.strip()]


def _cut(line: str, limit: int) -> str:
    """Longest prefix within ``limit`` bytes, ending at a sentence end when one is near."""
    size = 0
    end = 0
    for i, ch in enumerate(line):
        size += len(ch.encode())
        if size > limit:
            break
        end = i + 1
    head = line[:end]
    for mark in ("。", "！", "？", "；", ". ", "! ", "? ", "，", ", "):
        pos = head.rfind(mark)
        if pos >= end // 2:
            return head[: pos + len(mark)]
    return head
