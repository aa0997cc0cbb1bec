"""Multi-turn flows end to end through POST /chat on a real server, with the
shipped config/dialogue.yaml, intents and FAQ."""

from __future__ import annotations

import aiohttp
from aiohttp.test_utils import TestServer

from bot.config import ROOT
from bot.faq import FaqIndex

from .helpers import Admin, Webhook, chat

FAQ = FaqIndex.load(ROOT / "config" / "faq.yaml", 0.3)
ORDER = "YD2405120001"


async def test_faq_question_still_answers_from_the_faq(http: aiohttp.ClientSession, server: TestServer) -> None:
    out = await chat(http, server).say("如何重置密码?")
    assert out["answer"] == FAQ.by_id["account-reset-password"].answer
    assert out["source"] == "faq"


async def test_refund_asks_for_the_order_number_and_validates_it(
    http: aiohttp.ClientSession, server: TestServer, admin: Admin
) -> None:
    alice = chat(http, server)
    asked = await alice.say("我要退款")
    assert "订单号" in asked["answer"] and asked["source"] == "dialogue"

    invalid = await alice.say("12345")
    assert "订单号好像不对" in invalid["answer"]

    answered = await alice.say(f"订单号是 {ORDER.lower()}")
    assert ORDER in answered["answer"] and "退货退款" in answered["answer"]
    assert "退款多久到账" in answered["quick_replies"]

    status, state = await admin.state("alice")
    assert status == 200
    assert state["slots"] == {"order_id": ORDER}
    assert state["node"] == "refund_steps"
    assert [t["role"] for t in state["history"]] == ["user", "assistant"] * 3
    assert state["history"][0]["meta"]["intent"] == "refund"

    follow_up = await alice.say("退款多久到账")  # the node's own edge: a fixed FAQ entry
    assert follow_up["answer"] == FAQ.by_id["refund-progress"].answer


async def test_the_order_number_in_the_first_message_skips_the_question(
    http: aiohttp.ClientSession, server: TestServer
) -> None:
    out = await chat(http, server).say(f"我要退款，订单号 {ORDER}")
    assert ORDER in out["answer"] and "请发送订单号" not in out["answer"]


async def test_repeated_invalid_answers_go_to_a_person(
    http: aiohttp.ClientSession, server: TestServer, admin: Admin, webhook: Webhook
) -> None:
    bob = chat(http, server, "bob")
    await bob.say("我要退款")
    for _ in range(2):  # re-prompted twice (retries: 2)
        assert "订单号好像不对" in (await bob.say("不知道"))["answer"]
    out = await bob.say("还是不知道")
    assert "转接人工客服" in out["answer"]
    _, state = await admin.state("bob")
    assert state["handed_off"] is True
    assert state["data"]["handoff"]["reason"] == "order_number"
    assert len(webhook.received) == 1


async def test_troubleshooting_steps_then_handoff_notifies_the_team(
    http: aiohttp.ClientSession, server: TestServer, webhook: Webhook
) -> None:
    carol = chat(http, server, "carol")
    step1 = await carol.say("app用不了了，一直报错")
    assert "第 1 步" in step1["answer"]
    assert step1["quick_replies"] == ["解决了", "还是不行"]
    step2 = await carol.say("还是不行")
    assert "第 2 步" in step2["answer"]
    handoff = await carol.say("试了，还是不行")
    assert "转接技术支持人工客服" in handoff["answer"]

    assert len(webhook.received) == 1
    notice = webhook.received[0]
    assert "carol" in notice["title"]
    assert "tech_unresolved" in notice["text"] and "app用不了了" in notice["text"]
    assert "/api/agent/reply" in notice["text"]

    silent = await carol.say("在吗？")  # a person has the conversation now
    assert silent["replies"] == [] and silent["answer"] == ""
    assert len(webhook.received) == 1


async def test_a_solved_problem_ends_the_troubleshooting(http: aiohttp.ClientSession, server: TestServer) -> None:
    dan = chat(http, server, "dan")
    await dan.say("页面一直白屏，打不开")
    assert "问题已解决" in (await dan.say("解决了"))["answer"]


async def test_a_faq_question_mid_troubleshooting_is_answered_and_the_step_kept(
    http: aiohttp.ClientSession, server: TestServer
) -> None:
    erin = chat(http, server, "erin")
    await erin.say("app用不了了，一直报错")
    digression = await erin.say("如何重置密码?")
    assert digression["answer"] == FAQ.by_id["account-reset-password"].answer
    assert "第 2 步" in (await erin.say("还是不行"))["answer"]


