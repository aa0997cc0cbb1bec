"""Prompt normalization and fitting into the context budget."""

from __future__ import annotations

from engine.base import ChatMessage
from engine.prompt import fit, normalize


def test_system_messages_merge_in_order_and_turns_merge() -> None:
    msgs = (
        ChatMessage("system", "你是客服。"),
        ChatMessage("system", "FAQ: 七天无理由退货"),
        ChatMessage("user", "你好"),
        ChatMessage("user", "能退货吗"),
        ChatMessage("assistant", "可以"),
    )
    out = normalize(msgs, default_system="unused")
    assert out == [
        {"role": "system", "content": "你是客服。\n\nFAQ: 七天无理由退货"},
        {"role": "user", "content": "你好\n\n能退货吗"},
        {"role": "assistant", "content": "可以"},
    ]


def test_default_system_prompt_only_when_none_given() -> None:
    out = normalize((ChatMessage("user", "hi"),), default_system="be nice")
    assert out[0] == {"role": "system", "content": "be nice"}


def encode(messages: list[dict[str, str]]) -> list[int]:
    """One 'token' per character, to make budgets easy to reason about."""
    return [ord(c) for m in messages for c in f"<{m['role']}>{m['content']}"]


def test_fit_drops_oldest_turns_first() -> None:
    msgs = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "old question " * 5},
        {"role": "assistant", "content": "old answer " * 5},
        {"role": "user", "content": "new?"},
    ]
    ids = fit(encode, msgs, budget=30)
    assert ids == encode([msgs[0], msgs[-1]])


def test_fit_shortens_the_system_text_before_the_question() -> None:
    msgs = [{"role": "system", "content": "FAQ " * 50}, {"role": "user", "content": "退货?"}]
    ids = fit(encode, msgs, budget=40)
    assert len(ids) <= 40
    assert "".join(map(chr, ids)).endswith("<user>退货?")
    assert "".join(map(chr, ids)).startswith("<system>FAQ")


def test_fit_keeps_the_end_of_an_oversized_question() -> None:
    msgs = [{"role": "user", "content": "x" * 100 + "END"}]
    ids = fit(encode, msgs, budget=10)
    assert len(ids) == 10 and "".join(map(chr, ids)).endswith("END")
