"""The dialogue manager: the :class:`bot.turn.TurnHandler` that walks the graph.

Per conversation it keeps, in :class:`bot.state.DialogueState`, the node it is
waiting at, the slots, a bounded history, the handed-off flag and why, the
customer's language, how to reach them, and two counters (angry messages,
invalid answers to the pending question). The hub loads and saves that state
with compare-and-set around each turn, so two messages from one user are
answered in order and a turn that loses a race simply runs again; this module
only decides.

Routing a message, in order:

1. Commands work everywhere: 重新开始 restarts at the entry node (even out of
   a handoff), 转人工 goes to the handoff node; repeated anger goes to the
   anger node. While a person has the conversation nothing else is answered,
   except what bot/dialogue/waiting.py decides a waiting customer must hear
   (service hours, a message kept for the agent, no agent replying in time).
2. A ``collect`` node that asked a question takes the answer: a valid value
   fills the slot and moves on, an invalid one re-prompts up to ``retries``
   times, then ``on_fail``. Nothing else interrupts a collection.
3. Otherwise: the waiting node's own edges; the entry node's edges (the
   global routes, where an intent edge gives way to a near-exact FAQ match);
   a confident FAQ answer (only a near-exact one when the waiting node
   expects free-form input through a default edge); the waiting node's
   default edge; a clarifying question when the intent is unsure; the entry
   node's default edge.

A conversation idle longer than ``state.idle_ttl_s`` starts again at the
entry node: the store's TTL removes it, and a state found older than that
anyway (a store without TTLs) is reset here.
"""

from __future__ import annotations

import logging
import re
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from bot import messages
from bot.answer import Answer, Answerer, StreamFn
from bot.config import Config, DialogueConfig
from bot.dialogue.context import estimate_tokens, fit_history
from bot.dialogue.graph import Edge, Graph, GraphError, Node, render
from bot.dialogue.handoff import HandoffNotifier
from bot.dialogue.intent import IntentRecognizer, IntentResult
from bot.dialogue.loader import load_graph
from bot.dialogue.sentiment import Sentiment, analyze
from bot.dialogue.waiting import WaitingCare
from bot.metrics import Metrics
from bot.notify import WebhookNotifier
from bot.state import DialogueState, Handoff, HistoryTurn
from bot.text import CJK, detect_lang, normalize
from bot.turn import TurnResult
from bot.types import Event, EventKind, Reply

if TYPE_CHECKING:
    from bot.services import Services

log = logging.getLogger(__name__)

MAX_STEPS = 16  # nodes one turn may pass through; compile already rejects loops of non-waiting nodes
GREET_EVENTS = frozenset({"enter_agent", "subscribe", "open", "enter_chat"})
_NO_INTENT = IntentResult(None, 0.0, "none")
_NO_SENTIMENT = Sentiment("neutral", 0.0)
_DEFAULT_TEXTS = {  # when the graph's `texts` does not say
    "clarify": {"zh": "请问您想咨询以下哪一类问题？", "en": "Which of these is your question about?"},
    "invalid": {"zh": "抱歉，您的回复格式不对，请再发送一次。", "en": "Sorry, that doesn't look right; try again."},
}
_WORD = re.compile(r"\b[A-Za-z]+\b")  # whole alphabetic words: not the YD in YD2405120001


@dataclass
class _Turn:
    """The working copy of one turn; becomes the next DialogueState."""

    event: Event
    text: str
    lang: str
    history: tuple[HistoryTurn, ...]  # before this message
    node: str | None
    slots: dict[str, Any]
    handed_off: bool
    handoff: Handoff | None = None
    angry_messages: int = 0
    invalid_answers: int = 0  # to the question of the collect node the turn waits at
    intent: IntentResult = _NO_INTENT
    sentiment: Sentiment = _NO_SENTIMENT
    consumed: bool = False  # the message already filled a slot this turn
    handoff_reason: str | None = None
    replies: list[tuple[str, str, tuple[str, ...], str | None]] = field(default_factory=list)
    faq_score: float | None = None

    @property
    def norm(self) -> str:
        return normalize(self.text)


