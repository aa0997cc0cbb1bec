"""The dialogue graph: node kinds, edges and ``compile_graph``.

A graph is written as plain data (``config/dialogue.yaml``) and compiled once
at start into frozen objects. Compilation rejects everything that would
otherwise surface as a confused customer at run time: an edge to an unknown
node, a node nothing leads to, a node missing a field its kind needs, an
unknown intent name, a bad regular expression, a text missing a language, a
template naming an unknown slot, or nodes that pass control to each other
without ever waiting for the customer. Every problem is reported, each naming
its node, and the server does not start.

Node kinds:

- ``reply``: fixed text (slot placeholders allowed) and optional quick replies.
- ``collect``: asks for a slot and validates the answer (``pattern`` or
  ``choices``), re-prompting up to ``retries`` times before ``on_fail``.
- ``faq``: answers from the FAQ (a fixed ``faq_id`` or the customer's
  question), with the LLM behind it when the FAQ is not confident.
- ``llm``: the LLM with a prompt template, an optional LoRA adapter and the
  token-bounded history; a confident FAQ answer wins when ``faq_first``.
- ``handoff``: hands the conversation to a person and notifies the team.
- ``end``: says goodbye and forgets the slots.

Edges are tried in order: ``intent`` (a confident intent), ``slot`` (filled,
missing, equal to or matching a value), ``if`` (a condition on the message)
and ``default``. The entry node's edges are also the global routes tried from
any node (see :mod:`bot.dialogue.manager`).

An intent edge may also say ``when``: the speech acts it is followed for
(bot/dialogue/speech_act.py: request, question, other). ``when: [request,
other]`` starts a flow for 我要退款 but not for 退款多久到账, which the FAQ answers;
its ``offer`` is the quick reply added to that answer, and typing or tapping it
is a request that follows the edge. An offer on an edge a question would follow
anyway could never be shown, so compilation rejects it.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from bot.config import ConfigError
from bot.dialogue.speech_act import ACTS

NODE_KINDS = ("reply", "collect", "faq", "llm", "handoff", "end")
_COMMON = {"kind", "edges", "quick_replies"}
_FIELDS: dict[str, set[str]] = {
    "reply": _COMMON | {"text", "wait"},
    "collect": _COMMON | {"slot", "prompt", "pattern", "choices", "invalid", "retries", "on_fail", "transform",
                          "reprompt"},
    "faq": _COMMON | {"faq_id", "wait"},
    "llm": _COMMON | {"prompt", "adapter", "faq_first", "faq_context", "wait"},
    "handoff": {"kind", "text", "reason", "quick_replies"},
    "end": {"kind", "text", "quick_replies"},
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "reply": ("text",),
    "collect": ("slot", "prompt"),
    "faq": (),
    "llm": ("prompt",),
    "handoff": ("text",),
    "end": ("text",),
}
_TOP = {"entry", "handoff", "anger", "languages", "commands", "retries", "clarify", "texts", "nodes"}
_EDGE_KINDS = ("intent", "slot", "if", "default")
_CONDITION_KEYS = {"matches", "sentiment", "lang", "channel"}
_SENTIMENTS = {"positive", "neutral", "negative", "angry"}
_TRANSFORMS = {"none", "upper", "lower"}
TEXT_NAMES = ("clarify", "invalid", "unknown", "cancelled", "calm")
COMMANDS = ("restart", "cancel", "handoff")


class GraphError(ConfigError):
    """The dialogue graph cannot run; the message names every offending node."""


@dataclass(frozen=True, slots=True)
class Text:
    """A fixed text in several languages; falls back to the first one given."""

    by_lang: Mapping[str, str]

    def get(self, lang: str) -> str:
        return self.by_lang.get(lang) or next(iter(self.by_lang.values()))


@dataclass(frozen=True, slots=True)
class Condition:
    matches: re.Pattern[str] | None = None  # searched in the message text
    sentiment: frozenset[str] = frozenset()  # the message's sentiment label is one of these
    lang: str | None = None
    channel: str | None = None


@dataclass(frozen=True, slots=True)
class Edge:
    to: str
    kind: str  # intent | slot | if | default
    intents: frozenset[str] = frozenset()
    slot: str | None = None
    filled: bool | None = None
    equals: str | None = None
    slot_matches: re.Pattern[str] | None = None
    condition: Condition | None = None
    faq_first: bool = True  # intent edges: a near-exact FAQ match answers instead
    when: frozenset[str] = frozenset()  # intent edges: the speech acts it is followed for (empty: any)
    offer: Text | None = None  # intent edges with `when`: the quick reply that follows it, added to a question's answer


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    kind: str
    edges: tuple[Edge, ...] = ()
    text: Text | None = None
    quick_replies: tuple[Text, ...] = ()
    wait: bool = True  # False: follow the edges at once instead of waiting for the customer
    # collect
    slot: str | None = None
    prompt: Text | None = None  # collect: the question; llm: the instructions template
    pattern: re.Pattern[str] | None = None
    choices: tuple[str, ...] = ()
    invalid: Text | None = None
    reprompt: Text | None = None  # collect: the question again, after answering something else in between
    retries: int = 2
    on_fail: str | None = None
    transform: str = "none"
    # faq / llm / handoff
    faq_id: Text | None = None
    adapter: str | None = None
    faq_first: bool = True
    faq_context: bool = True  # llm: give the model the closest FAQ entries as reference
    reason: str = ""

    @property
    def default(self) -> Edge | None:
        return next((e for e in self.edges if e.kind == "default"), None)

    @property
    def explicit(self) -> tuple[Edge, ...]:
        return tuple(e for e in self.edges if e.kind != "default")


@dataclass(frozen=True, slots=True)
class Graph:
    entry: str
    handoff: str  # where 转人工 goes
    anger: str  # where repeated anger goes (a handoff node; the handoff node by default)
    nodes: Mapping[str, Node]
    languages: tuple[str, ...]
    restart: tuple[re.Pattern[str], ...]
    handoff_commands: tuple[re.Pattern[str], ...]
    clarify_intents: tuple[str, ...]
    texts: Mapping[str, Text]
    slots: frozenset[str] = field(default=frozenset())
    cancel: tuple[re.Pattern[str], ...] = ()  # leave the flow; anchored at the start of the message

    @property
    def entry_node(self) -> Node:
        return self.nodes[self.entry]

    @property
    def offers(self) -> Mapping[str, Edge]:
        """Every offer text, in every language, to the edge it follows."""
        return MappingProxyType({
            text: edge
            for node in self.nodes.values() for edge in node.edges if edge.offer is not None
            for text in edge.offer.by_lang.values()
        })


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")


def compile_graph(
    spec: Mapping[str, Any],
    *,
    intents: Iterable[str],
    adapters: Iterable[str] | None = None,
    source: str = "dialogue graph",
) -> Graph:
    """Check and freeze a graph spec; raises :class:`GraphError` listing every problem."""
    p = _Problems()
    known_intents = frozenset(intents)
    if not isinstance(spec, Mapping):
        raise GraphError(f"{source}: top level must be a mapping with 'entry' and 'nodes'")
    for key in sorted(set(spec) - _TOP):
        p.add("top level", f"unknown key {key!r} (expected one of {sorted(_TOP)})")
    languages = tuple(str(x) for x in spec.get("languages") or ("zh",))
    default_retries = spec.get("retries", 2)
    if not isinstance(default_retries, int) or default_retries < 0:
        p.add("top level", "'retries' must be a whole number >= 0")
        default_retries = 2
    raw_nodes = spec.get("nodes")
    if not isinstance(raw_nodes, Mapping) or not raw_nodes:
        raise GraphError(f"{source}: 'nodes' must be a non-empty mapping of node name to node")

    nodes: dict[str, Node] = {}
    for name, raw in raw_nodes.items():
        node = _node(str(name), raw, p, languages, known_intents, default_retries, adapters)
        if node is not None:
            nodes[node.name] = node

    entry = str(spec.get("entry") or "")
    handoff = str(spec.get("handoff") or "")
    if not entry:
        p.add("top level", "'entry' (the node conversations start at) is missing")
    elif entry not in raw_nodes:
        p.add("top level", f"entry node {entry!r} does not exist")
    elif entry in nodes and nodes[entry].kind in ("handoff", "end", "collect"):
        p.add(f"node {entry!r}", f"the entry node cannot be a {nodes[entry].kind} node")
    if not handoff:
        p.add("top level", "'handoff' (the node 转人工 and repeated anger go to) is missing")
    elif handoff not in raw_nodes:
        p.add("top level", f"handoff node {handoff!r} does not exist")
    elif handoff in nodes and nodes[handoff].kind != "handoff":
        p.add(f"node {handoff!r}", f"the graph's handoff node must be of kind handoff, not {nodes[handoff].kind}")

    anger = str(spec.get("anger") or handoff)
    if anger != handoff:
        if anger not in raw_nodes:
            p.add("top level", f"anger node {anger!r} does not exist")
        elif anger in nodes and nodes[anger].kind != "handoff":
            p.add(f"node {anger!r}", f"the graph's anger node must be of kind handoff, not {nodes[anger].kind}")

    slots = frozenset(n.slot for n in nodes.values() if n.slot)
    for node in nodes.values():
        _check_links(node, raw_nodes, slots, p)
    if entry in nodes:
        _check_reachable(nodes, (entry, handoff, anger), p)
    _check_loops(nodes, p)

    commands = spec.get("commands") or {}
    restart = _patterns(commands.get("restart", ["重新开始", "^(restart|start over)$"]), "commands.restart", p)
    handoff_cmds = _patterns(commands.get("handoff", ["转人工", "^(human|agent)$"]), "commands.handoff", p)
    cancel = _patterns(commands.get("cancel", ()), "commands.cancel", p)
    for c in cancel:
        if not c.pattern.startswith("^"):
            p.add("commands.cancel", f"{c.pattern!r} must be anchored with ^ (算了 inside a question is not a cancel)")
    for key in sorted(set(commands) - set(COMMANDS)):
        p.add("commands", f"unknown command {key!r} (expected {', '.join(COMMANDS)})")
    clarify = spec.get("clarify") or {}
    clarify_intents = tuple(str(i) for i in clarify.get("intents") or ())
    for i in clarify_intents:
        if i not in known_intents:
            p.add("clarify.intents", f"unknown intent {i!r}")
    texts: dict[str, Text] = {}
    raw_texts = spec.get("texts") or {}
    for key in sorted(set(raw_texts) - set(TEXT_NAMES)):
        p.add("texts", f"unknown text {key!r} (expected {list(TEXT_NAMES)})")
    for key in TEXT_NAMES:
        if key in raw_texts:
            t = _text(raw_texts[key], f"texts.{key}", p, languages)
            if t is not None:
                texts[key] = t

    if p.items:
        raise GraphError(f"{source} has {len(p.items)} problem(s):\n" + "\n".join(f"  {m}" for m in p.items))
    return Graph(
        entry=entry,
        handoff=handoff,
        anger=anger,
        nodes=MappingProxyType(nodes),
        languages=languages,
        restart=restart,
        handoff_commands=handoff_cmds,
        cancel=cancel,
        clarify_intents=clarify_intents,
        texts=MappingProxyType(texts),
        slots=slots,
    )


def _node(
    name: str,
    raw: Any,
    p: _Problems,
    languages: tuple[str, ...],
    intents: frozenset[str],
    default_retries: int,
    adapters: Iterable[str] | None,
) -> Node | None:
    where = f"node {name!r}"
    if not isinstance(raw, Mapping):
        p.add(where, "must be a mapping with at least 'kind'")
        return None
    kind = raw.get("kind")
    if kind not in NODE_KINDS:
        p.add(where, f"'kind' must be one of {list(NODE_KINDS)}, got {kind!r}")
        return None
    for key in sorted(set(raw) - _FIELDS[kind]):
        p.add(where, f"unknown field {key!r} for a {kind} node (allowed: {sorted(_FIELDS[kind])})")
    for key in _REQUIRED[kind]:
        if raw.get(key) in (None, "", {}):
            p.add(where, f"a {kind} node needs '{key}'")
    fields: dict[str, Any] = {"name": name, "kind": kind}
    for key in ("text", "prompt", "invalid", "reprompt", "faq_id"):
        if raw.get(key) not in (None, "", {}):
            fields[key] = _text(raw[key], f"{where} {key}", p, languages)
    fields["quick_replies"] = tuple(
        t for t in (_text(q, f"{where} quick_replies", p, languages) for q in raw.get("quick_replies") or ()) if t
    )
    for key in ("wait", "faq_first", "faq_context"):
        if key in raw:
            if not isinstance(raw[key], bool):
                p.add(where, f"'{key}' must be true or false")
            else:
                fields[key] = raw[key]
    if kind == "collect":
        fields["slot"] = str(raw.get("slot") or "")
        if raw.get("pattern") is None and not raw.get("choices"):
            p.add(where, "a collect node needs 'pattern' or 'choices' to validate the answer")
        if raw.get("pattern") is not None:
            fields["pattern"] = _regex(raw["pattern"], f"{where} pattern", p)
        fields["choices"] = tuple(str(c) for c in raw.get("choices") or ())
        retries = raw.get("retries", default_retries)
        if not isinstance(retries, int) or retries < 0:
            p.add(where, "'retries' must be a whole number >= 0")
        else:
            fields["retries"] = retries
        transform = str(raw.get("transform", "none"))
        if transform not in _TRANSFORMS:
            p.add(where, f"'transform' must be one of {sorted(_TRANSFORMS)}")
        fields["transform"] = transform
        if raw.get("on_fail") is not None:
            fields["on_fail"] = str(raw["on_fail"])
    if kind == "llm" and raw.get("adapter"):
        fields["adapter"] = str(raw["adapter"])
        if adapters is not None and fields["adapter"] not in set(adapters):
            p.add(where, f"LoRA adapter {fields['adapter']!r} is not configured in engine.adapters")
    if kind == "handoff":
        fields["reason"] = str(raw.get("reason") or name)
    edges = []
    raw_edges = raw.get("edges") or ()
    if not isinstance(raw_edges, list | tuple):
        p.add(where, "'edges' must be a list")
        raw_edges = ()
    for i, e in enumerate(raw_edges):
        edge = _edge(e, f"{where} edge #{i + 1}", p, intents, languages)
        if edge is not None:
            edges.append(edge)
    fields["edges"] = tuple(edges)
    return Node(**{k: v for k, v in fields.items() if v is not None})


def _edge(raw: Any, where: str, p: _Problems, intents: frozenset[str], languages: tuple[str, ...]) -> Edge | None:
    if not isinstance(raw, Mapping) or not raw.get("to"):
        p.add(where, "must be a mapping with 'to' and one of intent / slot / if / default")
        return None
    kinds = [k for k in _EDGE_KINDS if k in raw]
    if len(kinds) != 1:
        p.add(where, f"needs exactly one of {list(_EDGE_KINDS)}, got {kinds or 'none'}")
        return None
    kind = kinds[0]
    allowed = {"to", kind} | ({"faq_first", "when", "offer"} if kind == "intent" else set())
    allowed |= {"filled", "equals", "matches"} if kind == "slot" else set()
    for key in sorted(set(raw) - allowed):
        p.add(where, f"unknown field {key!r} for an {kind} edge")
    edge: dict[str, Any] = {"to": str(raw["to"]), "kind": kind}
    if kind == "intent":
        names = raw["intent"] if isinstance(raw["intent"], list) else [raw["intent"]]
        for n in names:
            if str(n) not in intents:
                p.add(where, f"unknown intent {n!r} (known: {sorted(intents)})")
        edge["intents"] = frozenset(str(n) for n in names)
        if "faq_first" in raw:
            edge["faq_first"] = bool(raw["faq_first"])
        if "when" in raw:
            acts = raw["when"] if isinstance(raw["when"], list) else [raw["when"]]
            for a in acts:
                if a not in ACTS:
                    p.add(where, f"unknown speech act {a!r} in 'when' (allowed: {list(ACTS)})")
            if not acts:
                p.add(where, "'when' needs at least one speech act")
            edge["when"] = frozenset(str(a) for a in acts)
        if "offer" in raw:
            edge["offer"] = _text(raw["offer"], f"{where} offer", p, languages)
            if "question" in edge.get("when", ACTS):
                p.add(where, "an 'offer' needs a 'when' without question (the quick reply a question's answer gets)")
    elif kind == "slot":
        edge["slot"] = str(raw["slot"])
        tests = [k for k in ("filled", "equals", "matches") if k in raw]
        if len(tests) != 1:
            p.add(where, "a slot edge needs exactly one of filled / equals / matches")
        if "filled" in raw:
            edge["filled"] = bool(raw["filled"])
        if "equals" in raw:
            edge["equals"] = str(raw["equals"])
        if "matches" in raw:
            edge["slot_matches"] = _regex(raw["matches"], where, p)
    elif kind == "if":
        cond = raw["if"]
        if not isinstance(cond, Mapping) or not cond:
            p.add(where, f"'if' must be a mapping of {sorted(_CONDITION_KEYS)}")
            return None
        for key in sorted(set(cond) - _CONDITION_KEYS):
            p.add(where, f"unknown condition {key!r} (allowed: {sorted(_CONDITION_KEYS)})")
        sentiments = cond.get("sentiment") or ()
        sentiments = frozenset([sentiments] if isinstance(sentiments, str) else sentiments)
        for s in sentiments - _SENTIMENTS:
            p.add(where, f"unknown sentiment {s!r} (allowed: {sorted(_SENTIMENTS)})")
        edge["condition"] = Condition(
            matches=_regex(cond["matches"], where, p) if "matches" in cond else None,
            sentiment=sentiments,
            lang=str(cond["lang"]) if "lang" in cond else None,
            channel=str(cond["channel"]) if "channel" in cond else None,
        )
    elif raw["default"] is not True:
        p.add(where, "write a default edge as 'default: true'")
    return Edge(**edge)


def _check_links(node: Node, raw_nodes: Mapping[str, Any], slots: frozenset[str], p: _Problems) -> None:
    where = f"node {node.name!r}"
    for i, edge in enumerate(node.edges):
        if edge.to not in raw_nodes:
            p.add(where, f"edge #{i + 1} goes to unknown node {edge.to!r}")
        if edge.kind == "slot" and edge.slot not in slots:
            p.add(where, f"edge #{i + 1} tests slot {edge.slot!r}, which no collect node fills")
        if edge.kind == "default" and i != len(node.edges) - 1:
            p.add(where, f"edge #{i + 1} is a default edge but is not last, so the edges after it never run")
    if node.on_fail is not None and node.on_fail not in raw_nodes:
        p.add(where, f"on_fail goes to unknown node {node.on_fail!r}")
    if node.kind == "collect" and node.default is None:
        p.add(where, "a collect node needs a default edge (where to go once the slot is filled)")
    if not node.wait and node.default is None:
        p.add(where, "a node with 'wait: false' needs a default edge")
    for key in ("text", "prompt", "invalid", "reprompt"):
        text = getattr(node, key)
        for lang, value in (text.by_lang.items() if text else ()):
            for name in _placeholders(value, where, p):
                if name not in slots:
                    p.add(where, f"{key} ({lang}) uses {{{name}}}, but no collect node fills a slot of that name")


def _check_reachable(nodes: Mapping[str, Node], roots: tuple[str, ...], p: _Problems) -> None:
    entry = roots[0]
    seen = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name not in nodes:
            continue
        seen.add(name)
        node = nodes[name]
        todo.extend(e.to for e in node.edges)
        if node.on_fail:
            todo.append(node.on_fail)
    for name in nodes:
        if name not in seen:
            p.add(f"node {name!r}", f"is unreachable: no edge from the entry node {entry!r} leads to it")


def _check_loops(nodes: Mapping[str, Node], p: _Problems) -> None:
    """Nodes that never wait must not form a cycle, or a turn would never end."""
    passing = {n.name for n in nodes.values() if not n.wait}
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for edge in nodes[name].edges:
            if edge.to not in passing:
                continue
            if state.get(edge.to) == 1:
                cycle = [*path[path.index(edge.to) :], edge.to] if edge.to in path else [name, edge.to]
                p.add(f"node {edge.to!r}", "is in a loop of nodes that never wait: " + " -> ".join(cycle))
            elif edge.to not in state:
                visit(edge.to, [*path, edge.to])
        state[name] = 2

    for name in sorted(passing):
        if name not in state:
            visit(name, [name])


def _text(raw: Any, where: str, p: _Problems, languages: tuple[str, ...]) -> Text | None:
    if isinstance(raw, str):
        raw = {languages[0]: raw}
    if not isinstance(raw, Mapping) or not raw:
        p.add(where, "must be a string or a {lang: text} mapping")
        return None
    texts = {str(k): str(v).strip() for k, v in raw.items()}
    missing = [lang for lang in languages if not texts.get(lang)]
    if missing:
        p.add(where, f"has no text for language(s) {missing} (the graph declares {list(languages)})")
    return Text(MappingProxyType(texts))


def _regex(raw: Any, where: str, p: _Problems) -> re.Pattern[str] | None:
    try:
        return re.compile(str(raw))
    except re.error as exc:
        p.add(where, f"{raw!r} is not a valid regular expression: {exc}")
        return None


def _patterns(raw: Any, where: str, p: _Problems) -> tuple[re.Pattern[str], ...]:
    items = [raw] if isinstance(raw, str) else list(raw or ())
    return tuple(x for x in (_regex(r, where, p) for r in items) if x is not None)


def _placeholders(template: str, where: str, p: _Problems) -> list[str]:
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name]
    except ValueError as exc:
        p.add(where, f"bad template {template!r}: {exc} (write {{{{ and }}}} for literal braces)")
        return []


def render(text: str, slots: Mapping[str, Any]) -> str:
    """Fill ``{slot}`` placeholders; a slot not filled yet renders empty."""

    class _Slots(dict):
        def __missing__(self, key: str) -> str:
            return ""

    return string.Formatter().vformat(text, (), _Slots({k: str(v) for k, v in slots.items()}))
