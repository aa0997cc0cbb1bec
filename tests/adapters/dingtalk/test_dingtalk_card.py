"""AI-card streaming: the sender's ``stream``/``deliver`` as the hub drives them, against the fake OpenAPI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from adapters.dingtalk.parse import parse_message
from adapters.dingtalk.sender import DingtalkSender
from bot.config import Config
from bot.services import Services
from bot.state.keys import Keys
from bot.types import Event, Reply, ReplyChunk
from tests.adapters.dingtalk.dingtalk_fake import APP_KEY, FakeDingTalk, robot_message

ANSWER = "您好，订单已经发货，预计三天内送达上海，请留意物流信息。"


@pytest.fixture
async def make_adapter(dingtalk_config: Callable[..., Config]) -> AsyncIterator[Callable[..., DingtalkSender]]:
    opened: list[Services] = []

    def make(overrides: dict[str, Any] | None = None) -> DingtalkSender:
        config = dingtalk_config({"dingtalk.card_template_id": "tpl-ai.schema", **(overrides or {})})
        services = Services(config)
        opened.append(services)
        return DingtalkSender(services)

    yield make
    for services in opened:
        await services.close()


async def stream_answer(adapter: DingtalkSender, event: Event, text: str, slow: FakeDingTalk | None = None) -> None:
    """Feed the answer token by token, the way the hub forwards engine deltas. With ``slow``
    the "engine" is slower than DingTalk: it waits for the card to exist, and for an update
    to arrive halfway through (a fast engine may finish before the card is even created)."""
    so_far = ""
    for i, delta in enumerate(text):
        so_far += delta
        await adapter.stream(ReplyChunk(event.ref, event.id, so_far, delta))
        await asyncio.sleep(0)
        if slow is not None and i == 0:
            await slow.wait_for(lambda: bool(calls(slow, "POST", "/v1.0/card/instances/deliver")))
        if slow is not None and i == len(text) // 2:
            await slow.wait_for(lambda: bool(calls(slow, "PUT", "/v1.0/card/streaming")))


def calls(fake: FakeDingTalk, method: str, path: str) -> list[dict[str, Any]]:
    return [body for m, p, body in fake.card_calls if (m, p) == (method, path)]


def answer(event: Event, text: str = ANSWER, source: str = "llm") -> Reply:
    return Reply(event.ref, text, in_reply_to=event.id, source=source)


async def test_a_streamed_answer_is_created_updated_and_finalized(
    make_adapter: Callable[..., DingtalkSender], fake_dingtalk: FakeDingTalk
) -> None:
    adapter = make_adapter({"dingtalk.card_update_interval_s": 0})
    event = parse_message(robot_message("msgCARD1", webhook=fake_dingtalk.webhook()))
    await stream_answer(adapter, event, ANSWER, slow=fake_dingtalk)
    await adapter.deliver(event, [answer(event)])

    (created,) = calls(fake_dingtalk, "POST", "/v1.0/card/instances")
    assert created["cardTemplateId"] == "tpl-ai.schema"
    assert created["cardData"]["cardParamMap"]["flowStatus"] == "1"
    (delivered,) = calls(fake_dingtalk, "POST", "/v1.0/card/instances/deliver")
    assert delivered["outTrackId"] == created["outTrackId"]
    assert delivered["openSpaceId"] == "dtv1.card//IM_ROBOT.manager4521"
    updates = calls(fake_dingtalk, "PUT", "/v1.0/card/streaming")
    partial, final = updates[:-1], updates[-1]
    assert partial, "the card shows text while it is generated"
    assert all(ANSWER.startswith(u["content"]) and not u["isFinalize"] and u["isFull"] for u in partial)
    assert final["content"] == ANSWER and final["isFinalize"] and not final["isError"]
    assert all(u["key"] == "content" and u["outTrackId"] == created["outTrackId"] for u in updates)
    marks = calls(fake_dingtalk, "PUT", "/v1.0/card/instances")
    statuses = [b["cardData"]["cardParamMap"]["flowStatus"] for b in marks]
    assert statuses == ["2", "3"]  # inputing, then finished
    assert fake_dingtalk.card_calls[-1][2]["cardData"]["cardParamMap"]["content"] == ANSWER
    assert fake_dingtalk.webhook_calls == [] and fake_dingtalk.robot_sends == []  # one answer, in the card only


async def test_updates_are_throttled(make_adapter: Callable[..., DingtalkSender], fake_dingtalk: FakeDingTalk) -> None:
    adapter = make_adapter({"dingtalk.card_update_interval_s": 3600})
    event = parse_message(robot_message("msgCARD2", webhook=fake_dingtalk.webhook()))
    await stream_answer(adapter, event, ANSWER * 3, slow=fake_dingtalk)
    await adapter.deliver(event, [answer(event, ANSWER * 3)])
    updates = calls(fake_dingtalk, "PUT", "/v1.0/card/streaming")
    assert [u["isFinalize"] for u in updates] == [False, True]  # 84 tokens, one update in the interval
    assert updates[-1]["content"] == ANSWER * 3


async def test_group_cards_go_to_the_group_and_mention_the_sender(
    make_adapter: Callable[..., DingtalkSender], fake_dingtalk: FakeDingTalk
) -> None:
    adapter = make_adapter()
    event = parse_message(robot_message("msgCARD3", group=True, webhook=fake_dingtalk.webhook(), staff_id="zhao6"))
    await stream_answer(adapter, event, ANSWER)
    await adapter.deliver(event, [answer(event)])
    (delivered,) = calls(fake_dingtalk, "POST", "/v1.0/card/instances/deliver")
    assert delivered["openSpaceId"] == "dtv1.card//IM_GROUP.cidGroup123=="
    assert delivered["imGroupOpenDeliverModel"]["robotCode"] == APP_KEY
    assert "zhao6" in delivered["imGroupOpenDeliverModel"]["atUserIds"]


async def test_a_failed_turn_marks_the_card_failed(
    make_adapter: Callable[..., DingtalkSender], fake_dingtalk: FakeDingTalk
) -> None:
    adapter = make_adapter()
    event = parse_message(robot_message("msgCARD4", webhook=fake_dingtalk.webhook()))
    await stream_answer(adapter, event, "您好，订单", slow=fake_dingtalk)
    apology = "抱歉，系统繁忙，请稍后再试，或回复“转人工”联系人工客服。"
    await adapter.deliver(event, [answer(event, apology, source="system")])  # what the hub sends on an error
    final = calls(fake_dingtalk, "PUT", "/v1.0/card/streaming")[-1]
    assert final["isError"] and final["content"] == apology
    last = calls(fake_dingtalk, "PUT", "/v1.0/card/instances")[-1]["cardData"]["cardParamMap"]
    assert last == {"flowStatus": "5", "content": apology}
    assert fake_dingtalk.webhook_calls == []


async def test_when_the_card_cannot_be_created_the_answer_goes_as_a_message(
    make_adapter: Callable[..., DingtalkSender], fake_dingtalk: FakeDingTalk
) -> None:
    adapter = make_adapter()
    fake_dingtalk.fail_paths.add("/v1.0/card/instances")
    event = parse_message(robot_message("msgCARD5", webhook=fake_dingtalk.webhook()))
    await stream_answer(adapter, event, ANSWER)
    await adapter.deliver(event, [answer(event)])
    assert [p["text"]["content"] for _, p in fake_dingtalk.webhook_calls] == [ANSWER]
    assert calls(fake_dingtalk, "PUT", "/v1.0/card/streaming") == []


async def test_when_the_card_cannot_be_finalized_the_answer_goes_as_a_message(
    make_adapter: Callable[..., DingtalkSender], fake_dingtalk: FakeDingTalk
) -> None:
    adapter = make_adapter()
    fake_dingtalk.fail_paths.add("/v1.0/card/streaming")
    event = parse_message(robot_message("msgCARD6", webhook=fake_dingtalk.webhook()))
    await stream_answer(adapter, event, ANSWER)
    await adapter.deliver(event, [answer(event)])
    assert [p["text"]["content"] for _, p in fake_dingtalk.webhook_calls] == [ANSWER]
    last = calls(fake_dingtalk, "PUT", "/v1.0/card/instances")[-1]["cardData"]["cardParamMap"]
    assert last["flowStatus"] == "5"  # the half-written card does not stay "typing" forever


async def test_answers_that_did_not_stream_are_plain_messages(
    make_adapter: Callable[..., DingtalkSender], fake_dingtalk: FakeDingTalk
) -> None:
    adapter = make_adapter()
    event = parse_message(robot_message("msgCARD7", webhook=fake_dingtalk.webhook()))
    await adapter.deliver(event, [answer(event, source="faq")])
    assert fake_dingtalk.card_calls == []
    assert [p["text"]["content"] for _, p in fake_dingtalk.webhook_calls] == [ANSWER]


async def test_without_a_template_chunks_are_ignored(
    make_adapter: Callable[..., DingtalkSender], fake_dingtalk: FakeDingTalk
) -> None:
    adapter = make_adapter({"dingtalk.card_template_id": ""})
    event = parse_message(robot_message("msgCARD8", webhook=fake_dingtalk.webhook()))
    await stream_answer(adapter, event, ANSWER)
    await adapter.deliver(event, [answer(event)])
    assert fake_dingtalk.card_calls == []
    assert len(fake_dingtalk.webhook_calls) == 1


def track_ids(fake: FakeDingTalk) -> set[str]:
    return {body["outTrackId"] for _, _, body in fake.card_calls}


async def test_a_turn_run_again_on_another_worker_streams_into_the_same_card(
    make_adapter: Callable[..., DingtalkSender], fake_dingtalk: FakeDingTalk, redis_client: aioredis.Redis,
    key_prefix: str,
) -> None:
    """The first worker dies mid-answer; the event goes to a second worker (one Redis), which runs the
    turn again: the customer's card is updated and finalized, no second card, no extra message."""
    first = make_adapter({"dingtalk.card_update_interval_s": 0})
    second = make_adapter({"dingtalk.card_update_interval_s": 0})
    event = parse_message(robot_message("msgCARD9", webhook=fake_dingtalk.webhook()))
    await stream_answer(first, event, ANSWER[:12], slow=fake_dingtalk)
    await first.close()  # gone mid-answer: its updater stops, the card stays as it was
    key = Keys(key_prefix).dingtalk_card(event.dedup_key)
    assert 0 < await redis_client.pttl(key) <= 86400 * 1000

    await stream_answer(second, event, ANSWER)
    await second.deliver(event, [answer(event)])
    assert len(calls(fake_dingtalk, "POST", "/v1.0/card/instances")) == 1
    assert len(calls(fake_dingtalk, "POST", "/v1.0/card/instances/deliver")) == 1
    assert len(track_ids(fake_dingtalk)) == 1
    final = calls(fake_dingtalk, "PUT", "/v1.0/card/streaming")[-1]
    assert final["content"] == ANSWER and final["isFinalize"]
    assert calls(fake_dingtalk, "PUT", "/v1.0/card/instances")[-1]["cardData"]["cardParamMap"]["flowStatus"] == "3"
    assert fake_dingtalk.webhook_calls == [] and fake_dingtalk.robot_sends == []


