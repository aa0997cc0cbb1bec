"""The dialogue manager: the :class:`bot.turn.TurnHandler` that walks the graph.

Per conversation it keeps, in :class:`bot.state.DialogueState`, the node it is
waiting at, the slots, a bounded history, the handed-off flag and why, the
customer's language, how to reach them, and two counters (angry messages,
invalid answers to the pending question). The hub loads and saves that state
with compare-and-set around each turn, so two messages from one user are
answered in order and a turn that loses a race simply runs again; this module
only decides.

Every message gets an intent (what it is about, bot/dialogue/intent.py) and a
speech act (whether the customer wants it done or asks about it,
bot/dialogue/speech_act.py). Knowing that a customer asks *about* refunds is
not knowing that they want one now: 退货运费谁出 is answered, 我要退款 starts the
refund flow.

Routing a message, in order:

1. Commands work everywhere: 重新开始 restarts at the entry node (even out of
   a handoff); 算了 / 不用了 / cancel at the start of a message leaves the flow
   for the entry node (politely, ``texts.cancelled``), and whatever follows it
   (算了 我问问运费) is routed as a message of its own; 转人工 goes to the
   handoff node unless the message asks about it (怎么转人工 is answered);
   repeated anger goes to the anger node. While a person has the conversation
   nothing else is answered, except what bot/dialogue/waiting.py decides a
   waiting customer must hear (service hours, a message kept for the agent, no
   agent replying in time).
2. A ``collect`` node that asked a question takes the answer: a valid value
   fills the slot and moves on. A message that is clearly something else is a
   digression, answered without counting as a wrong answer: a request for
   another route (a person, a complaint, another flow) goes there; anger gets
   ``texts.calm``; a question, or anything the FAQ is confident about, gets the
   answer; then the node asks its question again (``reprompt``) in the same
   turn. Only what looks like an attempt at the value (digits, letters, a
   short reply that is no question) re-prompts up to ``retries`` times, then
   ``on_fail``.
3. Otherwise: the waiting node's own edges; the entry node's edges (the
   global routes, where an intent edge gives way to a near-exact FAQ match).
   An intent edge with ``when`` is followed only for those speech acts: a
   request follows it at once, whatever the FAQ says; a question goes on to
   the FAQ (confident at ``faq.threshold``) and its answer ends with the
   edge's ``offer`` quick reply, which starts the flow when typed or tapped.
   Then a confident FAQ answer (only a near-exact one when the waiting node
   expects free-form input through a default edge); the waiting node's
   default edge; a clarifying question when the intent is unsure; the entry
   node's default edge.

A conversation idle longer than ``state.idle_ttl_s`` starts again at the
entry node: the store's TTL removes it, and a state found older than that
anyway (a store without TTLs) is reset here. A handed-off conversation is
kept for ``state.handoff_ttl_s`` instead: the person who has it (or will,
the next morning) must still find the customer's messages.
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
from bot.dialogue.graph import Edge, Graph, GraphError, Node, Text, render
from bot.dialogue.handoff import HandoffNotifier
from bot.dialogue.intent import IntentRecognizer, IntentResult
from bot.dialogue.loader import load_graph
from bot.dialogue.sentiment import Sentiment, analyze
from bot.dialogue.speech_act import NONE as _NO_ACT
from bot.dialogue.speech_act import SpeechAct, SpeechActClassifier
from bot.dialogue.waiting import WaitingCare
from bot.metrics import Metrics
from bot.notify import WebhookNotifier
from bot.state import DialogueState, Handoff, HistoryTurn
from bot.text import CJK, detect_lang, normalize
from bot.turn import TurnResult
from bot.types import Event, EventKind, Reply

if TYPE_CHECKING:
    from bot.faq import FaqIndex
    from bot.services import Services

log = logging.getLogger(__name__)

MAX_STEPS = 16  # nodes one turn may pass through; compile already rejects loops of non-waiting nodes
GREET_EVENTS = frozenset({"enter_agent", "subscribe", "open", "enter_chat"})
_NO_INTENT = IntentResult(None, 0.0, "none")
_NO_SENTIMENT = Sentiment("neutral", 0.0)
_DEFAULT_TEXTS = {  # when the graph's `texts` does not say
    "clarify": {"zh": "请问您想咨询以下哪一类问题？", "en": "Which of these is your question about?"},
    "invalid": {"zh": "抱歉，您的回复格式不对，请再发送一次。", "en": "Sorry, that doesn't look right; try again."},
    "cancelled": {"zh": "好的，已为您取消当前办理。还有什么可以帮您？",
                  "en": "OK, I've stopped that. Anything else I can help with?"},
    "calm": {"zh": "非常抱歉让您着急了，我会尽快帮您处理好。",
             "en": "I'm really sorry for the trouble; I'll sort this out as fast as I can."},
}
_OFFER_CONFIDENCE = 0.7  # classifier confidence needed to offer an intent's flow under an answer
_SHORT = 8  # characters: a reply this short that asks nothing is an attempt at the value (不知道, 没有)
_ATTEMPT = re.compile(r"\d|^[a-z0-9_-]+$")  # digits anywhere, or one Latin token (yd123, abc)
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
    act: SpeechAct = _NO_ACT
    sentiment: Sentiment = _NO_SENTIMENT
    consumed: bool = False  # the message already filled a slot this turn
    handoff_reason: str | None = None
    replies: list[tuple[str, str, tuple[str, ...], str | None]] = field(default_factory=list)
    faq_score: float | None = None
    said: str | None = None  # the whole message, when routing goes on with a part of it (算了 我问问运费)

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
        self.acts = Counter("kefu_dialogue_speech_acts", "Speech acts (request/question/other)", ["act", "source"],
                            registry=r)
        self.digressions = Counter("kefu_dialogue_digressions", "Messages answered while a step waited for a value",
                                   ["kind"], registry=r)


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
        handoff_ttl_s: float | None = None,
        context_tokens: int,
        max_new_tokens: int,
        notifier: HandoffNotifier | None = None,
        waiting: WaitingCare | None = None,
        speech_acts: SpeechActClassifier | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.graph = graph
        self.intents = intents
        self.answerer = answerer
        self.cfg = cfg
        self.history_turns = history_turns
        self.idle_ttl_s = idle_ttl_s
        self.handoff_ttl_s = max(idle_ttl_s, handoff_ttl_s or 0)  # a person has it: kept for them (the store too)
        self.context_tokens = context_tokens
        self.max_new_tokens = max_new_tokens
        self.notifier = notifier
        self.waiting = waiting  # None: silent while handed off
        self.speech_acts = speech_acts  # None: every message is "other" (intent edges with `when` behave as before)
        self._offers = {normalize(text): edge for text, edge in graph.offers.items()}
        self.clock = clock
        self._counters = _Counters(metrics)
        for node in graph.nodes.values():
            for lang, faq_id in node.faq_id.by_lang.items() if node.faq_id else ():
                if faq_id not in self.faq.by_id:
                    raise GraphError(f"dialogue graph: node {node.name!r}: faq_id ({lang}) {faq_id!r} is no FAQ entry")

    @property
    def faq(self) -> FaqIndex:
        """The answerer's index, read each time: FAQ curation swaps it (bot/faq/curation.py) without a restart."""
        return self.answerer.faq

    # ------------------------------------------------------------------ the turn
    async def handle(self, event: Event, state: DialogueState, stream: StreamFn) -> TurnResult:
        state = self._expire(state)
        text = (event.text or "").strip()
        if text and self.faq.reranking is not None:  # the lookups below are synchronous: the model reads now, off
            await self.faq.asearch(text)  # the loop, and they hit the cache (without one there is nothing to warm)
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

        self._understand(turn)
        turn.sentiment = analyze(text)
        self._counters.intents.labels(turn.intent.name or "none", turn.intent.source).inc()
        self._counters.acts.labels(turn.act.act, turn.act.source).inc()
        self._counters.sentiment.labels(turn.sentiment.label).inc()
        if turn.sentiment.angry:
            turn.angry_messages += 1
            log.info("angry message in %s (%s)", event.ref.key, ", ".join(turn.sentiment.terms))
        command, rest = self._command(turn)
        if state.handed_off and command != "restart":  # a person has it: record the message for them
            await self._wait_for_agent(turn, stream)
            return TurnResult(self._state(state, turn), self._replies(turn))

        if command == "restart":  # also leaves a handoff: a customer tired of waiting is never stuck
            turn.slots.clear()
            turn.invalid_answers = turn.angry_messages = 0
            turn.handoff = None
            turn.handed_off = False
            await self._run(turn, self.graph.entry, stream)
        elif command == "cancel":
            await self._cancel(turn, rest, stream)
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
        ttl = self.handoff_ttl_s if state.handed_off else self.idle_ttl_s
        if state.version and state.updated_at and self.clock() - state.updated_at > ttl:
            log.info("conversation %s was idle for over %.0fs; starting again", state.key, ttl)
            return DialogueState(key=state.key, version=state.version)
        return state

    def _understand(self, turn: _Turn) -> None:
        """The intent and the speech act of the message; an offered quick reply typed back is a request for
        its edge's intent (申请退款 starts the refund flow, whatever the classifiers make of it)."""
        turn.intent = self.intents.recognize(turn.text)
        offered = self._offers.get(turn.norm)
        if offered is not None:
            turn.act = SpeechAct("request", 1.0, "forced", "offer")
            if turn.intent.name not in offered.intents or not turn.intent.confident(self.cfg.intent_threshold):
                turn.intent = IntentResult(sorted(offered.intents)[0], 1.0, "rule", turn.intent.ranked)
        elif self.speech_acts is not None:
            turn.act = self.speech_acts.recognize(turn.text)
        else:
            turn.act = _NO_ACT

    def _command(self, turn: _Turn) -> tuple[str | None, str]:
        """The command in the message, and for a cancel what follows it."""
        norm = turn.norm
        if any(p.search(norm) for p in self.graph.restart):
            return "restart", ""
        if turn.node not in (None, self.graph.entry) and not turn.handed_off:
            for p in self.graph.cancel:
                if (m := p.search(norm)) is not None:
                    return "cancel", norm[m.end():].strip()
        if any(p.search(norm) for p in self.graph.handoff_commands) and not turn.act.is_question:
            return "handoff", ""  # 人工客服几点上班 asks about people; it does not ask for one
        return None, ""

    async def _cancel(self, turn: _Turn, rest: str, stream: StreamFn) -> None:
        """Leave the flow for the entry node; what the customer said after 算了 is routed on its own."""
        turn.slots.clear()
        turn.invalid_answers = 0
        turn.node = self.graph.entry
        self._say(turn, self._text("cancelled", turn.lang), "dialogue")
        if rest:
            turn.said, turn.text, turn.faq_score = turn.text, rest, None
            self._understand(turn)
            await self._route(turn, stream)

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
        offers: list[str] = []  # flows the customer asked about rather than for: their answer offers them
        for node in (here, graph.entry_node):
            for edge in node.explicit if node is not None else ():
                if not self._matches(edge, turn):
                    continue
                if edge.when and turn.act.act not in edge.when:
                    if edge.offer is not None and self._sure_of_intent(turn):
                        offers.append(edge.offer.get(turn.lang))
                    continue
                if edge.when and turn.act.is_request:
                    # Wants it now: a close FAQ entry is not in the way. A question asked with the request
                    # (我想退货 运费谁出) is answered first, when the FAQ knows it.
                    if self._asks_too(turn):
                        await self._answer_faq(turn, stream)
                    await self._run(turn, edge.to, stream)
                elif edge.kind == "intent" and edge.faq_first and self._faq_score(turn) >= self.cfg.faq_strong:
                    await self._answer_faq(turn, stream)
                else:
                    await self._run(turn, edge.to, stream)
                return
        await self._fallback(turn, here, stream)
        if offers and not turn.handed_off and turn.replies:
            text, source, quick, node_name = turn.replies[-1]
            turn.replies[-1] = (text, source, tuple(dict.fromkeys((*offers, *quick))), node_name)

    def _sure_of_intent(self, turn: _Turn) -> bool:
        """Sure enough of the topic to offer its flow: a guess (客服几点下班 read as a complaint) would offer
        something the customer never thought of."""
        return turn.intent.source == "rule" or turn.intent.confidence >= _OFFER_CONFIDENCE

    def _asks_too(self, turn: _Turn) -> bool:
        """A request that also asks something the FAQ answers with confidence."""
        if self.speech_acts is None or turn.act.source == "forced":
            return False
        if "question_word" not in self.speech_acts.cues_in(turn.text):
            return False
        return self.faq.confident(self.faq.search(turn.text, k=2))

    async def _fallback(self, turn: _Turn, here: Node | None, stream: StreamFn) -> None:
        """No edge took the message: the FAQ, the waiting node's default, a clarifying question, the entry default."""
        graph = self.graph
        strict = here is not None and here.default is not None
        if self._faq_score(turn) >= (self.cfg.faq_strong if strict else self.faq.threshold):
            await self._answer_faq(turn, stream)
        elif here is not None and here.default is not None:
            await self._run(turn, here.default.to, stream)
        elif (self.answerer.engine is None and self._faq_score(turn) < self.faq.floor
              and (candidates := self._candidates(turn))):
            # Without a model, a clarifying question beats a guess; with one, the default route's LLM node
            # answers from the FAQ context instead. FAQ questions close to the message (猜你想问, from the
            # default route's answer) say more than a choice of topics, so they come first.
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
        if await self._digress(turn, node, stream):
            return
        turn.invalid_answers += 1
        if turn.invalid_answers > node.retries:
            turn.invalid_answers = 0
            await self._run(turn, node.on_fail or self.graph.handoff, stream)
            return
        text = node.invalid.get(turn.lang) if node.invalid else self._text("invalid", turn.lang)
        quick = tuple(q.get(turn.lang) for q in node.quick_replies)
        self._say(turn, render(text, turn.slots), "dialogue", quick)

    async def _digress(self, turn: _Turn, node: Node, stream: StreamFn) -> bool:
        """A message that is not the value and does not try to be: handled, then the question asked again.
        False when it looks like an attempt at the value (it counts toward ``retries``)."""
        lang = turn.lang
        quick = tuple(q.get(lang) for q in node.quick_replies)
        reprompt = render((node.reprompt or node.prompt or Text({"zh": ""})).get(lang), turn.slots)
        edge = self._requested_route(turn)
        if edge is not None:
            self._counters.digressions.labels("route").inc()
            if edge.to == node.name:  # asks again for what is being done: just the question
                self._say(turn, reprompt, "dialogue", quick)
            else:
                turn.invalid_answers = 0
                await self._run(turn, edge.to, stream)
            return True
        if turn.sentiment.angry:
            self._counters.digressions.labels("anger").inc()
            self._say(turn, f"{self._text('calm', lang)}\n{reprompt}", "dialogue", quick)
            return True
        if turn.act.act == "other" and self._attempt(node, turn):
            return False
        if turn.act.is_question or self._faq_score(turn) >= self.faq.threshold:
            self._counters.digressions.labels("answer").inc()
            await self._answer_faq(turn, stream)
        else:
            self._counters.digressions.labels("other").inc()
        self._say(turn, reprompt, "dialogue", quick)
        return True

    def _requested_route(self, turn: _Turn) -> Edge | None:
        """The global route a request inside a collection asks for (我要投诉, 帮我看看 app 闪退), if any."""
        if not turn.act.is_request:
            return None
        for edge in self.graph.entry_node.explicit:
            if edge.kind == "intent" and (not edge.when or "request" in edge.when) and self._matches(edge, turn):
                return edge
        return None

    @staticmethod
    def _attempt(node: Node, turn: _Turn) -> bool:
        """Looks like a try at the value: digits or one Latin token for a pattern, or any short reply
        (不知道, 没有). Only asked of messages that are neither a question nor a request."""
        compact = re.sub(r"\s+", "", turn.norm)
        if node.pattern is not None and _ATTEMPT.search(compact):
            return True
        return len(compact) <= _SHORT if CJK.search(compact) else len(turn.norm.split()) <= 3

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
            "act": turn.act.act,
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
                "user", turn.said or turn.text or note or "", self.history_turns, id=turn.event.id,
                intent=turn.intent.name, confidence=round(turn.intent.confidence, 3), act=turn.act.act,
                sentiment=turn.sentiment.label,
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
    intents = IntentRecognizer.load(cfg.resolve_path(d.intents_path), cfg.resolve_path(d.intents_labelled_path))
    speech_acts = SpeechActClassifier.load(cfg.resolve_path(d.speech_acts_path))
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
        handoff_ttl_s=cfg.state.handoff_ttl_s,
        context_tokens=cfg.engine.context_tokens,
        max_new_tokens=cfg.engine.max_new_tokens,
        notifier=notifier,
        waiting=WaitingCare.from_config(cfg.handoff),
        speech_acts=speech_acts,
        metrics=services.metrics,
    )
