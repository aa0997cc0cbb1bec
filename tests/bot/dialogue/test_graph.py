"""Compiling the dialogue graph: the shipped graph compiles, every mistake is
reported naming its node, and a bad graph stops the server at start."""

from __future__ import annotations

import copy
import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.config import ROOT, ConfigError
from bot.dialogue.graph import GraphError, compile_graph, render
from bot.dialogue.loader import load_graph
from bot.services import Services
from tests.conftest import make_config

INTENTS = {"greeting", "refund", "human", "tech_fault", "goodbye", "other"}


def base() -> dict[str, Any]:
    return {
        "entry": "start",
        "handoff": "agent",
        "nodes": {
            "start": {"kind": "reply", "text": "您好", "edges": [
                {"intent": "refund", "to": "ask"},
                {"default": True, "to": "answer"},
            ]},
            "ask": {"kind": "collect", "slot": "order_id", "prompt": "订单号？", "pattern": r"\d{6}",
                    "edges": [{"default": True, "to": "done"}]},
            "done": {"kind": "reply", "text": "订单 {order_id} 已收到"},
            "answer": {"kind": "faq"},
            "agent": {"kind": "handoff", "text": "转人工"},
        },
    }


def errors(spec: dict[str, Any]) -> str:
    with pytest.raises(GraphError) as info:
        compile_graph(spec, intents=INTENTS)
    return str(info.value)


def test_the_shipped_graph_compiles() -> None:
    from bot.dialogue.intent import IntentRecognizer

    names = IntentRecognizer.load(ROOT / "config" / "intents.yaml").names
    graph = load_graph(ROOT / "config" / "dialogue.yaml", intents=names)
    assert graph.entry == "start" and graph.nodes[graph.handoff].kind == "handoff"
    assert {n.kind for n in graph.nodes.values()} == {"reply", "collect", "faq", "llm", "handoff", "end"}
    assert graph.languages == ("zh", "en")


