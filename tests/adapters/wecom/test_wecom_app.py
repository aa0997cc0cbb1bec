"""End to end: a real hub server, WeCom callbacks as WeCom sends them, and a
loopback fake WeCom API recording every gettoken and message/send."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

import pytest
import yaml

from adapters.wecom import WecomInbound
from bot import messages
from bot.services import Services
from bot.types import ConversationRef, Reply
from tests.conftest import make_config

from .conftest import AGENT_ID, CORP_ID, SECRET, TOKEN, HubFactory
from .fake_wecom import FakeWecom, Sender, new_aes_key, text_xml, xml_message

RESET_ANSWER = next(e["answer"] for e in yaml.safe_load(
    (Path(__file__).resolve().parents[3] / "config" / "faq.yaml").read_text(encoding="utf-8"))["entries"]
    if e["id"] == "account-reset-password")


async def test_three_redeliveries_one_send(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    xml = text_xml("zhangsan", "如何重置密码？", "7001")
    statuses = [(await hub.post_app(xml)).status for _ in range(3)]
    await hub.settle()
    assert statuses == [200, 200, 200]
    assert len(fake_wecom.sends) == 1
    send = fake_wecom.sends[0]
    assert send.body["touser"] == "zhangsan" and send.body["agentid"] == AGENT_ID
    assert send.body["msgtype"] == "text" and send.body["text"]["content"] == RESET_ANSWER
    assert send.params["access_token"] == "tok1"
    assert [c.params for c in fake_wecom.gettoken] == [{"corpid": CORP_ID, "corpsecret": SECRET}]


async def test_concurrent_redeliveries_one_send(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    xml = text_xml("zhangsan", "如何重置密码？", "7002")
    responses = await asyncio.gather(*(hub.post_app(xml) for _ in range(3)))
    await hub.settle()
    assert [r.status for r in responses] == [200, 200, 200]
    assert len(fake_wecom.sends) == 1


async def test_one_gettoken_for_many_messages(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    await asyncio.gather(*(hub.post_app(text_xml(f"user{i}", "如何重置密码？", f"80{i}")) for i in range(8)))
    await hub.settle()
    assert sorted(c.body["touser"] for c in fake_wecom.sends) == sorted(f"user{i}" for i in range(8))
    assert len(fake_wecom.gettoken) == 1
    assert {c.params["access_token"] for c in fake_wecom.sends} == {"tok1"}


async def test_token_shared_by_a_second_process(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    first = await wecom_hub()
    await first.post_app(text_xml("a", "如何重置密码？", "8101"))
    await first.settle()
    # a second server on the same Redis and app (another process in production) reuses the token
    second = await wecom_hub({"wecom.aes_key": first.config.wecom.aes_key})
    await second.post_app(text_xml("b", "如何重置密码？", "8102"))
    await second.settle()
    assert len(fake_wecom.sends) == 2 and len(fake_wecom.gettoken) == 1


async def test_expired_token_is_refetched_and_the_send_retried_once(wecom_hub: HubFactory,
                                                                    fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    await hub.post_app(text_xml("u", "如何重置密码？", "9001"))
    await hub.settle()
    fake_wecom.send_script = [42001]
    await hub.post_app(text_xml("u", "如何重置密码？", "9002"))
    await hub.settle()
    assert len(fake_wecom.gettoken) == 2
    assert [c.params["access_token"] for c in fake_wecom.sends] == ["tok1", "tok1", "tok2"]
    assert fake_wecom.texts() == [RESET_ANSWER] * 3


async def test_token_refused_twice_is_not_retried_forever(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    fake_wecom.send_script = [40014, 40014]
    await hub.post_app(text_xml("u", "如何重置密码？", "9101"))
    await hub.settle()
    assert len(fake_wecom.sends) == 2 and len(fake_wecom.gettoken) == 2
    assert hub.services.metrics.send_errors.labels("wecom")._value.get() == 1


async def test_rate_limited_send_backs_off_and_retries(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    fake_wecom.send_script = [45009, 45009]
    await hub.post_app(text_xml("u", "如何重置密码？", "9201"))
    await hub.settle()
    assert fake_wecom.texts() == [RESET_ANSWER] * 3
    assert len(fake_wecom.gettoken) == 1
    assert hub.services.metrics.send_errors.labels("wecom")._value.get() == 0


async def test_long_chinese_answer_split_by_bytes(wecom_hub: HubFactory, fake_wecom: FakeWecom,
                                                  tmp_path: Path) -> None:
    step = "请打开“我的-设置-账号与安全”，核对绑定手机号，然后按页面提示完成验证，全程约需三分钟。"
    lines = [f"第{i}步：{step}" for i in range(1, 61)]
    answer = "\n".join(lines) + "\n" + "长" * 900  # the last line alone is over 2048 bytes
    faq = {"entries": [{"id": "long", "category": "general", "lang": "zh", "question": "开通企业账号的完整流程是什么？",
                        "paraphrases": ["企业账号怎么开通"], "answer": answer}]}
    path = tmp_path / "faq.yaml"
    path.write_text(yaml.safe_dump(faq, allow_unicode=True), encoding="utf-8")
    hub = await wecom_hub({"faq.path": str(path)})
    await hub.post_app(text_xml("u", "开通企业账号的完整流程是什么？", "9301"))
    await hub.settle()
    pieces = fake_wecom.texts()
    assert len(pieces) >= 4
    assert all(len(p.encode("utf-8")) <= 2048 for p in pieces)
    assert "".join(pieces).replace("\n", "") == answer.replace("\n", "")
    body_lines = [ln for p in pieces for ln in p.split("\n")]
    assert body_lines[:60] == lines  # no markdown/text line is cut
    assert {c.body["touser"] for c in fake_wecom.sends} == {"u"}


async def test_bad_signature_403_and_nothing_sent(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    forger = Sender("wrong-token", hub.config.wecom.aes_key, CORP_ID)
    resp = await hub.post_app(text_xml("u", "如何重置密码？", "9401"), sender=forger)
    await hub.settle()
    assert resp.status == 403
    params, body = hub.sender.app_post(text_xml("u", "如何重置密码？", "9402"))
    async with hub.http.post(hub.url("/wecom/callback"), params={**params, "nonce": "other"}, data=body) as r:
        assert r.status == 403
        assert (await r.json())["error"] == "bad_signature"
    await hub.settle()
    assert fake_wecom.sends == [] and fake_wecom.gettoken == []


async def test_wrong_corp_id_403(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    other_corp = Sender(TOKEN, hub.config.wecom.aes_key, "ww_another_corp")
    resp = await hub.post_app(text_xml("u", "如何重置密码？", "9501"), sender=other_corp)
    await hub.settle()
    assert resp.status == 403 and fake_wecom.sends == []


async def test_malformed_xml_xxe_and_entity_bombs_400(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    params, _ = hub.sender.app_post(text_xml("u", "x", "1"))
    bodies = [
        "<xml><Encrypt>abc",
        '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><xml><Encrypt>&xxe;</Encrypt></xml>',
        '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><xml><Encrypt>&c;</Encrypt></xml>',
        "",
        "{\"json\": true}",
    ]
    for body in bodies:
        async with hub.http.post(hub.url("/wecom/callback"), params=params, data=body.encode()) as r:
            assert r.status == 400, body
    # well signed, but the decrypted text is an XXE attempt
    xxe = '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><xml><MsgType>&e;</MsgType></xml>'
    assert (await hub.post_app(xxe)).status == 400
    assert (await hub.post_app("<xml><MsgType>text</MsgType></xml>")).status == 400  # no sender
    await hub.settle()
    assert fake_wecom.sends == []
    assert (await hub.post_app(text_xml("u", "如何重置密码？", "9601"))).status == 200  # still serving


async def test_body_over_limit_413(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    params, _ = hub.sender.app_post(text_xml("u", "x", "1"))
    big = b"<xml><Encrypt>" + base64.b64encode(os.urandom(800 * 1024)) + b"</Encrypt></xml>"
    async with hub.http.post(hub.url("/wecom/callback"), params=params, data=big) as r:
        assert r.status == 413
    await hub.settle()
    assert fake_wecom.sends == []


async def test_unknown_type_acknowledged_with_polite_reply(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    resp = await hub.post_app(xml_message("u", "location", {"Location_X": "23.13", "Location_Y": "113.26",
                                                            "Label": "广州", "MsgId": "9701"}))
    await hub.settle()
    assert resp.status == 200
    assert fake_wecom.texts() == [messages.text("unsupported", "zh")]


async def test_enter_agent_greets_other_events_ignored(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    enter = xml_message("u", "event", {"Event": "enter_agent", "EventKey": ""}, created=1700000100)
    for _ in range(2):  # a retried event is answered once too
        assert (await hub.post_app(enter)).status == 200
    assert (await hub.post_app(xml_message("u", "event", {"Event": "click", "EventKey": "k"}))).status == 200
    await hub.settle()
    assert fake_wecom.texts() == [messages.text("greeting", "zh")]


async def test_voice(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    await hub.post_app(xml_message("u", "voice", {"MediaId": "m", "Format": "amr", "MsgId": "9801"}))
    await hub.settle()
    await hub.post_app(xml_message("u", "voice", {"MediaId": "m", "Format": "amr", "Recognition": "如何重置密码？",
                                                  "MsgId": "9802"}))
    await hub.settle()
    unrecognized, recognized = fake_wecom.texts()
    assert "文字" in unrecognized  # asks the user to type
    assert recognized == RESET_ANSWER


async def test_image_is_acknowledged_and_asks_for_words(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    await hub.post_app(xml_message("u", "image", {"PicUrl": "http://p", "MediaId": "m", "MsgId": "9901"}))
    await hub.settle()
    assert len(fake_wecom.sends) == 1 and "文字" in fake_wecom.texts()[0]


async def test_url_verification_with_the_public_vector(wecom_hub: HubFactory) -> None:
    vectors = yaml.safe_load((Path(__file__).parent / "wecom_crypto_vectors.json").read_text(encoding="utf-8"))
    v = vectors["tencent_official"]
    hub = await wecom_hub({"wecom.corp_id": v["corp_id"], "wecom.token": v["token"],
                           "wecom.aes_key": v["encoding_aes_key"]})
    u = v["verify_url"]
    query = {k: u[k] for k in ("msg_signature", "timestamp", "nonce", "echostr")}
    async with hub.http.get(hub.url("/wecom/callback"), params=query) as r:
        assert r.status == 200 and await r.text() == u["expected_reply"]
    async with hub.http.get(hub.url("/wecom/callback"), params={**query, "timestamp": "1409659590"}) as r:
        assert r.status == 403


async def test_stale_timestamp_refused_when_the_window_is_on(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub({"wecom.replay_window_s": 300})
    old = await hub.post_app(text_xml("u", "如何重置密码？", "10001"), timestamp="1409659813")
    fresh = await hub.post_app(text_xml("u", "如何重置密码？", "10002"))
    await hub.settle()
    assert (old.status, fresh.status) == (403, 200)
    assert len(fake_wecom.sends) == 1


async def test_several_apps_in_one_deployment(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    sales_aes = new_aes_key()
    hub = await wecom_hub({"wecom.apps.sales.token": "salesToken", "wecom.apps.sales.aes_key": sales_aes,
                           "wecom.apps.sales.secret": "sales-secret", "wecom.apps.sales.agent_id": 1000005})
    sales = Sender("salesToken", sales_aes, CORP_ID)
    assert (await hub.post_app(text_xml("u", "如何重置密码？", "11001"), path="/wecom/sales/callback",
                               sender=sales)).status == 200
    assert (await hub.post_app(text_xml("u", "如何重置密码？", "11001"))).status == 200  # same MsgId, other app
    assert (await hub.post_app(text_xml("u", "x", "11002"), path="/wecom/sales/callback")).status == 403
    assert (await hub.post_app(text_xml("u", "x", "11003"), path="/wecom/nope/callback")).status == 404
    await hub.settle()
    assert sorted(c.body["agentid"] for c in fake_wecom.sends) == [AGENT_ID, 1000005]
    assert sorted(c.params["corpsecret"] for c in fake_wecom.gettoken) == [SECRET, "sales-secret"]


async def test_overloaded_answers_503_and_the_retry_is_answered(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub({"hub.max_pending": 1})
    fake_wecom.send_gate = asyncio.Event()  # the first answer is stuck in WeCom for now
    assert (await hub.post_app(text_xml("a", "如何重置密码？", "12001"))).status == 200
    second = text_xml("b", "如何重置密码？", "12002")
    assert (await hub.post_app(second)).status == 503
    fake_wecom.send_gate.set()
    await hub.settle()
    assert (await hub.post_app(second)).status == 200  # WeCom's retry
    await hub.settle()
    assert sorted(c.body["touser"] for c in fake_wecom.sends) == ["a", "b"]


async def test_agent_reply_is_sent_proactively(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    ref = ConversationRef(channel="wecom", conversation_id="zhangsan", user_id="zhangsan")
    await hub.services.hub.sink("wecom").deliver(None, [Reply(ref, "您好，我是人工客服小王。", source="agent")])
    assert fake_wecom.texts() == ["您好，我是人工客服小王。"]
    assert fake_wecom.sends[0].body["touser"] == "zhangsan"


def test_missing_callback_secrets_are_a_clear_error() -> None:
    config = make_config({"wecom.corp_id": CORP_ID})
    with pytest.raises(ValueError, match="token and aes_key"):
        WecomInbound(Services(config))


async def test_suggestions_are_numbered_and_markdown_kept_for_markdown_replies(wecom_hub: HubFactory,
                                                                              fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    ref = ConversationRef(channel="wecom", conversation_id="zhangsan", user_id="zhangsan")
    await hub.services.hub.sink("wecom").deliver(None, [
        Reply(ref, "您是想问以下问题吗？", quick_replies=("如何重置密码？", "如何开发票？")),
        Reply(ref, "**退货**请在订单页申请", markdown=True, quick_replies=("退款多久到账",)),
    ])
    first, second = (c.body for c in fake_wecom.sends)
    assert first["msgtype"] == "text"
    assert first["text"]["content"] == "您是想问以下问题吗？\n1. 如何重置密码？\n2. 如何开发票？"
    assert second["msgtype"] == "markdown"
    assert second["markdown"]["content"] == "**退货**请在订单页申请\n1. 退款多久到账"