async def test_an_answer_decided_on_one_worker_and_sent_by_another_finalizes_the_card(
    make_adapter: Callable[..., DingtalkSender], fake_dingtalk: FakeDingTalk
) -> None:
    """The turn's answer was saved (the reply ledger) but its worker died before sending: the next worker
    delivers it without streaming, into the card that already shows most of it."""
    first, second = make_adapter(), make_adapter()
    event = parse_message(robot_message("msgCARD10", webhook=fake_dingtalk.webhook()))
    await stream_answer(first, event, ANSWER, slow=fake_dingtalk)
    await first.close()
    await second.deliver(event, [answer(event)])
    assert len(calls(fake_dingtalk, "POST", "/v1.0/card/instances")) == 1 and len(track_ids(fake_dingtalk)) == 1
    final = calls(fake_dingtalk, "PUT", "/v1.0/card/streaming")[-1]
    assert final["content"] == ANSWER and final["isFinalize"]
    assert fake_dingtalk.webhook_calls == []


async def test_card_answers_list_the_suggestions(
    make_adapter: Callable[..., DingtalkSender], fake_dingtalk: FakeDingTalk
) -> None:
    adapter = make_adapter()
    event = parse_message(robot_message("msgCARD11", webhook=fake_dingtalk.webhook()))
    await stream_answer(adapter, event, ANSWER, slow=fake_dingtalk)
    suggested = Reply(event.ref, ANSWER, quick_replies=("物流怎么查？",), in_reply_to=event.id, source="llm")
    await adapter.deliver(event, [suggested])
    assert calls(fake_dingtalk, "PUT", "/v1.0/card/streaming")[-1]["content"] == f"{ANSWER}\n1. 物流怎么查？"
