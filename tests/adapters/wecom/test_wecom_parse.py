"""Pure parsing of decrypted WeCom payloads into events."""

from __future__ import annotations

import pytest

from adapters.wecom.parse import (
    AIBOT_TENANT,
    MalformedMessage,
    aibot_event,
    aibot_stream_id,
    app_event,
    envelope_encrypt,
    parse_xml,
)
from bot.types import EventKind

from .fake_wecom import text_xml, xml_message

BOMB = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">'
        '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;">]><xml><Encrypt>&lol3;</Encrypt></xml>')
XXE = '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><xml><Encrypt>&xxe;</Encrypt></xml>'


def test_text_message() -> None:
    event = app_event(text_xml("zhangsan", "如何重置密码？", "123"), "sales")
    assert event is not None
    assert (event.id, event.kind, event.text) == ("123", EventKind.MESSAGE, "如何重置密码？")
    assert (event.ref.user_id, event.ref.conversation_id, event.ref.tenant, event.ref.channel) == (
        "zhangsan", "zhangsan", "sales", "wecom")
    assert event.dedup_key == "wecom:sales:123"


def test_image_is_an_attachment() -> None:
    event = app_event(xml_message("u", "image", {"PicUrl": "http://p/1.jpg", "MediaId": "m1", "MsgId": "9"}), "")
    assert event is not None and event.text is None
    assert [(a.kind, a.url, a.media_id) for a in event.attachments] == [("image", "http://p/1.jpg", "m1")]


def test_voice_uses_recognition_when_present() -> None:
    heard = app_event(xml_message("u", "voice", {"MediaId": "v", "Format": "amr", "Recognition": "我要退款",
                                                 "MsgId": "1"}), "")
    silent = app_event(xml_message("u", "voice", {"MediaId": "v", "Format": "amr", "MsgId": "2"}), "")
    assert heard is not None and heard.text == "我要退款"
    assert silent is not None and silent.text is None
    assert silent.attachments[0].kind == "voice" and silent.attachments[0].mime_type == "audio/amr"


def test_events_enter_agent_answered_others_ignored() -> None:
    enter = app_event(xml_message("u", "event", {"Event": "enter_agent", "EventKey": ""}, created=1700000001), "")
    assert enter is not None and enter.kind is EventKind.EVENT and enter.name == "enter_agent"
    assert enter.id == "u:1700000001:enter_agent"
    assert app_event(xml_message("u", "event", {"Event": "click", "EventKey": "menu1"}), "") is None
    assert app_event(xml_message("u", "event", {"Event": "LOCATION"}), "") is None


def test_unknown_type_is_a_message_without_text() -> None:
    event = app_event(xml_message("u", "location", {"Location_X": "23.1", "MsgId": "5"}), "")
    assert event is not None and event.kind is EventKind.MESSAGE
    assert event.text is None and event.attachments == ()


def test_message_without_msgid_gets_a_stable_id() -> None:
    xml = xml_message("u", "text", {"Content": "hi"}, created=42)
    first, again = app_event(xml, ""), app_event(xml, "")
    assert first is not None and again is not None and first.id == again.id == "u:42:text"


@pytest.mark.parametrize("bad", [BOMB, XXE, "<xml><Encrypt>abc", "", "not xml", "<xml/>", "<other><a>1</a></other>",
                                 "<xml><Encrypt>a</Encrypt><Encrypt>b</Encrypt></xml>"])
def test_malformed_envelopes(bad: str) -> None:
    with pytest.raises(MalformedMessage):
        envelope_encrypt(bad.encode())


def test_missing_fields_are_malformed() -> None:
    with pytest.raises(MalformedMessage):
        app_event("<xml><MsgType>text</MsgType></xml>", "")
    with pytest.raises(MalformedMessage):
        parse_xml(BOMB)


def test_aibot_text_in_group_strips_the_mention() -> None:
    msg = {"msgid": "m1", "aibotid": "b", "chatid": "c1", "chattype": "group", "from": {"userid": "lisi"},
           "response_url": "http://x/r", "msgtype": "text", "text": {"content": "@客服小助手 如何重置密码？"}}
    event = aibot_event(msg)
    assert event is not None
    assert event.text == "如何重置密码？"
    assert (event.ref.tenant, event.ref.conversation_id, event.ref.user_id, event.ref.is_group) == (
        AIBOT_TENANT, "c1", "lisi", True)
    assert event.channel_data["response_url"] == "http://x/r"
    assert aibot_stream_id(msg) is None


def test_aibot_mixed_voice_and_stream_refresh() -> None:
    mixed = {"msgid": "m2", "from": {"userid": "u"}, "chattype": "single", "msgtype": "mixed",
             "mixed": {"msg_item": [{"msgtype": "text", "text": {"content": "看这个"}},
                                    {"msgtype": "image", "image": {"url": "http://img"}}]}}
    event = aibot_event(mixed)
    assert event is not None and event.text == "看这个" and event.attachments[0].url == "http://img"
    voice = aibot_event({"msgid": "m3", "from": {"userid": "u"}, "msgtype": "voice", "voice": {"content": "退款"}})
    assert voice is not None and voice.text == "退款" and voice.ref.conversation_id == "u"
    assert aibot_stream_id({"msgtype": "stream", "stream": {"id": "abc"}}) == "abc"
    with pytest.raises(MalformedMessage):
        aibot_stream_id({"msgtype": "stream", "stream": {}})


def test_aibot_events() -> None:
    enter = aibot_event({"msgid": "e1", "from": {"userid": "u"}, "msgtype": "event",
                         "event": {"eventtype": "enter_chat"}})
    assert enter is not None and enter.kind is EventKind.EVENT and enter.name == "enter_agent"
    assert enter.channel_data["event"] == "enter_chat"
    assert aibot_event({"msgid": "e2", "from": {"userid": "u"}, "msgtype": "event",
                        "event": {"eventtype": "template_card_event"}}) is None
    with pytest.raises(MalformedMessage):
        aibot_event({"msgid": "e3", "msgtype": "text"})
    with pytest.raises(MalformedMessage):
        aibot_event({"msgid": ["x"], "from": {"userid": "u"}, "msgtype": "text"})
