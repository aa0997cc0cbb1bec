"""Robot message JSON (HTTP callback body and Stream frame data) -> Event."""

from __future__ import annotations

import pytest
from dingtalk_stream import ChatbotMessage

from adapters.dingtalk.parse import ParseError, parse_message
from bot.types import Attachment, EventKind
from tests.adapters.dingtalk.dingtalk_fake import robot_message

WEBHOOK = "https://oapi.dingtalk.com/robot/sendBySession?session=abc"


def test_single_chat_text() -> None:
    event = parse_message(robot_message("msg1", "  发票怎么开？ ", webhook=WEBHOOK, expires_ms=1234))
    assert event.id == "msg1" and event.kind is EventKind.MESSAGE
    assert event.text == "发票怎么开？"
    assert event.ref.channel == "dingtalk"
    assert event.ref.conversation_id == "cidSingle-manager4521"
    assert event.ref.user_id == "manager4521"
    assert event.ref.tenant == "dingcorp1"
    assert event.ref.is_group is False
    data = event.channel_data
    assert data["session_webhook"] == WEBHOOK
    assert data["session_webhook_expires_ms"] == 1234
    assert data["sender_staff_id"] == "manager4521" and data["sender_nick"] == "张三"
    assert data["mentions"] == ()


def test_group_message_knows_the_sender_and_other_mentions() -> None:
    data = robot_message("msg2", "@李四 退款多久到账", group=True)
    data["atUsers"] = [{"dingtalkId": "$:LWCP_v1:$bot"}, {"dingtalkId": "$:x", "staffId": "lisi01"}]
    event = parse_message(data)
    assert event.ref.is_group is True
    assert event.ref.conversation_id == "cidGroup123=="
    assert event.ref.user_id == "manager4521"
    assert event.channel_data["mentions"] == ("lisi01",)  # the robot itself is not a mention
    assert event.channel_data["is_in_at_list"] is True
    assert event.channel_data["conversation_title"] == "售后群"


def test_sender_without_staff_id_uses_the_dingtalk_id() -> None:
    data = robot_message("msg3")
    del data["senderStaffId"]
    event = parse_message(data)
    assert event.ref.user_id == "$:LWCP_v1:$manager4521"
    assert event.channel_data["sender_staff_id"] == ""


def test_rich_text_keeps_text_and_pictures() -> None:
    data = robot_message("msg4", msgtype="richText", content={"richText": [
        {"text": "这个耳机坏了"}, {"type": "picture", "downloadCode": "dc-1"}, {"text": "可以退吗"}]})
    event = parse_message(data)
    assert event.text == "这个耳机坏了\n可以退吗"
    assert event.attachments == (Attachment("image", media_id="dc-1"),)


def test_picture_is_an_attachment() -> None:
    event = parse_message(robot_message("msg5", msgtype="picture", content={"downloadCode": "dc-2"}))
    assert event.text is None
    assert event.attachments == (Attachment("image", media_id="dc-2"),)


def test_audio_arrives_as_its_recognition_text() -> None:
    content = {"duration": 3000, "downloadCode": "dc-3", "recognition": "我的快递到哪了"}
    event = parse_message(robot_message("msg6", msgtype="audio", content=content))
    assert event.text == "我的快递到哪了"
    assert event.attachments == (Attachment("voice", media_id="dc-3"),)
    unrecognised = parse_message(robot_message("msg7", msgtype="audio", content={"downloadCode": "dc-4"}))
    assert unrecognised.text is None and unrecognised.attachments[0].kind == "voice"


@pytest.mark.parametrize("msgtype", ["interactiveCard", "chatRecord", "markdown"])
def test_unknown_kinds_carry_nothing_to_answer(msgtype: str) -> None:
    event = parse_message(robot_message("msg8", msgtype=msgtype, content={"x": 1}))
    assert event.text is None and event.attachments == ()
    assert event.channel_data["msgtype"] == msgtype


def test_the_stream_sdk_message_shape_parses_the_same() -> None:
    """Stream frames carry the same JSON; the SDK's own round trip changes nothing we read."""
    raw = robot_message("msg9", "怎么修改收货地址", group=True, webhook=WEBHOOK)
    via_sdk = ChatbotMessage.from_dict(raw).to_dict()
    assert parse_message(via_sdk).text == parse_message(raw).text == "怎么修改收货地址"
    assert parse_message(via_sdk).ref == parse_message(raw).ref


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"msgId": None}, "msgId"),
        ({"msgId": ""}, "msgId"),
        ({"msgId": ["a"]}, "msgId"),
        ({"conversationId": None}, "conversationId"),
        ({"senderId": None, "senderStaffId": None}, "senderId"),
        ({"conversationType": "3"}, "conversationType"),
        ({"msgId": "x" * 600}, "msgId"),
    ],
)
def test_payloads_we_cannot_answer_are_refused(change: dict, message: str) -> None:
    data = {k: v for k, v in {**robot_message("m"), **change}.items() if v is not None}
    with pytest.raises(ParseError, match=message):
        parse_message(data)


def test_wrongly_typed_optional_fields_do_not_break_parsing() -> None:
    data = robot_message("m10", text="你好", atUsers="nope", senderNick=5, sessionWebhook=7,
                         sessionWebhookExpiredTime="soon", content=[1])
    data["text"] = {"content": 42}
    event = parse_message(data)
    assert event.text is None
    assert event.channel_data["session_webhook"] == "" and event.channel_data["session_webhook_expires_ms"] is None