def test_a_valid_graph_is_frozen() -> None:
    graph = compile_graph(base(), intents=INTENTS)
    assert graph.nodes["ask"].pattern is not None and graph.slots == {"order_id"}
    with pytest.raises(TypeError):
        graph.nodes["x"] = graph.nodes["ask"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        graph.nodes["ask"].retries = 9  # type: ignore[misc]


def test_an_unknown_target_names_the_node() -> None:
    spec = base()
    spec["nodes"]["done"]["edges"] = [{"default": True, "to": "nowhere"}]
    assert "node 'done': edge #1 goes to unknown node 'nowhere'" in errors(spec)


def test_an_unreachable_node_names_the_node() -> None:
    spec = base()
    spec["nodes"]["orphan"] = {"kind": "reply", "text": "没人来"}
    assert "node 'orphan': is unreachable" in errors(spec)


@pytest.mark.parametrize(
    ("node", "fields", "message"),
    [
        ("done", {"kind": "reply"}, "node 'done': a reply node needs 'text'"),
        ("ask", {"kind": "collect", "slot": "order_id", "prompt": "?", "edges": [{"default": True, "to": "done"}]},
         "node 'ask': a collect node needs 'pattern' or 'choices'"),
        ("ask", {"kind": "collect", "prompt": "?", "pattern": "x", "edges": [{"default": True, "to": "done"}]},
         "node 'ask': a collect node needs 'slot'"),
        ("answer", {"kind": "llm"}, "node 'answer': a llm node needs 'prompt'"),
        ("answer", {"kind": "oracle"}, "node 'answer': 'kind' must be one of"),
        ("done", {"kind": "reply", "text": "x", "colour": "red"}, "node 'done': unknown field 'colour'"),
        ("ask", {"kind": "collect", "slot": "s", "prompt": "?", "pattern": "("},
         "node 'ask' pattern: '(' is not a valid regular expression"),
    ],
)
def test_a_node_missing_or_misusing_fields_names_the_node(node: str, fields: dict[str, Any], message: str) -> None:
    spec = base()
    spec["nodes"][node] = fields
    assert message in errors(spec)


def test_edge_mistakes_name_the_node() -> None:
    spec = base()
    spec["nodes"]["start"]["edges"] = [
        {"default": True, "to": "answer"},
        {"intent": "astrology", "to": "ask"},
        {"slot": "colour", "filled": True, "to": "done"},
        {"if": {"mood": "x"}, "to": "done"},
        {"intent": "refund", "slot": "order_id", "to": "done"},
    ]
    text = errors(spec)
    assert "node 'start' edge #2: unknown intent 'astrology'" in text
    assert "node 'start': edge #3 tests slot 'colour', which no collect node fills" in text
    assert "node 'start' edge #4: unknown condition 'mood'" in text
    assert "node 'start' edge #5: needs exactly one of" in text
    assert "node 'start': edge #1 is a default edge but is not last" in text


def test_speech_act_options_on_intent_edges_are_checked() -> None:
    spec = base()
    spec["nodes"]["start"]["edges"][0] = {"intent": "refund", "to": "ask", "when": ["request", "other"],
                                          "offer": {"zh": "申请退款"}}
    graph = compile_graph(spec, intents=INTENTS)
    edge = graph.entry_node.edges[0]
    assert edge.when == {"request", "other"} and edge.offer is not None and graph.offers["申请退款"] is edge

    spec["nodes"]["start"]["edges"] = [
        {"intent": "refund", "to": "ask", "when": "wish"},
        {"intent": "human", "to": "agent", "offer": {"zh": "转人工"}},  # a question would follow it anyway
        {"intent": "tech_fault", "to": "agent", "when": "request", "offer": {"en": "Agent"}},
        {"if": {"matches": "x"}, "to": "done", "when": "request"},
        {"default": True, "to": "answer"},
    ]
    text = errors(spec)
    assert "node 'start' edge #1: unknown speech act 'wish'" in text
    assert "node 'start' edge #2: an 'offer' needs a 'when' without question" in text
    assert "node 'start' edge #3 offer: has no text for language(s) ['zh']" in text
    assert "node 'start' edge #4: unknown field 'when' for an if edge" in text


def test_cancel_commands_must_be_anchored_and_reprompts_need_known_slots() -> None:
    spec = base()
    spec["commands"] = {"cancel": ["算了", "^取消$"], "quit": ["x"]}
    spec["nodes"]["ask"]["reprompt"] = "继续：请发送 {colour}"
    text = errors(spec)
    assert "commands.cancel: '算了' must be anchored with ^" in text
    assert "unknown command 'quit'" in text
    assert "reprompt (zh) uses {colour}" in text


def test_nodes_that_never_wait_must_not_loop() -> None:
    spec = base()
    spec["nodes"]["done"] = {"kind": "reply", "text": "a", "wait": False, "edges": [{"default": True, "to": "again"}]}
    spec["nodes"]["again"] = {"kind": "reply", "text": "b", "wait": False, "edges": [{"default": True, "to": "done"}]}
    assert "is in a loop of nodes that never wait" in errors(spec)


def test_texts_need_every_declared_language_and_known_slots() -> None:
    spec = base()
    spec["languages"] = ["zh", "en"]
    spec["nodes"] = copy.deepcopy(spec["nodes"])
    for node in spec["nodes"].values():
        for key in ("text", "prompt"):
            if key in node:
                node[key] = {"zh": node[key], "en": "en " + node[key]}
    spec["nodes"]["agent"]["text"] = {"zh": "转人工"}
    spec["nodes"]["done"]["text"] = {"zh": "{colour}", "en": "{order_id}"}
    text = errors(spec)
    assert "node 'agent' text: has no text for language(s) ['en']" in text
    assert "node 'done': text (zh) uses {colour}, but no collect node fills a slot of that name" in text


def test_top_level_mistakes() -> None:
    spec = base()
    spec["entry"] = "lobby"
    spec["handoff"] = "done"
    spec["extra"] = 1
    text = errors(spec)
    assert "entry node 'lobby' does not exist" in text
    assert "node 'done': the graph's handoff node must be of kind handoff" in text
    assert "unknown key 'extra'" in text


def test_every_problem_is_reported_at_once() -> None:
    spec = base()
    spec["nodes"]["done"]["edges"] = [{"default": True, "to": "nowhere"}]
    spec["nodes"]["orphan"] = {"kind": "reply", "text": "x"}
    assert "2 problem(s)" in errors(spec)


def test_render_leaves_unfilled_slots_empty() -> None:
    assert render("订单 {order_id}，{name}", {"order_id": "YD1"}) == "订单 YD1，"


def _write(tmp_path: Path, spec: dict[str, Any]) -> Path:
    path = tmp_path / "dialogue.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    return path


def test_services_refuse_a_broken_graph(tmp_path: Path) -> None:
    spec = base()
    spec["nodes"]["done"]["edges"] = [{"default": True, "to": "nowhere"}]
    with pytest.raises(ConfigError, match="node 'done'"):
        Services(make_config({"dialogue.path": str(_write(tmp_path, spec))}))


def test_a_faq_node_must_name_an_existing_entry(tmp_path: Path) -> None:
    spec = base()
    spec["nodes"]["answer"] = {"kind": "faq", "faq_id": "no-such-entry"}
    with pytest.raises(GraphError, match=r"node 'answer': faq_id .* 'no-such-entry'"):
        Services(make_config({"dialogue.path": str(_write(tmp_path, spec))}))


def test_a_disabled_dialogue_uses_the_simple_responder() -> None:
    from bot.responder import SimpleResponder

    services = Services(make_config({"dialogue.enabled": "false"}))
    assert isinstance(services.hub.handler, SimpleResponder)


def test_the_server_does_not_start_with_a_broken_graph(tmp_path: Path) -> None:
    spec = base()
    spec["nodes"]["orphan"] = {"kind": "reply", "text": "x"}
    env = {**os.environ, "BOT__DIALOGUE__PATH": str(_write(tmp_path, spec)), "BOT__SERVER__PORT": "0"}
    proc = subprocess.run([sys.executable, "-m", "bot", "serve"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "node 'orphan': is unreachable" in proc.stderr
