"""The AI bot (智能机器人) callback and its stream refresh protocol, end to end."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from adapters.wecom import WecomSender
from adapters.wecom.aibot import stream_id
from bot import messages
from bot.services import Services
from bot.types import ConversationRef, Event, EventKind, Reply, ReplyChunk
from tests.fakes.openai_server import FakeOpenAI

from .conftest import HubFactory
from .fake_wecom import FakeWecom, Sender
from .test_wecom_app import RESET_ANSWER


def text_msg(msg_id: str, content: str, *, user: str = "lisi", response_url: str = "") -> dict[str, Any]:
    return {"msgid": msg_id, "aibotid": "bot1", "chattype": "single", "from": {"userid": user},
            "response_url": response_url, "msgtype": "text", "text": {"content": content}}


def refresh(sid: str) -> dict[str, Any]:
    return {"msgid": f"r-{sid}", "aibotid": "bot1", "chattype": "single", "from": {"userid": "lisi"},
            "msgtype": "stream", "stream": {"id": sid}}


async def test_stream_from_first_message_to_finish(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    status, first = await hub.post_aibot(text_msg("m1", "如何重置密码？"))
    assert status == 200 and first is not None and first["msgtype"] == "stream"
    sid = first["stream"]["id"]
    assert sid and (first["stream"]["finish"] is False or first["stream"]["content"] == RESET_ANSWER)
    # WeCom redelivers the first callback: same stream, no second turn
    status, again = await hub.post_aibot(text_msg("m1", "如何重置密码？"))
    assert status == 200 and again is not None and again["stream"]["id"] == sid
    await hub.settle()
    status, done = await hub.post_aibot(refresh(sid))
    assert status == 200 and done == {"msgtype": "stream", "stream": {"id": sid, "finish": True,
                                                                         "content": RESET_ANSWER}}
    assert hub.services.metrics.turns.labels("wecom", "ok")._value.get() == 1
    assert fake_wecom.sends == []  # AI-bot answers go back in the stream, not message/send


async def test_partial_answers_are_refreshed_until_finish(wecom_hub: HubFactory) -> None:
    hub = await wecom_hub()
    adapter = hub.services.hub.sink("wecom")
    ref = ConversationRef(channel="wecom", conversation_id="lisi", user_id="lisi", tenant="aibot")
    sid = stream_id(ref, "m2")
    status, reply = await hub.post_aibot(refresh(sid))
    assert reply is not None and reply["stream"]["finish"] is True  # an unknown stream is closed politely
    await adapter.stream(ReplyChunk(ref, "m2", "您可以在登录页", "您可以在登录页"))
    status, reply = await hub.post_aibot(refresh(sid))
    assert reply is not None and reply["stream"] == {"id": sid, "finish": False, "content": "您可以在登录页"}
    await adapter.stream(ReplyChunk(ref, "m2", "您可以在登录页点击“忘记密码”", "点击“忘记密码”"))
    status, reply = await hub.post_aibot(refresh(sid))
    assert reply is not None and reply["stream"]["content"] == "您可以在登录页点击“忘记密码”"
    event = Event(id="m2", kind=EventKind.MESSAGE, ref=ref, text="忘记密码", channel_data={"api": "aibot"})
    final = Reply(ref, "您可以在登录页点击“忘记密码”重置。", quick_replies=("如何修改手机号？",))
    await adapter.deliver(event, [final])
    status, reply = await hub.post_aibot(refresh(sid))
    assert status == 200
    assert reply is not None and reply["stream"] == {
        "id": sid, "finish": True, "content": "您可以在登录页点击“忘记密码”重置。\n1. 如何修改手机号？"}


async def test_group_message_and_enter_chat(wecom_hub: HubFactory) -> None:
    hub = await wecom_hub()
    msg = {**text_msg("g1", "@客服助手 如何重置密码？"), "chattype": "group", "chatid": "chat-9"}
    status, first = await hub.post_aibot(msg)
    await hub.settle()
    assert first is not None
    status, done = await hub.post_aibot(refresh(first["stream"]["id"]))
    assert done is not None and done["stream"]["content"] == RESET_ANSWER
    state = await hub.services.store.load("wecom:aibot:chat-9")
    assert [t.text for t in state.history][:1] == ["如何重置密码？"]
    enter = {"msgid": "e1", "aibotid": "bot1", "chattype": "single", "from": {"userid": "lisi"},
             "msgtype": "event", "event": {"eventtype": "enter_chat"}}
    status, greeting = await hub.post_aibot(enter)
    assert status == 200
    assert greeting == {"msgtype": "text", "text": {"content": messages.text("greeting", "zh")}}
    ignored = {**enter, "msgid": "e2", "event": {"eventtype": "template_card_event"}}
    assert await hub.post_aibot(ignored) == (200, None)


async def test_agent_reply_goes_through_response_url(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    url = f"{fake_wecom.url}/cgi-bin/aibot/response?response_code=rc1"
    await hub.post_aibot(text_msg("m3", "如何重置密码？", response_url=url))
    await hub.settle()
    ref = ConversationRef(channel="wecom", conversation_id="lisi", user_id="lisi", tenant="aibot")
    text = "我是人工客服小王，正在为您处理。"
    await hub.services.hub.sink("wecom").deliver(None, [Reply(ref, text, source="agent")])
    assert [(c.params, c.body) for c in fake_wecom.responses] == [
        ({"response_code": "rc1"}, {"msgtype": "markdown", "markdown": {"content": text}})]


async def test_bad_aibot_callbacks(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    url = hub.url("/wecom/aibot/callback")
    params, body = Sender("wrong", hub.config.wecom.aibot_aes_key, "").aibot_post(text_msg("b1", "hi"))
    async with hub.http.post(url, params=params, data=body) as r:
        assert r.status == 403
    params, body = hub.aibot.aibot_post(text_msg("b2", "hi"))
    for bad in (b"not json", b"[]", json.dumps({"encrypt": 5}).encode(), b"{}"):
        async with hub.http.post(url, params=params, data=bad) as r:
            assert r.status == 400, bad
    sealed, encrypt = hub.aibot.seal("<xml>not json</xml>")
    async with hub.http.post(url, params=sealed, data=json.dumps({"encrypt": encrypt})) as r:
        assert r.status == 400
    app_sender = Sender("aibotToken", hub.config.wecom.aibot_aes_key, "corp-not-empty")
    params, body = app_sender.aibot_post(text_msg("b3", "hi"))
    async with hub.http.post(url, params=params, data=body) as r:
        assert r.status == 403  # the AI bot's receive id is empty
    async with hub.http.post(url, params=params, data=b"{" + b" " * (1024 * 1024 + 1)) as r:
        assert r.status == 413
    await hub.settle()
    assert hub.services.metrics.turns.labels("wecom", "ok")._value.get() == 0


async def test_aibot_url_verification(wecom_hub: HubFactory) -> None:
    hub = await wecom_hub()
    params, echostr = hub.aibot.seal("8827364510")
    async with hub.http.get(hub.url("/wecom/aibot/callback"), params={**params, "echostr": echostr}) as r:
        assert r.status == 200 and await r.text() == "8827364510"
    async with hub.http.get(hub.url("/wecom/aibot/callback"), params={**params, "echostr": echostr[::-1]}) as r:
        assert r.status == 403


async def test_llm_tokens_reach_the_stream_before_it_finishes(wecom_hub: HubFactory) -> None:
    """The real path: a (loopback fake) OpenAI-compatible server streams tokens,
    the hub forwards them, WeCom's refreshes see them before ``finish``."""
    release = asyncio.Event()

    async def pace(i: int) -> None:
        if i == 1:
            await release.wait()  # hold the rest until the test saw the first token

    # the first token is longer than the output filter's streamed hold-back (safety.output.tail_chars)
    first_token = "您好，本周末全国各门店都有会员日活动，现场有新品试用、满减优惠和幸运抽奖，会员还可以领取积分，"
    llm = await FakeOpenAI([first_token, "周末活动", "请关注公告。"], pace=pace, model="qwen").start()
    try:
        hub = await wecom_hub({"engine.kind": "openai", "engine.openai.base_url": llm.base_url,
                               "engine.openai.model": "qwen", "faq.threshold": 0.99})  # the model answers
        status, first = await hub.post_aibot(text_msg("m9", "下周末门店有什么线下活动安排吗"))
        assert status == 200 and first is not None
        sid = first["stream"]["id"]
        partial = None
        for _ in range(500):  # until the first token is in the buffer
            _status, partial = await hub.post_aibot(refresh(sid))
            if partial is not None and partial["stream"]["content"]:
                break
            await asyncio.sleep(0.01)
        assert partial is not None and partial["stream"]["id"] == sid and not partial["stream"]["finish"]
        shown = partial["stream"]["content"]
        assert first_token.startswith(shown) and len(shown) < len(first_token)  # the tail is held back
        release.set()
        await hub.settle()
        _status, done = await hub.post_aibot(refresh(sid))
        assert done is not None
        assert done["stream"] == {"id": sid, "finish": True, "content": first_token + "周末活动请关注公告。"}
    finally:
        release.set()
        await llm.close()


