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
Pure Python, no torch: the decode function is injected.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"
Decode = Callable[[Sequence[int]], str]


class IncrementalDecoder:
    """Turns one row's tokens into text deltas whose concatenation is the clean full decode."""

    __slots__ = ("_decode", "_ids", "_pending", "_prefix", "_read", "_stops", "stopped")

    def __init__(self, decode: Decode, stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0  # window start: tokens before it are shown and never decoded again
        self._read = 0  # tokens before it are shown
        self._pending = ""  # decoded text held back because it may begin a stop string
        self._stops = tuple(s for s in stop if s)
        self.stopped = False  # a stop string was seen; later tokens are ignored

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


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best
