"""One place turns rich replies into what text-only and markdown surfaces show (WeCom, DingTalk)."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from adapters.render import as_markdown, as_text, markdown_of, plain, suggestions, text_of
from bot.types import ConversationRef, Reply

REF = ConversationRef("wecom", "zhangsan", "zhangsan")


def reply(text: str, *quick: str, markdown: bool = False, **meta: str) -> Reply:
    return Reply(REF, text, markdown=markdown, quick_replies=quick, meta=MappingProxyType(meta))


def test_quick_replies_are_numbered_under_the_text() -> None:
    r = reply("您是想问以下问题吗？", "如何重置密码？", "如何开发票？")
    assert as_text(r) == "您是想问以下问题吗？\n1. 如何重置密码？\n2. 如何开发票？"
    assert as_markdown(r) == as_text(r)  # a markdown ordered list as well


def test_without_text_the_list_gets_the_chinese_caption_first() -> None:
    assert as_text(reply("", "退款多久到账", "没有了，谢谢")) == "猜你想问：\n1. 退款多久到账\n2. 没有了，谢谢"
    assert as_text(reply(" ", "When will I get my money?", "No, thanks")) == (
        "You may want to ask:\n1. When will I get my money?\n2. No, thanks")
    assert suggestions(reply("", "ok?", "退款")).startswith("猜你想问：")  # anything Chinese: Chinese
    assert suggestions(reply("", "1", "2")).startswith("猜你想问：")  # nothing to tell by: Chinese
    assert suggestions(reply("", "a", lang="en")).startswith("You may want to ask:")  # the dialogue's language wins


def test_blank_suggestions_are_skipped_and_no_suggestions_add_nothing() -> None:
    assert as_text(reply("好的", " ", "转人工")) == "好的\n1. 转人工"
    assert as_text(reply("  您好  ")) == "您好"
    assert suggestions(reply("您好")) == ""


def test_markdown_replies_lose_their_markup_as_text_and_keep_it_as_markdown() -> None:
    md = ("## 退货流程\n1. 在“我的-订单”点击**申请售后**\n* 选择`退货退款`\n> 审核约 1 天\n"
          "详见[退货政策](https://example.com/refund)，![图](https://example.com/a.png)\n```\ncode\n```\n---")
    r = reply(md, "退款多久到账", markdown=True)
    assert as_text(r) == ("退货流程\n1. 在“我的-订单”点击申请售后\n- 选择退货退款\n审核约 1 天\n"
                          "详见退货政策 (https://example.com/refund)，图\ncode\n1. 退款多久到账")
    assert as_markdown(r) == md + "\n1. 退款多久到账"


def test_plain_replies_are_never_rewritten() -> None:
    text = "价格为 2*3=6 元，文件名 a_b_c.txt，**不是**加粗"
    assert as_text(reply(text)) == text


@pytest.mark.parametrize(
    ("markdown", "text"),
    [
        ("*斜体* 和 __粗体__ 和 ~~删除~~", "斜体 和 粗体 和 删除"),
        ("[https://a.cn](https://a.cn)", "https://a.cn"),
        ('<font color="warning">注意</font><br>下一行', "注意\n下一行"),
        ("# 标题 #", "标题"),
        ("a\n\n\n\nb", "a\n\nb"),
    ],
)
def test_plain(markdown: str, text: str) -> None:
    assert plain(markdown) == text


def test_several_replies_join_with_a_blank_line() -> None:
    replies = [reply("第一条"), reply(""), reply("**第二条**", "好的", markdown=True)]
    assert text_of(replies) == "第一条\n\n第二条\n1. 好的"
    assert markdown_of(replies) == "第一条\n\n**第二条**\n1. 好的"
