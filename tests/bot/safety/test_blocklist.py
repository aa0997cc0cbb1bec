"""The operator blocklist: the file format, obfuscated spellings, word edges for English terms, masking,
and thousands of terms matched in one pass with the same answers as a term-by-term search."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bot.config import ROOT
from bot.safety.blocklist import Blocklist, BlocklistError, Hit, parse_terms
from bot.safety.normalize import is_word_char, normalize


def test_the_file_format_has_comments_and_optional_categories(tmp_path: Path) -> None:
    path = tmp_path / "terms.txt"
    path.write_text("# 注释\n赌博网站\tgambling\n\n冰毒\tdrugs  # 行尾注释\n示例词\n", encoding="utf-8")
    blocklist = Blocklist.from_file(path)
    assert len(blocklist) == 3
    assert blocklist.categories == {"gambling", "drugs", "blocklist"}
    found = [(h.term, h.category) for h in blocklist.find("这有冰毒和示例词")]
    assert found == [("冰毒", "drugs"), ("示例词", "blocklist")]


def test_a_malformed_line_is_named_by_number_not_by_its_term() -> None:
    with pytest.raises(BlocklistError, match="line 2") as err:
        parse_terms("好词\n秘密词\tbad category!\n")
    assert "秘密词" not in str(err.value)


def test_a_missing_file_is_an_error() -> None:
    with pytest.raises(BlocklistError, match="cannot read"):
        Blocklist.from_file("/nonexistent/blocklist.txt")


def test_the_shipped_list_loads_and_keeps_clear_of_ordinary_questions() -> None:
    blocklist = Blocklist.from_file(ROOT / "config" / "blocklist.txt")
    assert len(blocklist) >= 30
    for ordinary in ("我的账号被盗了", "有人让我刷单，是诈骗吗", "可以开发票吗", "USB 接口坏了",
                     "我想赌一把，买最贵的那款"):
        assert blocklist.find(ordinary) == [], ordinary


def test_obfuscated_spellings_are_found_and_masked_where_they_were_written() -> None:
    blocklist = Blocklist([("赌博网站", "gambling"), ("冰毒", "drugs")])
    for text in ("推荐个賭博網站", "推荐个赌 博 网 站", "推荐个赌.博.网.站", "推荐个赌\u200b博网站"):
        hits = blocklist.find(text)
        assert [h.term for h in hits] == ["赌博网站"], text
        assert blocklist.mask(text) == "推荐个" + "*" * (len(text) - 3), text
    assert blocklist.mask("买冰毒吗") == "买**吗"


def test_english_terms_match_whole_words_only() -> None:
    blocklist = Blocklist(["ass", "fuck you", "k粉"])
    assert blocklist.find("my class is passing") == []
    assert [h.term for h in blocklist.find("you a s s!")] == ["ass"]
    assert [h.term for h in blocklist.find("FUCK   YOU")] == ["fuck you"]
    assert [h.term for h in blocklist.find("买K粉")] == ["k粉"]
    assert blocklist.find("pink粉色") == []


def test_an_empty_blocklist_finds_nothing_and_a_symbol_only_term_is_skipped() -> None:
    assert Blocklist([]).find("任何东西") == []
    assert len(Blocklist(["!!!", "  ", "词"])) == 1


def _reference(keys: dict[str, str], text: str) -> set[tuple[str, int, int]]:
    """Term by term, the slow way: what one pass over the automaton must agree with."""
    norm = normalize(text)
    found = set()
    for term, key in keys.items():
        start = norm.squeezed.find(key)
        while start != -1:
            end = start + len(key)
            if norm.at_word_edges(start, end, left=is_word_char(key[0]), right=is_word_char(key[-1])):
                o_start, o_end = norm.span(start, end)
                found.add((term, o_start, o_end))
            start = norm.squeezed.find(key, start + 1)
    return found


def test_thousands_of_terms_in_one_pass_agree_with_a_term_by_term_search() -> None:
    rng = random.Random(12)
    hanzi = [chr(c) for c in range(0x4E00, 0x4E00 + 400)]
    terms: dict[str, str] = {}
    while len(terms) < 5000:
        if rng.random() < 0.8:
            term = "".join(rng.choices(hanzi, k=rng.randint(2, 5)))
        else:
            term = "".join(rng.choices("abcdefghij", k=rng.randint(3, 6)))
        terms.setdefault(term, rng.choice(["gambling", "drugs", "fraud"]))
    pairs = list(terms.items())
    blocklist = Blocklist(pairs)
    assert len(blocklist) == 5000
    keys = {term: normalize(term).squeezed for term in terms}
    chosen = rng.sample(pairs, 300)
    for i in range(200):
        pieces = []
        for _ in range(rng.randint(1, 6)):
            pieces.append("".join(rng.choices(hanzi + list("abcdefghij ，。"), k=rng.randint(0, 12))))
            term = rng.choice(chosen)[0]
            if i % 3 == 0:  # spaced out, as an evader writes it
                term = " ".join(term)
            pieces.append(term)
        text = "".join(pieces)
        got = {(h.term, h.start, h.end) for h in blocklist.find(text)}
        assert got == _reference(keys, text), text
        assert all(isinstance(h, Hit) and h.category == terms[h.term] for h in blocklist.find(text))
