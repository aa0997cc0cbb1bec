"""The LLM history window: bounded by a token budget, newest turns whole,
older ones summarized or dropped."""

from __future__ import annotations

from bot.dialogue.context import estimate_tokens, fit_history, turn_tokens
from bot.state import HistoryTurn


def history(n: int, size: int = 30) -> tuple[HistoryTurn, ...]:
    return tuple(
        HistoryTurn("user" if i % 2 == 0 else "assistant", f"第{i}条消息" + "内容" * size, float(i)) for i in range(n)
    )


def test_estimates_count_chinese_characters_and_english_words() -> None:
    assert estimate_tokens("退款多久到账") == 6
    assert 3 <= estimate_tokens("refund status") <= 6
    assert estimate_tokens("") == 0


def test_a_short_history_is_kept_whole() -> None:
    turns = history(4, 5)
    window = fit_history(turns, 1000)
    assert window.turns == turns and window.summary is None and window.dropped == 0


def test_a_long_history_never_exceeds_the_budget() -> None:
    turns = history(60)
    for budget in (20, 50, 200, 500, 1000):
        window = fit_history(turns, budget)
        assert window.tokens <= budget
        summary = estimate_tokens(window.summary) + 4 if window.summary else 0
        assert sum(turn_tokens(t) for t in window.turns) + summary <= budget
        assert window.turns[:-1] == turns[len(turns) - len(window.turns) : -1]  # the newest, in order
        assert turns[-1].text.startswith(window.turns[-1].text.rstrip("…"))  # the last one clipped if need be


def test_older_turns_are_summarized_newest_first() -> None:
    turns = history(40)
    window = fit_history(turns, 600)
    assert window.summary is not None and window.summary.startswith("此前对话摘要")
    kept_from = len(turns) - len(window.turns)
    assert f"第{kept_from - 1}条消息" in window.summary  # the turn just before the window
    assert "第0条消息" not in window.summary
    lines = window.summary.count("\n")
    assert window.dropped == kept_from - lines
    assert fit_history(turns, 600, lang="en").summary.startswith("Summary of the earlier conversation")


def test_a_single_huge_turn_is_clipped_not_overflowed() -> None:
    turns = (HistoryTurn("user", "很长" * 2000),)
    window = fit_history(turns, 100)
    assert window.tokens <= 100 and window.turns[0].text.endswith("…")


def test_no_budget_means_no_history() -> None:
    window = fit_history(history(3), 0)
    assert window.turns == () and window.summary is None and window.dropped == 3
