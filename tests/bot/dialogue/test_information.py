"""Intent versus information (issue 14, item 3): a question about a process is answered from the FAQ and
offered the flow as a quick reply; a request starts the flow. The same for people and complaints: asking when
people work or for the complaints number is answered, asking for a person hands off."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bot.services import Services
from tests.conftest import make_config

from .helpers import chat
from .talk import Customer

REFUND_PROMPT_ZH = "请发送订单号"


@pytest.fixture(scope="module")
def services() -> Services:
    return Services(make_config())


@pytest.mark.parametrize(("question", "faq_id"), [
    ("退货运费谁出", "refund-return-shipping-fee"),
    ("退货的运费要我自己出吗", "refund-return-shipping-fee"),
    ("退货寄到哪", "refund-return-address"),
    ("退货要寄到什么地址", "refund-return-address"),
    ("退款被拒了怎么办", "refund-rejected"),
    ("售后申请被驳回了怎么办", "refund-rejected"),
    ("尺码不合适怎么换", "refund-exchange"),
    ("退款多久到账", "refund-progress"),
    ("我想问下退款多久到账", "refund-progress"),
])
async def test_a_question_about_refunds_is_answered_and_offers_the_flow(
    services: Services, question: str, faq_id: str
) -> None:
    mei = Customer(services)
    assert await mei.say(question) == [mei.answer(faq_id)]
    assert mei.state.node != "refund_order" and not mei.state.handed_off
    assert "申请退款" in mei.quick
    started = await mei.say("申请退款")  # the offer, tapped or typed, is a request
    assert REFUND_PROMPT_ZH in started[0] and mei.state.node == "refund_order"


async def test_an_english_question_is_answered_and_the_english_offer_starts_the_flow(services: Services) -> None:
    kim = Customer(services, "kim")
    assert await kim.say("how long does a refund take") == [kim.answer("en-request-refund")]
    assert "Request a refund" in kim.quick and kim.state.node != "refund_order"
    started = await kim.say("Request a refund")
    assert "order number" in started[0] and kim.state.node == "refund_order"


@pytest.mark.parametrize("request_", [
    "我要退款", "帮我退了", "这单不要了给我退掉", "能帮我退款吗", "我想把上周买的鞋子退了", "麻烦给我办个退款",
    "退款", "我要退款怎么弄", "I want a refund", "please refund my order",
])
async def test_a_request_starts_the_refund_flow(services: Services, request_: str) -> None:
    mei = Customer(services)
    await mei.say(request_)
    assert mei.state.node == "refund_order", mei.replies
    assert mei.replies[-1].text == mei.prompt("refund_order")


@pytest.mark.parametrize(("question", "faq_id", "offer"), [
    ("人工客服几点上班", "human-service-hours", "转人工"),
    ("客服晚上几点下班", "human-service-hours", None),
    ("人工客服什么时候下班", "human-service-hours", "转人工"),
    ("投诉电话是多少", "human-complaint", "我要投诉"),
    ("投诉电话多少", "human-complaint", "我要投诉"),
])
async def test_questions_about_people_and_complaints_are_answered_not_handed_off(
    services: Services, question: str, faq_id: str, offer: str | None
) -> None:
    mei = Customer(services)
    assert await mei.say(question) == [mei.answer(faq_id)]
    assert not mei.state.handed_off
    if offer is not None:
        assert offer in mei.quick


async def test_other_questions_about_people_are_not_handed_off(services: Services) -> None:
    for question in ("人工服务时间", "怎么转人工", "周末有人工客服吗", "人工客服是24小时的吗"):
        mei = Customer(services)
        replies = await mei.say(question)
        assert replies and not mei.state.handed_off, question


@pytest.mark.parametrize(("request_", "reason"), [
    ("转人工", "requested"), ("人工", "requested"), ("有没有人工", "requested"), ("有人工吗", "requested"),
    ("我要人工客服", "requested"), ("给我找个真人客服", "requested"), ("talk to a human", "requested"),
    ("我要投诉", "complaint"), ("我要投诉你们的快递员", "complaint"),
])
async def test_a_request_for_a_person_still_hands_off(services: Services, request_: str, reason: str) -> None:
    mei = Customer(services)
    await mei.say(request_)
    assert mei.state.handed_off and mei.state.handoff is not None
    assert mei.state.handoff.reason == reason


async def test_the_complaint_offer_hands_off(services: Services) -> None:
    mei = Customer(services)
    await mei.say("投诉电话是多少")
    await mei.say("我要投诉")
    assert mei.state.handed_off and mei.state.handoff is not None and mei.state.handoff.reason == "complaint"


async def test_through_chat_a_question_is_answered_and_the_offer_then_a_digression_come_back(
    http: aiohttp.ClientSession, server: TestServer
) -> None:
    ning = chat(http, server, "ning")
    asked = await ning.say("退货运费谁出")
    assert asked["source"] == "faq" and "申请退款" in asked["quick_replies"]
    started = await ning.say("申请退款")
    assert REFUND_PROMPT_ZH in started["answer"]
    digression = await ning.say("退款多久到账")
    assert [r["source"] for r in digression["replies"]] == ["faq", "dialogue"]
    assert "我们继续办理退款" in digression["replies"][1]["text"]
    done = await ning.say("YD2405120001")
    assert "收到，订单 YD2405120001" in done["answer"]
