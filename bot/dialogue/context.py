"""The history an LLM node sees, bounded by a token budget.

The newest turns are kept whole while they fit (the newest one clipped if
even it alone does not); older ones are folded into a
short extractive summary (the gist of each dropped turn, newest first, as many
as fit in a quarter of the budget) and whatever still does not fit is dropped.
The window never exceeds the budget, so a long conversation can never
silently overflow the model's context. Token counts are estimated without the
engine's tokenizer, on the high side: one token per CJK character, one per
three other characters, plus a few per message for role markers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from bot.state import HistoryTurn

_PER_MESSAGE = 4  # role markers and separators in chat templates
_SUMMARY_SHARE = 0.25
_GIST_CHARS = 40

_ROLE = {
    "zh": {"user": "用户", "assistant": "客服", "agent": "人工客服", "system": "系统"},
    "en": {"user": "Customer", "assistant": "Assistant", "agent": "Human agent", "system": "System"},
}
_HEADER = {
    "zh": "此前对话摘要（较早的消息已省略）：",
    "en": "Summary of the earlier conversation (older messages omitted):",
}


def estimate_tokens(text: str) -> int:
    """An upper-side estimate that holds for common Chinese/English BPE vocabularies."""
    cjk = sum(1 for ch in text if "\u2e80" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" or "\uff00" <= ch)
    return cjk + math.ceil((len(text) - cjk) / 3)


def turn_tokens(turn: HistoryTurn) -> int:
    return estimate_tokens(turn.text) + _PER_MESSAGE


@dataclass(frozen=True, slots=True)
class ContextWindow:
    turns: tuple[HistoryTurn, ...]  # the newest turns, whole, oldest first
    summary: str | None  # gist of older turns, for the system prompt
    dropped: int  # older turns neither kept nor summarized
    tokens: int  # estimated tokens of turns + summary; never above the budget


def clip(text: str, budget: int) -> str:
    """The longest prefix of ``text`` within ``budget`` estimated tokens."""
    if estimate_tokens(text) <= budget:
        return text
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate_tokens(text[:mid] + "…") <= budget:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo] + "…" if lo else ""


def _gist(turn: HistoryTurn, lang: str) -> str:
    role = _ROLE.get(lang, _ROLE["zh"]).get(turn.role, turn.role)
    text = " ".join(turn.text.split())
    if len(text) > _GIST_CHARS:
        text = text[:_GIST_CHARS] + "…"
    return f"{role}: {text}"


def fit_history(history: Sequence[HistoryTurn], budget: int, lang: str = "zh") -> ContextWindow:
    """Choose the turns and summary an LLM node gets within ``budget`` tokens."""
    if budget <= 0 or not history:
        return ContextWindow((), None, len(history), 0)
    total = sum(turn_tokens(t) for t in history)
    if total <= budget:
        return ContextWindow(tuple(history), None, 0, total)
    room = budget - max(1, int(budget * _SUMMARY_SHARE))
    kept, used = _newest(history, room)
    if not kept and (text := clip(history[-1].text, room - _PER_MESSAGE)):
        # Not even the newest turn fits whole: keep its beginning rather than only a gist.
        last = history[-1]
        kept = (HistoryTurn(last.role, text, last.ts, last.meta),)
        used = turn_tokens(kept[0])
    older = history[: len(history) - len(kept)]
    header = _HEADER.get(lang, _HEADER["zh"])
    lines: list[str] = []
    size = estimate_tokens(header) + _PER_MESSAGE
    for turn in reversed(older):  # the most recent of the older turns matter most
        line = _gist(turn, lang)
        cost = estimate_tokens(line) + 1
        if used + size + cost > budget:
            break
        lines.insert(0, line)
        size += cost
    summary = header + "\n" + "\n".join(lines) if lines else None
    tokens = used + (size if summary else 0)
    return ContextWindow(tuple(kept), summary, len(older) - len(lines), tokens)


def _newest(history: Sequence[HistoryTurn], budget: int) -> tuple[tuple[HistoryTurn, ...], int]:
    kept: list[HistoryTurn] = []
    used = 0
    for turn in reversed(history):
        cost = turn_tokens(turn)
        if used + cost > budget:
            break
        kept.insert(0, turn)
        used += cost
    return tuple(kept), used
