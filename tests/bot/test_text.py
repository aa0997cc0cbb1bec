import pytest

from bot.text import detect_lang, normalize, split_utf8


def test_normalize_folds_full_width_and_punctuation() -> None:
    assert normalize("如何重置密码？ＡＢＣ！") == "如何重置密码 abc"


@pytest.mark.parametrize(("text", "lang"), [("如何重置密码", "zh"), ("How do I reset my password?", "en"),
                                              ("ok 发票", "zh"), ("123", "zh")])
def test_detect_lang(text: str, lang: str) -> None:
    assert detect_lang(text) == lang


def test_split_utf8_never_exceeds_the_byte_limit_or_breaks_characters() -> None:
    text = "您好，这是一段很长的中文客服回复。" * 300
    pieces = split_utf8(text, 2048)
    assert len(pieces) > 1
    assert all(len(p.encode("utf-8")) <= 2048 for p in pieces)
    assert "".join(pieces) == text
    # split at a sentence end, not mid-sentence
    assert all(p.endswith("。") for p in pieces[:-1])


def test_split_utf8_keeps_markdown_lines_whole() -> None:
    lines = [f"{i}. 第{i}步：请打开“我的-设置-账号安全”，按提示操作。" for i in range(200)]
    pieces = split_utf8("\n".join(lines), 2048)
    for piece in pieces:
        assert len(piece.encode()) <= 2048
        for line in piece.split("\n"):
            assert line in lines


def test_split_utf8_handles_four_byte_characters() -> None:
    text = "😀" * 1000
    pieces = split_utf8(text, 2048)
    assert all(len(p.encode()) <= 2048 for p in pieces)
    assert "".join(pieces) == text