class _Counters:
    def __init__(self, metrics: Metrics | None) -> None:
        r = metrics.registry if metrics is not None else None
        self.intents = Counter("kefu_dialogue_intents", "Recognized intents", ["intent", "source"], registry=r)
        self.sentiment = Counter("kefu_dialogue_sentiment", "Message sentiment", ["label"], registry=r)
        self.handoffs = Counter("kefu_dialogue_handoffs", "Conversations handed to a person", ["reason"], registry=r)
        self.clarify = Counter("kefu_dialogue_clarifications", "Clarifying questions asked", registry=r)


class DialogueManager:
    def __init__(
        self,
        graph: Graph,
        intents: IntentRecognizer,
        answerer: Answerer,
        cfg: DialogueConfig,
        *,
        history_turns: int,
        idle_ttl_s: float,
        context_tokens: int,
        max_new_tokens: int,
        notifier: HandoffNotifier | None = None,
        waiting: WaitingCare | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.graph = graph
        self.intents = intents
        self.answerer = answerer
        self.faq = answerer.faq
        self.cfg = cfg
        self.history_turns = history_turns
        self.idle_ttl_s = idle_ttl_s
        self.context_tokens = context_tokens
        self.max_new_tokens = max_new_tokens
        self.notifier = notifier
        self.waiting = waiting  # None: silent while handed off
        self.clock = clock
        self._counters = _Counters(metrics)
        for node in graph.nodes.values():
            for lang, faq_id in node.faq_id.by_lang.items() if node.faq_id else ():
                if faq_id not in self.faq.by_id:
                    raise GraphError(f"dialogue graph: node {node.name!r}: faq_id ({lang}) {faq_id!r} is no FAQ entry")

    # ------------------------------------------------------------------ the turn
    async def handle(self, event: Event, state: DialogueState, stream: StreamFn) -> TurnResult:
        state = self._expire(state)
        text = (event.text or "").strip()
        lang = event.lang or self._lang(text, state.lang)
        turn = _Turn(
            event=event,
            text=text,
            lang=lang,
            history=state.history,
            node=state.node,
            slots=dict(state.slots),
            handed_off=state.handed_off,
            handoff=state.handoff,
            angry_messages=state.angry_messages,
            invalid_answers=state.invalid_answers,
        )
        if event.kind is EventKind.FEEDBACK:
            return TurnResult(state)
        if event.kind is EventKind.EVENT:
            if event.name in GREET_EVENTS and not state.handed_off and state.node in (None, self.graph.entry):
                await self._run(turn, self.graph.entry, stream)
            return TurnResult(self._state(state, turn, record_user=False), self._replies(turn))
        if not text:
            if state.handed_off:
                await self._wait_for_agent(turn, stream)
            else:
                self._say(turn, messages.text("attachment_only" if event.attachments else "unsupported", lang),
                          "system")
            return TurnResult(self._state(state, turn, note="[attachment]"), self._replies(turn))

        turn.intent = self.intents.recognize(text)
        turn.sentiment = analyze(text)
        self._counters.intents.labels(turn.intent.name or "none", turn.intent.source).inc()
        self._counters.sentiment.labels(turn.sentiment.label).inc()
        if turn.sentiment.angry:
            turn.angry_messages += 1
            log.info("angry message in %s (%s)", event.ref.key, ", ".join(turn.sentiment.terms))
        command = self._command(turn.norm)
        if state.handed_off and command != "restart":  # a person has it: record the message for them
            await self._wait_for_agent(turn, stream)
            return TurnResult(self._state(state, turn), self._replies(turn))

        if command == "restart":  # also leaves a handoff: a customer tired of waiting is never stuck
            turn.slots.clear()
            turn.invalid_answers = turn.angry_messages = 0
            turn.handoff = None
            turn.handed_off = False
            await self._run(turn, self.graph.entry, stream)
        elif command == "handoff":
            turn.handoff_reason = "requested"
            await self._run(turn, self.graph.handoff, stream)
        elif turn.angry_messages >= self.cfg.anger_handoff:
            turn.handoff_reason = "anger"
            await self._run(turn, self.graph.anger, stream)
        else:
            await self._route(turn, stream)

        new_state = self._state(state, turn)
        if turn.handoff_reason is not None:
            self._counters.handoffs.labels(turn.handoff_reason).inc()
            if self.notifier is not None:
                await self.notifier.notify(event.ref, new_state, turn.handoff_reason, event.dedup_key)
        return TurnResult(new_state, self._replies(turn))

    @staticmethod
    def _lang(text: str, previous: str | None) -> str:
        """The customer's language, sticky across messages that do not show one:
        an order number such as YD2405120001 or a lone "ok" keeps a Chinese
        conversation in Chinese."""
        if not text:
            return previous or "zh"
        if detect_lang(text) != "en":
            return "zh" if CJK.search(text) else previous or "zh"
        words = _WORD.findall(text)
        if previous is None:
            return "en" if words else "zh"
        if previous != "en" and (len(words) >= 2 or any(len(w) >= 4 for w in words)):
            return "en"
        return previous

    def _expire(self, state: DialogueState) -> DialogueState:
        if state.version and state.updated_at and self.clock() - state.updated_at > self.idle_ttl_s:
            log.info("conversation %s was idle for over %.0fs; starting again", state.key, self.idle_ttl_s)
            return DialogueState(key=state.key, version=state.version)
        return state

    def _command(self, norm: str) -> str | None:
        if any(p.search(norm) for p in self.graph.restart):
            return "restart"
        if any(p.search(norm) for p in self.graph.handoff_commands):
            return "handoff"
        return None

    async def _wait_for_agent(self, turn: _Turn, stream: StreamFn) -> None:
        """A message while a person has the conversation: recorded for them; the customer hears only
        what bot/dialogue/waiting.py decides (and, once nobody answered in time, an FAQ answer)."""
        if self.waiting is None:
            return
        now = self.clock()
        handoff = turn.handoff or Handoff("agent", turn.node, now)
        step = self.waiting.on_message(handoff, turn.text, now, turn.lang)
        turn.handoff = step.handoff
        for said, quick in step.says:
            self._say(turn, said, "system", quick)
        if step.release:  # the customer chose the bot over waiting; an agent's reply still reaches them
            turn.handed_off = False
            turn.handoff = None
            turn.node = None
            turn.angry_messages = turn.invalid_answers = 0
        elif step.may_answer and turn.text and self._faq_score(turn) >= self.faq.threshold:
            await self._answer_faq(turn, stream)

    # ------------------------------------------------------------------ routing
    async def _route(self, turn: _Turn, stream: StreamFn) -> None:
        graph = self.graph
        current = graph.nodes.get(turn.node) if turn.node else None
        if current is not None and current.kind == "collect":
            await self._collect(turn, current, stream)
            return
        here = current if current is not None and current.name != graph.entry else None
        for node in (here, graph.entry_node):
            for edge in node.explicit if node is not None else ():
                if not self._matches(edge, turn):
                    continue
                if edge.kind == "intent" and edge.faq_first and self._faq_score(turn) >= self.cfg.faq_strong:
                    await self._answer_faq(turn, stream)
                else:
                    await self._run(turn, edge.to, stream)
                return
        strict = here is not None and here.default is not None
        if self._faq_score(turn) >= (self.cfg.faq_strong if strict else self.faq.threshold):
            await self._answer_faq(turn, stream)
        elif here is not None and here.default is not None:
            await self._run(turn, here.default.to, stream)
        elif self.answerer.engine is None and (candidates := self._candidates(turn)):
            # Without a model, a clarifying question beats a guess; with one, the
            # default route's LLM node answers from the FAQ context instead.
            self._counters.clarify.inc()
            labels = tuple(self.intents.by_name[n].label(turn.lang) for n in candidates)
            self._say(turn, self._text("clarify", turn.lang), "dialogue", labels)
        elif graph.entry_node.default is not None:
            await self._run(turn, graph.entry_node.default.to, stream)
        else:
            self._say(turn, self._text("unknown", turn.lang), "unknown")

    def _matches(self, edge: Edge, turn: _Turn) -> bool:
        if edge.kind == "default":
            return True
        if edge.kind == "intent":
            return turn.intent.confident(self.cfg.intent_threshold) and turn.intent.name in edge.intents
        if edge.kind == "slot":
            value = turn.slots.get(edge.slot or "")
            if edge.filled is not None:
                return (value not in (None, "")) == edge.filled
            if value is None:
                return False
            if edge.equals is not None:
                return str(value) == edge.equals
            return edge.slot_matches is not None and edge.slot_matches.search(str(value)) is not None
        cond = edge.condition
        if cond is None:
            return False
        return (
            (cond.matches is None or cond.matches.search(turn.norm) is not None)
            and (not cond.sentiment or turn.sentiment.label in cond.sentiment)
            and (cond.lang is None or cond.lang == turn.lang)
            and (cond.channel is None or cond.channel == turn.event.ref.channel)
        )

    def _follow(self, node: Node, turn: _Turn) -> str | None:
        """Where a node that does not wait (or a filled collect) goes now."""
        edge = next((e for e in node.edges if self._matches(e, turn)), None)
        return edge.to if edge is not None else None

    def _candidates(self, turn: _Turn) -> list[str]:
        intent = turn.intent
        if intent.name is None or intent.source == "rule" or intent.confident(self.cfg.intent_threshold):
            return []
        offered = set(self.graph.clarify_intents)
        return [n for n, p in intent.ranked if n in offered and p >= self.cfg.clarify_floor][:3]

    def _faq_score(self, turn: _Turn) -> float:
        if turn.faq_score is None:
            hits = self.faq.search(turn.text, k=1)
            turn.faq_score = hits[0].score if hits else 0.0
        return turn.faq_score

    # ------------------------------------------------------------------ nodes
    async def _run(self, turn: _Turn, name: str | None, stream: StreamFn) -> None:
        for _ in range(MAX_STEPS):
            if name is None:
                return
            name = await self._act(turn, self.graph.nodes[name], stream)
        log.error("turn in %s passed through %d nodes; stopped at %s", turn.event.ref.key, MAX_STEPS, name)

    async def _act(self, turn: _Turn, node: Node, stream: StreamFn) -> str | None:
        """Run one node; returns the node to continue with at once, or None to wait."""
        turn.node = node.name
        lang = turn.lang
        quick = tuple(q.get(lang) for q in node.quick_replies)
        if node.kind == "reply":
            assert node.text is not None
            self._say(turn, render(node.text.get(lang), turn.slots), "dialogue", quick)
        elif node.kind == "collect":
            turn.invalid_answers = 0
            turn.slots.pop(node.slot or "", None)
            if not turn.consumed and (value := self._extract(node, turn.text)) is not None:
                # The message that led here already holds the answer ("我要退款，订单号 YD…").
                turn.slots[node.slot or ""] = value
                turn.consumed = True
                return self._follow(node, turn)
            assert node.prompt is not None
            self._say(turn, render(node.prompt.get(lang), turn.slots), "dialogue", quick)
            return None
        elif node.kind == "faq":
            if node.faq_id is not None:
                entry = self.faq.by_id[node.faq_id.get(lang)]
                self._say(turn, entry.answer, "faq", quick)
            else:
                answer = await self.answerer.answer(turn.text, lang=lang, context=turn.event.context, stream=stream)
                self._say_answer(turn, answer, quick)
        elif node.kind == "llm":
            self._say_answer(turn, await self._llm(turn, node, stream), quick)
        elif node.kind == "handoff":
            assert node.text is not None
            said = render(node.text.get(lang), turn.slots)
            if self.waiting is not None:  # one message: the node's words, then the hours or when a person answers
                note, offer = self.waiting.on_handoff(self.clock(), lang)
                said, quick = f"{said}\n{note}", (*quick, *offer)
            self._say(turn, said, "dialogue", quick)
            reason = turn.handoff_reason or node.reason
            turn.handoff_reason = reason
            turn.handed_off = True
            turn.handoff = Handoff(reason, node.name, self.clock())
            turn.invalid_answers = 0
            turn.node = None
            return None
        elif node.kind == "end":
            assert node.text is not None
            self._say(turn, render(node.text.get(lang), turn.slots), "dialogue", quick)
            turn.slots.clear()
            turn.invalid_answers = turn.angry_messages = 0
            turn.node = None
            return None
        return None if node.wait else self._follow(node, turn)

    async def _collect(self, turn: _Turn, node: Node, stream: StreamFn) -> None:
        value = self._extract(node, turn.text)
        if value is not None:
            turn.slots[node.slot or ""] = value
            turn.consumed = True
            turn.invalid_answers = 0
            await self._run(turn, self._follow(node, turn), stream)
            return
        turn.invalid_answers += 1
        if turn.invalid_answers > node.retries:
            turn.invalid_answers = 0
            await self._run(turn, node.on_fail or self.graph.handoff, stream)
            return
        text = node.invalid.get(turn.lang) if node.invalid else self._text("invalid", turn.lang)
        quick = tuple(q.get(turn.lang) for q in node.quick_replies)
        self._say(turn, render(text, turn.slots), "dialogue", quick)

    @staticmethod
    def _extract(node: Node, text: str) -> str | None:
        """The slot value in the message, or None when it is not valid."""
        value: str | None = None
        if node.pattern is not None:
            m = node.pattern.search(unicodedata.normalize("NFKC", text))  # full-width ＹＤ１２… counts too
            if m is not None:
                named = m.groupdict().get("value")
                value = named if named is not None else (m.group(1) if m.re.groups else m.group(0))
        elif node.choices:
            folded = normalize(text)
            value = next((c for c in node.choices if _mentions(folded, normalize(c))), None)
        if value is None:
            return None
        if node.transform == "upper":
            value = value.upper()
        elif node.transform == "lower":
            value = value.lower()
        return value.strip()

    async def _llm(self, turn: _Turn, node: Node, stream: StreamFn) -> Answer:
        assert node.prompt is not None
        instructions = render(node.prompt.get(turn.lang), turn.slots)
        if turn.slots:
            known = "；".join(f"{k}={v}" for k, v in turn.slots.items())
            instructions += ("\nKnown details: " if turn.lang == "en" else "\n已知信息：") + known
        window = fit_history(turn.history, self._history_budget(turn, instructions), turn.lang)
        if window.summary:
            instructions += "\n" + window.summary
        engine = self.answerer.engine
        return await self.answerer.answer(
            turn.text,
            lang=turn.lang,
            history=window.turns,
            context=turn.event.context,
            instructions=instructions,
            adapter=node.adapter,
            stream=stream,
            prefer_llm=not node.faq_first and engine is not None,
            faq_context=node.faq_context,
        )

    def _history_budget(self, turn: _Turn, instructions: str) -> int:
        """Tokens left for history once the prompt's other parts and the answer are counted."""
        fixed = self.answerer.system_prompt + instructions + turn.text + (turn.event.context or "")
        knowledge = sum(estimate_tokens(h.entry.question + h.entry.answer) for h in self.faq.search(turn.text, k=3))
        reserve = estimate_tokens(fixed) + knowledge + 32
        return max(0, min(self.cfg.history_tokens, self.context_tokens - self.max_new_tokens - reserve))

    async def _answer_faq(self, turn: _Turn, stream: StreamFn) -> None:
        """A confident FAQ answer, without moving: a digression mid-flow comes back to the same node."""
        answer = await self.answerer.answer(turn.text, lang=turn.lang, context=turn.event.context, stream=stream)
        self._say_answer(turn, answer, ())

    # ------------------------------------------------------------------ output
    def _text(self, name: str, lang: str) -> str:
        text = self.graph.texts.get(name)
        if text is not None:
            return text.get(lang)
        if name in _DEFAULT_TEXTS:
            return _DEFAULT_TEXTS[name].get(lang, _DEFAULT_TEXTS[name]["zh"])
        return messages.text("unknown", lang)

    def _say(self, turn: _Turn, text: str, source: str, quick: Sequence[str] = ()) -> None:
        turn.replies.append((text, source, tuple(quick), turn.node))

    def _say_answer(self, turn: _Turn, answer: Answer, quick: Sequence[str]) -> None:
        self._say(turn, answer.text, answer.source, tuple(quick) or answer.suggestions)

    def _replies(self, turn: _Turn) -> tuple[Reply, ...]:
        meta = MappingProxyType({
            "intent": turn.intent.name,
            "confidence": round(turn.intent.confidence, 3),
            "sentiment": turn.sentiment.label,
            "handed_off": turn.handed_off,
        })
        return tuple(
            Reply(to=turn.event.ref, text=text, quick_replies=quick, in_reply_to=turn.event.id, source=source,
                  meta=MappingProxyType({**meta, "node": node}))
            for text, source, quick, node in turn.replies
        )

    def _state(self, state: DialogueState, turn: _Turn, *, record_user: bool = True,
               note: str | None = None) -> DialogueState:
        new = state.replace(
            node=turn.node, slots=MappingProxyType(dict(turn.slots)), handed_off=turn.handed_off, lang=turn.lang,
            ref=turn.event.ref, handoff=turn.handoff, angry_messages=turn.angry_messages,
            invalid_answers=turn.invalid_answers,
        )
        if record_user:
            new = new.with_turn(
                "user", turn.text or note or "", self.history_turns, id=turn.event.id, intent=turn.intent.name,
                confidence=round(turn.intent.confidence, 3), sentiment=turn.sentiment.label,
            )
        for text, source, _quick, node in turn.replies:
            new = new.with_turn("assistant", text, self.history_turns, source=source, node=node)
        return new


def _mentions(text: str, phrase: str) -> bool:
    """``phrase`` occurs in ``text``; a Latin phrase only as whole words (S is not the s in "small")."""
    if not phrase:
        return False
    if phrase.isascii():
        return re.search(rf"(?<![a-z0-9]){re.escape(phrase)}(?![a-z0-9])", text) is not None
    return phrase in text


def build_manager(services: Services) -> DialogueManager:
    """The dialogue manager from the config; raises GraphError (a ConfigError) when the graph cannot run."""
    cfg: Config = services.config
    d = cfg.dialogue
    intents = IntentRecognizer.load(cfg.resolve_path(d.intents_path))
    graph = load_graph(cfg.resolve_path(d.path), intents=intents.names,
                       adapters=cfg.engine.adapters.keys() if cfg.engine.kind == "hf" else None)
    extra = []
    if d.handoff_webhook_url:
        extra.append(WebhookNotifier(d.handoff_webhook_url, lambda: services.http, d.notify_timeout_s))
    notifier = HandoffNotifier(lambda: services.notifiers, services.kv, services.keys,
                               timeout_s=d.notify_timeout_s, extra=extra)
    return DialogueManager(
        graph,
        intents,
        services.answerer,
        d,
        history_turns=cfg.state.history_turns,
        idle_ttl_s=cfg.state.idle_ttl_s,
        context_tokens=cfg.engine.context_tokens,
        max_new_tokens=cfg.engine.max_new_tokens,
        notifier=notifier,
        waiting=WaitingCare.from_config(cfg.handoff),
        metrics=services.metrics,
    )