async def test_a_worker_process_answers_what_the_gateway_received(wecom_hub: HubFactory,
                                                                  fake_wecom: FakeWecom) -> None:
    """Stream buffers and response_urls are in Redis: a sender in another process (a worker, no routes)
    streams and finishes the answer the gateway's refresh callbacks serve, and sends proactively."""
    hub = await wecom_hub()
    worker = Services(hub.config, role="worker")
    try:
        sender = WecomSender(worker)
        url = f"{fake_wecom.url}/cgi-bin/aibot/response?response_code=rc9"
        status, first = await hub.post_aibot(text_msg("m7", "如何重置密码？", response_url=url))
        await hub.settle()
        assert status == 200 and first is not None
        ref = ConversationRef(channel="wecom", conversation_id="lisi", user_id="lisi", tenant="aibot")
        sid = stream_id(ref, "m8")
        await sender.stream(ReplyChunk(ref, "m8", "**请**在登录页", "**请**在登录页"))
        _status, partial = await hub.post_aibot(refresh(sid))
        assert partial is not None and partial["stream"] == {"id": sid, "finish": False, "content": "**请**在登录页"}
        event = Event(id="m8", kind=EventKind.MESSAGE, ref=ref, text="忘记密码")
        await sender.deliver(event, [Reply(ref, "**请**在登录页点击“忘记密码”。", markdown=True,
                                           quick_replies=("如何修改手机号？",))])
        _status, done = await hub.post_aibot(refresh(sid))
        assert done is not None and done["stream"] == {
            "id": sid, "finish": True, "content": "**请**在登录页点击“忘记密码”。\n1. 如何修改手机号？"}
        await sender.deliver(None, [Reply(ref, "人工客服小王为您服务。", source="agent")])
        assert [c.params for c in fake_wecom.responses] == [{"response_code": "rc9"}]
    finally:
        await worker.close()
