"""Each place that keeps customer text keeps it redacted, and what the dialogue needs as it is: the history
turn (the slots are not touched), the widget's event log, feedback records, the team notice."""

from __future__ import annotations

from types import MappingProxyType

from adapters.web.events import MemoryEventLog
from adapters.web.feedback import FeedbackRecord, MemoryFeedbackStore
from adapters.web.sender import WebSender
from bot.dialogue.handoff import describe
from bot.state import DialogueState, HistoryTurn
from bot.types import ConversationRef, Event, EventKind, Reply

PHONE, ORDER = "13812345678", "YD2405120001"
REF = ConversationRef(channel="web", conversation_id="s-1", user_id="s-1")


def test_history_turns_are_redacted_and_slots_kept() -> None:
    state = DialogueState("k", slots=MappingProxyType({"order_id": ORDER, "phone": PHONE}))
    state = state.with_turn("user", f"订单 {ORDER}，手机 {PHONE}", 20, id="e1")
    assert state.history[-1].text == f"订单 {ORDER}，手机 [手机号]"
    assert dict(state.slots) == {"order_id": ORDER, "phone": PHONE}  # only in the state store, for the idle TTL
    saved = DialogueState.from_json("k", 1, state.to_json())
    assert PHONE not in saved.to_json().replace(f'"phone":"{PHONE}"', "")


def test_the_notice_redacts_slots_and_messages_but_keeps_the_order_number() -> None:
    state = DialogueState("k", slots=MappingProxyType({"order_id": ORDER, "phone": PHONE}))
    legacy = state.replace(history=(HistoryTurn("user", f"旧记录 {PHONE}"),))  # saved before redaction existed
    title, text = describe(REF, legacy, "requested")
    assert PHONE not in title + text and f"order_id={ORDER}" in text and "phone=[手机号]" in text
    assert "旧记录 [手机号]" in text


async def test_the_widget_log_and_feedback_keep_redacted_text() -> None:
    events, feedback = MemoryEventLog(per_session=50, idle_ttl_s=600), MemoryFeedbackStore()
    sender = WebSender(events, feedback)
    await events.append("s-1", {"type": "user", "message_id": "m1", "text": f"手机 {PHONE}"})
    event = Event(id="s-1:m1", kind=EventKind.MESSAGE, ref=REF, text=f"手机 {PHONE}")
    await sender.deliver(event, [Reply(REF, f"好的，已记录您的手机 {PHONE}，订单 {ORDER}")])
    kept = [e for _, e in await events.entries("s-1")]
    assert not [e for e in kept if PHONE in str(e)]
    assert kept[0]["text"] == "手机 [手机号]"
    reply = next(e for e in kept if e["type"] == "reply")
    assert reply["text"] == f"好的，已记录您的手机 [手机号]，订单 {ORDER}"
    pieces = "".join(e["text"] for e in kept if e["type"] == "delta")
    assert pieces == reply["text"]  # the pieces are cut from the redacted answer: none carries half a number
    await feedback.record(FeedbackRecord("web::s-1", "s-1", "m1", "down", f"手机 {PHONE}", reply["text"], "faq",
                                         meta={"note": f"call {PHONE}"}))
    assert PHONE not in str(feedback.records[0]) and feedback.records[0].meta == {"note": "call [手机号]"}
