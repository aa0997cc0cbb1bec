"""DialogueState's JSON: typed dialogue fields, compact, and states saved in the
format before them (a ``"data"`` object) still read, so an upgrade does not
reset live conversations."""

from __future__ import annotations

import json

from bot.state import DialogueState, Handoff
from bot.types import ConversationRef

REF = ConversationRef(channel="wecom", conversation_id="group-9", user_id="zhangsan", tenant="corp1", is_group=True)

# Exactly what the previous DialogueState.to_json wrote for a handed-off conversation.
OLD = (
    '{"node": null, "slots": {"order_id": "YD2405120001"}, "history": [["user", "我要退款", 1715500000.0, '
    '{"id": "m1", "intent": "refund", "confidence": 0.93, "sentiment": "neutral"}], ["assistant", "请发送订单号", '
    '1715500000.1, {"source": "dialogue", "node": "refund_order"}]], "handed_off": true, "updated_at": 1715500000.2, '
    '"data": {"lang": "en", "ref": {"channel": "wecom", "conversation_id": "group-9", "user_id": "zhangsan", '
    '"tenant": "corp1", "is_group": true}, "anger": 2, "attempts": 1, '
    '"handoff": {"reason": "order_number", "node": "order_help", "at": 1715500000.2}}}'
)


def test_a_state_in_the_old_shape_keeps_its_dialogue_fields() -> None:
    state = DialogueState.from_json("wecom:corp1:group-9", 7, OLD)
    assert (state.key, state.version, state.node, state.handed_off) == ("wecom:corp1:group-9", 7, None, True)
    assert dict(state.slots) == {"order_id": "YD2405120001"} and state.updated_at == 1715500000.2
    assert [(t.role, t.text) for t in state.history] == [("user", "我要退款"), ("assistant", "请发送订单号")]
    assert state.lang == "en" and state.ref == REF
    assert state.handoff == Handoff(reason="order_number", node="order_help", since=1715500000.2)
    assert state.angry_messages == 2 and state.invalid_answers == 1


def test_an_old_state_saved_again_is_written_in_the_new_shape() -> None:
    old = DialogueState.from_json("k", 7, OLD)
    raw = old.to_json()
    d = json.loads(raw)
    assert "data" not in d
    assert d["lang"] == "en" and d["anger"] == 2 and d["attempts"] == 1 and d["handoff"]["reason"] == "order_number"
    assert DialogueState.from_json("k", 7, raw) == old


def test_old_states_with_some_or_no_data_read_with_defaults() -> None:
    mid_flow = DialogueState.from_json("api::yan", 1, json.dumps({
        "node": "refund_order", "slots": {}, "history": [], "handed_off": False, "updated_at": 1.0,
        "data": {"lang": "zh", "ref": {"channel": "api", "conversation_id": "yan", "user_id": "yan"}},
    }))
    assert mid_flow.lang == "zh" and mid_flow.ref == ConversationRef("api", "yan", "yan")
    assert mid_flow.handoff is None and mid_flow.angry_messages == mid_flow.invalid_answers == 0
    empty = DialogueState.from_json("k", 1, '{"node": null, "slots": {}, "history": [], "handed_off": false, '
                                            '"updated_at": 0.0, "data": {}}')
    assert empty == DialogueState(key="k", version=1)
    odd = DialogueState.from_json("k", 1, '{"data": {"ref": {"channel": "api"}, "anger": "x", "handoff": "agent"}}')
    assert odd == DialogueState(key="k", version=1)  # unreadable values fall back to defaults, not errors


def test_the_new_shape_is_compact_and_round_trips() -> None:
    fresh = DialogueState(key="k")
    assert json.loads(fresh.to_json()) == {"node": None, "slots": {}, "history": [], "handed_off": False,
                                           "updated_at": 0.0}  # defaults are left out
    state = fresh.replace(lang="zh", ref=ConversationRef("api", "yan", "yan"), angry_messages=1)
    d = json.loads(state.to_json())
    assert d["ref"] == {"channel": "api", "conversation_id": "yan", "user_id": "yan"}  # no empty tenant, no False
    assert "handoff" not in d and "attempts" not in d and ", " not in state.to_json()
    full = state.replace(ref=REF, handoff=Handoff("anger", "agent", 2.5), invalid_answers=3, handed_off=True)
    assert DialogueState.from_json("k", 0, full.to_json()) == full


def test_top_level_fields_win_over_a_stale_data_object() -> None:
    raw = json.dumps({"lang": "zh", "anger": 0, "data": {"lang": "en", "anger": 3, "attempts": 2}})
    state = DialogueState.from_json("k", 1, raw)
    assert state.lang == "zh" and state.angry_messages == 0 and state.invalid_answers == 2
