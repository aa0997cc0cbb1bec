"""Digressions inside a flow (issue 14, item 4): while the refund flow waits for the order number, a question
is answered and the step asked again, anger is acknowledged, a request for a person or another route goes
there, and only attempts at the value count toward on_fail. The cancel command leaves the flow."""

from __future__ import annotations

import pytest

from bot.services import Services
from tests.conftest import make_config

from .talk import Customer

ORDER = "YD2405120001"
WRONG = "订单号好像不对"


@pytest.fixture(scope="module")
def services() -> Services:
    return Services(make_config())


async def waiting(services: Services, name: str = "mei") -> Customer:
    mei = Customer(services, name)
    await mei.say("我要退款")
    assert mei.state.node == "refund_order"
    return mei


@pytest.mark.parametrize(("question", "faq_id"), [
    ("退货运费谁出", "refund-return-shipping-fee"),
    ("退款多久到账", "refund-progress"),
    ("请问退货地址是哪里", "refund-return-address"),
    ("怎么开发票", "billing-apply-invoice"),
    ("人工客服几点上班", "human-service-hours"),
])
async def test_a_question_while_waiting_is_answered_then_the_step_asked_again(
    services: Services, question: str, faq_id: str
) -> None:
    mei = await waiting(services)
    replies = await mei.say(question)
    assert replies == [mei.answer(faq_id), mei.prompt("refund_order", "reprompt")]
    assert mei.state.node == "refund_order" and not mei.state.handed_off and mei.state.invalid_answers == 0
    done = await mei.say(ORDER)  # the slot is still collected by the next message
    assert ORDER in done[0] and mei.state.node == "refund_steps" and mei.state.slots == {"order_id": ORDER}


async def test_several_digressions_never_trigger_on_fail(services: Services) -> None:
    mei = await waiting(services)
    for question in ("退货运费谁出", "退款被拒了怎么办", "运费怎么算", "人工服务时间", "取消订单", "怎么转人工"):
        replies = await mei.say(question)
        assert not any(WRONG in r for r in replies), question
        assert replies[-1] == mei.prompt("refund_order", "reprompt"), question
        assert mei.state.node == "refund_order" and not mei.state.handed_off, question
    # attempts at the value still count, and still end at on_fail
    assert WRONG in (await mei.say("12345"))[0]
    assert WRONG in (await mei.say("不知道"))[0]
    await mei.say("yd123")
    assert mei.state.handed_off and mei.state.handoff is not None and mei.state.handoff.reason == "order_number"


async def test_anger_inside_the_flow_is_acknowledged_and_the_step_asked_again(services: Services) -> None:
    mei = await waiting(services)
    replies = await mei.say("等了半天了，气死我了")
    assert len(replies) == 1 and replies[0].startswith(mei.text("calm"))
    assert replies[0].endswith(mei.prompt("refund_order", "reprompt")) and WRONG not in replies[0]
    assert mei.state.node == "refund_order" and mei.state.invalid_answers == 0
    await mei.say("垃圾！到底能不能退！！")  # repeated anger still goes to a person
    assert mei.state.handed_off and mei.state.handoff is not None and mei.state.handoff.reason == "anger"


@pytest.mark.parametrize(("text", "node", "reason"), [
    ("我要投诉", None, "complaint"),
    ("帮我转人工", None, "requested"),
    ("有没有人工", None, "requested"),
    ("app一直闪退，帮我看看", "fix_restart", None),
])
async def test_a_request_for_another_route_leaves_the_collection(
    services: Services, text: str, node: str | None, reason: str | None
) -> None:
    mei = await waiting(services)
    replies = await mei.say(text)
    assert not any(WRONG in r for r in replies)
    assert mei.state.node == node
    assert mei.state.handed_off is (reason is not None)
    if reason is not None:
        assert mei.state.handoff is not None and mei.state.handoff.reason == reason


async def test_asking_again_for_the_same_flow_just_asks_for_the_number(services: Services) -> None:
    mei = await waiting(services)
    assert await mei.say("我就是要退款") == [mei.prompt("refund_order", "reprompt")]
    assert mei.state.invalid_answers == 0


@pytest.mark.parametrize("cancel", ["算了", "不用了", "不退了", "不要了", "取消", "先不了", "算了吧", "never mind"])
async def test_cancel_leaves_the_flow_politely(services: Services, cancel: str) -> None:
    mei = await waiting(services)
    assert await mei.say(cancel) == [mei.text("cancelled")]
    assert mei.state.node == "start" and mei.state.slots == {} and not mei.state.handed_off
    after = await mei.say(ORDER)  # no longer collected
    assert mei.state.slots == {} and not any("收到，订单" in r for r in after)


async def test_cancel_then_a_question_leaves_the_flow_and_answers_it(services: Services) -> None:
    mei = await waiting(services)
    assert await mei.say("算了，我问问运费怎么算") == [mei.text("cancelled"), mei.answer("order-shipping-fee")]
    assert mei.state.node == "start" and mei.state.slots == {}
    assert mei.state.history[-3].text == "算了，我问问运费怎么算"  # the history keeps what the customer wrote


async def test_cancel_words_inside_a_question_are_no_cancel(services: Services) -> None:
    mei = await waiting(services)
    replies = await mei.say("退款的钱是怎么算的，算了多少")
    assert mei.text("cancelled") not in replies and mei.state.node == "refund_order"
    outside = Customer(services, "lan")
    assert outside.text("cancelled") not in await outside.say("算了")  # no flow to leave