async def test_agent_reply_is_delivered_then_release_gives_the_bot_back(
    http: aiohttp.ClientSession, server: TestServer, admin: Admin, webhook: Webhook
) -> None:
    frank = chat(http, server, "frank")
    handed = await frank.say("转人工")
    assert "正在为您转接人工客服" in handed["answer"]
    assert "客户要求转人工" in webhook.received[0]["text"]
    async with http.get(server.make_url("/metrics")) as r:
        assert 'kefu_dialogue_handoffs_total{reason="requested"} 1.0' in await r.text()

    hello = "您好，我是客服小王，请问有什么可以帮您？"
    reply = {"channel": "api", "user_id": "frank", "text": hello}
    status, body = await admin.request("POST", "/api/agent/reply", reply)
    assert status == 200 and body["delivered"] is True

    waiting = await frank.say("我的快递三天没动了")
    assert waiting["replies"] == []  # the bot stays quiet while a person answers
    assert [m["text"] for m in waiting["messages"]] == [hello]
    assert waiting["messages"][0]["source"] == "agent"

    _, state = await admin.state("frank")
    roles = [t["role"] for t in state["history"]]
    assert roles == ["user", "assistant", "agent", "user"]

    status, body = await admin.request("POST", "/api/agent/release", {"channel": "api", "user_id": "frank"})
    assert status == 200 and body["released"] is True

    back = await frank.say("如何重置密码?")
    assert back["answer"] == FAQ.by_id["account-reset-password"].answer
    assert [m["source"] for m in back["messages"]] == ["system"]
    assert "智能客服将继续为您服务" in back["messages"][0]["text"]
    _, state = await admin.state("frank")
    assert state["handed_off"] is False


async def test_restart_and_handoff_commands_work_in_the_middle_of_a_collection(
    http: aiohttp.ClientSession, server: TestServer, admin: Admin
) -> None:
    gina = chat(http, server, "gina")
    await gina.say("我要退款")
    restarted = await gina.say("重新开始")
    assert restarted["answer"] == "您好，我是智能客服，请问有什么可以帮您？"
    _, state = await admin.state("gina")
    assert state["node"] == "start" and state["slots"] == {}

    await gina.say("我要退款")
    handed = await gina.say("我要转人工")
    assert "转接人工客服" in handed["answer"]


async def test_a_complaint_goes_to_a_person(http: aiohttp.ClientSession, server: TestServer, admin: Admin) -> None:
    out = await chat(http, server, "hank").say("我要投诉你们的快递员")
    assert "投诉热线" in out["answer"]
    _, state = await admin.state("hank")
    assert state["handed_off"] is True and state["data"]["handoff"]["reason"] == "complaint"


async def test_repeated_anger_goes_to_a_person(
    http: aiohttp.ClientSession, server: TestServer, admin: Admin, webhook: Webhook
) -> None:
    ivy = chat(http, server, "ivy")
    first = await ivy.say("气死我了，怎么还没发货")
    assert "转接" not in first["answer"]
    _, state = await admin.state("ivy")
    assert state["history"][0]["meta"]["sentiment"] == "angry"  # flagged on the turn
    second = await ivy.say("垃圾，到底什么时候发货！！")
    assert "人工客服专员" in second["answer"]
    _, state = await admin.state("ivy")
    assert state["handed_off"] is True and state["data"]["handoff"]["reason"] == "anger"
    assert "情绪激动" in webhook.received[-1]["text"]


async def test_unsure_intent_gets_a_clarifying_question(http: aiohttp.ClientSession, server: TestServer) -> None:
    jay = chat(http, server, "jay")
    out = await jay.say("我想问个事")
    assert "哪一类问题" in out["answer"]
    assert "退货退款" in out["quick_replies"]
    picked = await jay.say("退货退款")  # choosing a label is a confident intent
    assert "订单号" in picked["answer"]


async def test_english_customer_gets_english_answers(http: aiohttp.ClientSession, server: TestServer) -> None:
    kim = chat(http, server, "kim")
    faq = await kim.say("How do I reset my password?")
    assert faq["answer"] == FAQ.by_id["en-reset-password"].answer
    asked = await kim.say("I bought something last week and want my money back")
    assert "order number" in asked["answer"]
    done = await kim.say(ORDER)  # no words: the conversation stays in English
    assert f"order {ORDER}" in done["answer"] and "Anything else?" in done["answer"]
    bye = await kim.say("thanks, bye")
    assert "goodbye" in bye["answer"].lower()


async def test_greeting_and_goodbye(http: aiohttp.ClientSession, server: TestServer, admin: Admin) -> None:
    leo = chat(http, server, "leo")
    assert "有什么可以帮您" in (await leo.say("你好"))["answer"]
    await leo.say("我要退款")
    await leo.say(ORDER)
    assert "再见" in (await leo.say("好的，谢谢，再见"))["answer"]
    _, state = await admin.state("leo")
    assert state["slots"] == {} and state["node"] is None
