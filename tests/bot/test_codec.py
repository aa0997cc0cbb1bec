"""Events and replies survive the queue and the ledger exactly; anything else is a CodecError."""

from __future__ import annotations

import pytest

from bot import codec
from bot.types import Attachment, ConversationRef, Event, EventKind, Reply

REF = ConversationRef("dingtalk", "cid42", "staff7", tenant="corp", is_group=True)


def test_an_event_round_trips_with_platform_data() -> None:
    event = Event(id="msg1", kind=EventKind.MESSAGE, ref=REF, text="我的快递到哪了？😀", lang="zh",
                  attachments=(Attachment("image", url="https://x/y.png"),), context="订单页",
                  channel_data={"session_webhook": "https://oapi.dingtalk.com/x", "mentions": ("a", "b"),
                                "nested": {"k": (1, 2)}}, origin="gw-1")
    back = codec.decode_event(codec.encode_event(event))
    assert back == event
    assert back.channel_data["mentions"] == ("a", "b")  # tuples as the adapter built them


def test_lone_surrogates_do_not_break_the_queue() -> None:
    event = Event(id="m", kind=EventKind.MESSAGE, ref=REF, text="坏\ud800字")
    assert codec.decode_event(codec.encode_event(event)).text == "坏\ud800字"
    replies = (Reply(REF, "答\udfff", quick_replies=("换货",), in_reply_to="m", source="faq"),)
    assert codec.decode_replies(codec.encode_replies(replies)) == replies


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1,2]", b'{"f": 99}', b'{"f": 1, "id": 5}',
                                 b"[" * 100_000 + b"]" * 100_000, b'{"f": 1, "id": "x", "kind": "nope"}'])
def test_unreadable_bytes_are_a_codec_error(raw: bytes) -> None:
    with pytest.raises(codec.CodecError):
        codec.decode_event(raw)


def test_replies_round_trip() -> None:
    replies = (Reply(REF, "第一句", markdown=True, meta={"faq": "refund"}), Reply(REF, "", source="system"))
    assert codec.decode_replies(codec.encode_replies(replies)) == replies
    with pytest.raises(codec.CodecError):
        codec.decode_replies("[[1]]")
