"""IncrementalDecoder: UTF-8 split over tokens, stop strings over tokens, equality with a full decode."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from engine.streaming import REPLACEMENT, IncrementalDecoder


def byte_decode(ids: Sequence[int]) -> str:
    """A byte-level 'tokenizer': token i is byte i, like BPE fragments of a Chinese character."""
    return bytes(ids).decode("utf-8", errors="replace")


def run(decoder: IncrementalDecoder, ids: Sequence[int]) -> list[str]:
    deltas = [decoder.push(i) for i in ids]
    deltas.append(decoder.flush())
    return [d for d in deltas if d]


def test_multibyte_characters_are_held_until_complete() -> None:
    text = "您好，订单已发货。OK"
    deltas = run(IncrementalDecoder(byte_decode), text.encode())
    assert "".join(deltas) == text
    assert all(REPLACEMENT not in d for d in deltas)
    assert deltas[0] == "您"  # released as soon as its third byte arrived, not at the end


def test_invalid_bytes_are_dropped_not_shown() -> None:
    ids = [*"退".encode(), 0xE5, *"款".encode(), 0xE8, 0xBF]  # a stray lead byte, and a cut-off character
    deltas = run(IncrementalDecoder(byte_decode), ids)
    assert "".join(deltas) == "退款"
    assert all(REPLACEMENT not in d for d in deltas)


def test_stop_string_across_tokens_cuts_and_stops() -> None:
    dec = IncrementalDecoder(byte_decode, stop=["<END>", "用户："])
    deltas = run(dec, "好的，稍等。用户：还有".encode())
    assert "".join(deltas) == "好的，稍等。"
    assert dec.stopped
    assert dec.push(ord("x")) == ""


def test_partial_stop_prefix_is_held_then_released() -> None:
    dec = IncrementalDecoder(byte_decode, stop=["<END>"])
    out = [dec.push(b) for b in b"a<EN"]
    assert "".join(out) == "a"  # "<EN" might become "<END>"
    assert dec.push(ord("x")) == "<ENx"
    assert dec.flush() == ""


def test_partial_stop_prefix_is_released_at_the_end() -> None:
    dec = IncrementalDecoder(byte_decode, stop=["<END>"])
    assert "".join(run(dec, b"done <E")) == "done <E"


@pytest.mark.slow
def test_real_tokenizer_stream_equals_full_decode(tiny_model: Path) -> None:
    """With the tiny BPE some characters take several tokens; deltas must still add up to decode()."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    text = "非常抱歉给您带来不便。蓝牙耳机签收后七天内支持无理由退货，Refund in 3 days."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = [tok.decode([i]) for i in ids]
    if not any(REPLACEMENT in p for p in pieces):
        pytest.fail("the tiny tokenizer should split some characters over tokens")
    decode = lambda xs: tok.decode(list(xs), skip_special_tokens=True)  # noqa: E731
    deltas = run(IncrementalDecoder(decode), ids)
    assert "".join(deltas) == tok.decode(ids) == text
    assert all(REPLACEMENT not in d for d in deltas)


@pytest.mark.slow
def test_byte_level_fast_path_matches_the_generic_decoder(tiny_model: Path) -> None:
    """Same deltas' concatenation as decode(), on real text and on random (often invalid) token soup."""
    import random

    from transformers import AutoTokenizer

    from engine.streaming import ByteLevelDecoder, byte_level_table

    tok = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    table = byte_level_table(tok)
    assert table is not None and len(table) == len(tok)
    decode = lambda xs: tok.decode(list(xs), skip_special_tokens=True)  # noqa: E731
    rng = random.Random(0)
    samples = [tok("您好，订单12345已发货。Thanks!<|im_end|>", add_special_tokens=False)["input_ids"]]
    samples += [[rng.randrange(len(tok)) for _ in range(rng.randint(1, 40))] for _ in range(200)]
    for ids in samples:
        fast = run(ByteLevelDecoder(table, stop=["<END>"]), ids)
        slow = run(IncrementalDecoder(decode, stop=["<END>"]), ids)
        assert "".join(fast) == "".join(slow) == decode(ids).replace(REPLACEMENT, "").split("<END>")[0]
        assert all(REPLACEMENT not in d for d in fast)
