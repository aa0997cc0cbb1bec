"""Incremental detokenization for one generated row: token ids in, clean text deltas out.

Why not decode each token alone: byte-level BPE splits many Chinese characters
over two or three tokens, and SentencePiece drops a leading space at the start
of a decode. So each step decodes a short window that starts at tokens already
shown (the offsets scheme used by vLLM and TGI) and releases only the new
characters, and only once they do not end in U+FFFD (an unfinished UTF-8
sequence: more bytes are coming). Bytes that turn out invalid are dropped, so
no replacement character ever reaches a customer.

Stop strings are matched on text, not tokens, since a stop string may span
tokens; text that could be the start of a stop string is held back until it
either completes the stop string (cut there) or stops matching (released).
Two decoders share that logic: :class:`IncrementalDecoder` works with any
tokenizer through its decode function; :class:`ByteLevelDecoder` is the fast
path for byte-level BPE (GPT-2, Qwen, Llama 3): a token-to-bytes table and
Python's incremental UTF-8 decoder, one dict-free lookup per token and row,
which matters when a batch of 64 rows is decoded at every step.
Pure Python, no torch.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

REPLACEMENT = "\ufffd"
Decode = Callable[[Sequence[int]], str]


class _StopFilter:
    """Stop-string matching over text deltas, shared by both decoders."""

    __slots__ = ("_pending", "_stops", "stopped")

    def __init__(self, stop: Sequence[str]) -> None:
        self._pending = ""  # decoded text held back because it may begin a stop string
        self._stops = tuple(s for s in stop if s)
        self.stopped = False  # a stop string was seen; later tokens are ignored

    def _release(self, delta: str, *, final: bool) -> str:
        text = self._pending + delta
        if not self._stops:
            self._pending = ""
            return text
        cut = min((i for i in (text.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return text[:cut]
        keep = 0 if final else _held_back(text, self._stops)
        self._pending = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]


class IncrementalDecoder(_StopFilter):
    """Turns one row's tokens into text deltas whose concatenation is the clean full decode."""

    __slots__ = ("_decode", "_ids", "_prefix", "_read")

    def __init__(self, decode: Decode, stop: Sequence[str] = ()) -> None:
        super().__init__(stop)
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0  # window start: tokens before it are shown and never decoded again
        self._read = 0  # tokens before it are shown

    @property
    def num_tokens(self) -> int:
        return len(self._ids)

    def push(self, token_id: int) -> str:
        """Add one generated token; return the text that became safe to show (often "")."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        delta = self._advance(final=False)
        return self._release(delta, final=False) if delta else ""

    def flush(self) -> str:
        """The row is over: release held-back text, dropping bytes that never completed a character."""
        if self.stopped:
            return ""
        return self._release(self._advance(final=True), final=True)

    def _advance(self, *, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        window = self._ids[self._prefix :]
        shown = self._decode(window[: self._read - self._prefix]) if self._read > self._prefix else ""
        text = self._decode(window)
        if len(text) <= len(shown) or (text.endswith(REPLACEMENT) and not final):
            return ""  # nothing new yet, or a character is still incomplete
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(shown) :].replace(REPLACEMENT, "")


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best


class ByteLevelDecoder(_StopFilter):
    """The same contract as IncrementalDecoder, for byte-level BPE, from a token-to-bytes table."""

    __slots__ = ("_n", "_table", "_utf8")

    def __init__(self, table: Sequence[bytes | None], stop: Sequence[str] = ()) -> None:
        super().__init__(stop)
        self._table = table
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")  # keeps unfinished characters inside
        self._n = 0

    @property
    def num_tokens(self) -> int:
        return self._n

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self._n += 1
        piece = self._table[token_id] if 0 <= token_id < len(self._table) else None
        if not piece:
            return ""  # a special token (skipped, as decode(skip_special_tokens=True) does)
        text = self._utf8.decode(piece)
        return self._release(text.replace(REPLACEMENT, ""), final=False) if text else ""

    def flush(self) -> str:
        if self.stopped:
            return ""
        return self._release(self._utf8.decode(b"", final=True).replace(REPLACEMENT, ""), final=True)


def byte_level_table(tokenizer: Any) -> list[bytes | None] | None:
    """Token id to bytes, mirroring the Rust ByteLevel decoder; None when the tokenizer is not byte-level.

    Special tokens map to None (skipped). A token with a character outside the
    byte alphabet (an added token such as a Chinese word) is its UTF-8, as in Rust.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import decoders

    if not isinstance(backend.decoder, decoders.ByteLevel):
        return None
    byte_of = _unicode_to_bytes()
    special = {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
    table: list[bytes | None] = [None] * backend.get_vocab_size(with_added_tokens=True)
    for token, i in backend.get_vocab(with_added_tokens=True).items():
        if i >= len(table):
            table.extend([None] * (i + 1 - len(table)))
        if i in special:
            continue
        try:
            table[i] = bytes(byte_of[c] for c in token)
        except KeyError:
            table[i] = token.encode("utf-8")
    return table


@cache
def _unicode_to_bytes() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to U+0100 onwards."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(keep)
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars, strict=True)}
