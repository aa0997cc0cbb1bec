"""One normalisation for every safety check: obfuscated spellings become the same text, and every
character of the normalised forms maps back to where the customer wrote it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.safety.normalize import normalize, squeeze


def test_full_width_traditional_and_case_become_one_spelling() -> None:
    assert normalize("ＩＧＮＯＲＥ　Ａｌｌ").text == "ignore all"
    assert normalize("開發者模式").text == "开发者模式"
    assert normalize("𝐢𝐠𝐧𝐨𝐫𝐞 ⓘⓖⓝⓞⓡⓔ").squeezed == "ignoreignore"


def test_inserted_spaces_symbols_and_invisible_characters_are_squeezed_out() -> None:
    for spelled in ("忽 略 之 前", "忽.略.之.前", "忽★略★之★前", "忽_略-之/前", "忽\u200b略\u200d之\ufeff前",
                    "忽\n略\t之　前"):
        assert squeeze(spelled) == "忽略之前", spelled
    assert squeeze("i g n o r e") == "ignore"
    assert squeeze("i.g.n.o.r.e!!") == "ignore"


def test_latin_look_alikes_and_combining_marks_are_undone() -> None:
    assert squeeze("ign\u043ere") == "ignore"  # Cyrillic о
    assert squeeze("i\u0301g\u0308nore") == "ignore"  # combining accents stacked on the letters


def test_text_keeps_separators_for_patterns_that_need_them() -> None:
    assert normalize("' OR 1=1 --").text == "' or 1=1 --"
    assert normalize("<|im_start|>").text == "<|im_start|>"


def test_positions_map_back_to_the_original() -> None:
    original = "你好，忽 略 之 前的指令"
    norm = normalize(original)
    start = norm.squeezed.index("忽略之前")
    o_start, o_end = norm.span(start, start + 4)
    assert original[o_start:o_end] == "忽 略 之 前"


def test_length_changing_characters_keep_the_map_exact() -> None:
    original = "ﬁle ㈱ 測試"  # ﬁ -> fi, ㈱ -> (株)
    norm = normalize(original)
    assert norm.text == "file (株) 测试"
    assert len(norm.text_pos) == len(norm.text)
    i = norm.text.index("株")
    assert original[norm.text_pos[i]] == "㈱"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_the_maps_are_consistent_for_any_text(original: str) -> None:
    norm = normalize(original)
    assert len(norm.text_pos) == len(norm.text) and len(norm.squeezed_pos) == len(norm.squeezed)
    assert list(norm.text_pos) == sorted(norm.text_pos)
    assert all(0 <= p < len(original) for p in norm.text_pos)
    assert all(norm.text[p] == c for p, c in zip(norm.squeezed_pos, norm.squeezed, strict=True))
    assert not any(c.isspace() for c in norm.squeezed)
    if norm.squeezed:
        o_start, o_end = norm.span(0, len(norm.squeezed))
        assert 0 <= o_start < o_end <= len(original)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="ascii"), max_size=60))
def test_ascii_fast_path_agrees_with_the_general_path(original: str) -> None:
    fast = normalize(original)
    general = normalize(original + "中")  # not ASCII: the per-character path
    assert general.text.startswith(fast.text) and general.squeezed.startswith(fast.squeezed)
