"""The input filter: a turn-pipeline step (``safety_in``) before the dialogue.

Every channel's messages pass through the pipeline, so checking here checks
them all. A message is looked at for prompt injection and SQL / shell shapes
(:mod:`bot.safety.injection`) and for the operator blocklist
(:mod:`bot.safety.blocklist`, also inside base64), and each category found
takes its action from ``safety.actions``; the strongest one decides the turn:

``flag``    counted, the turn goes on unchanged (SQL and shell shapes by default: nothing here runs SQL or a shell).
``mask``    the found text becomes ``*`` in the event the rest of the turn sees (the customer's own screen keeps
            what they wrote); the dialogue answers the rest.
``refuse``  a polite refusal in the customer's language, and the turn is decided. The history records the
            refusal and, for the customer's message, a placeholder: the attack never reaches a later prompt nor
            the store, and the next message is answered as if nothing happened.
``handoff`` as refuse, but a person takes the conversation over and the team is notified (bot.dialogue.handoff).

While a person has the conversation the bot stays silent anyway: findings are then only masked, so what the
agent reads (and what a later prompt could see after the release) holds no attack.

Every finding is counted in ``kefu_safety_verdicts_total{stage="input",category,action}``; log lines name the
category and rule, never the text.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from bot import messages
from bot.config import Config
from bot.dialogue.handoff import HandoffNotifier
from bot.metrics import Metrics
from bot.pipeline import TurnContext
from bot.safety.blocklist import Blocklist, mask_spans
from bot.safety.injection import INJECTION, SHELL, SQL, detect, hidden_texts
from bot.safety.normalize import normalize
from bot.state import DialogueState, Handoff
from bot.text import detect_lang
from bot.types import EventKind, Reply

log = logging.getLogger(__name__)

ACTIONS = ("flag", "mask", "refuse", "handoff")  # weakest first: the strongest action found decides
DEFAULT_ACTIONS: Mapping[str, str] = MappingProxyType({
    INJECTION: "refuse", SQL: "flag", SHELL: "flag", "blocklist": "refuse", "abuse": "mask",
})
HANDOFF_REASON = "safety"
_COUNTED_EVENTS = 4096  # a turn run again after a compare-and-set conflict is not counted twice


@dataclass(frozen=True, slots=True)
class Span:
    category: str
    rule: str  # the injection rule, or ``blocklist``
    start: int  # [start, end) in the message as the customer wrote it
    end: int


@dataclass(frozen=True, slots=True)
class Verdict:
    spans: tuple[Span, ...]
    actions: Mapping[str, str]  # category found -> its action
    action: str | None  # the strongest; None: nothing found
    category: str | None  # the category that decided

    @property
    def clean(self) -> bool:
        return self.action is None

    @property
    def refused(self) -> bool:
        return self.action in ("refuse", "handoff")


class InputFilter:
    name = "safety_in"

    def __init__(
        self,
        blocklist: Blocklist,
        metrics: Metrics,
        *,
        history_turns: int,
        actions: Mapping[str, str] = DEFAULT_ACTIONS,
        notifier: HandoffNotifier | None = None,
        clock=time.time,
    ) -> None:
        unknown = {a for a in actions.values() if a not in ACTIONS}
        if unknown:
            raise ValueError(f"unknown safety actions: {sorted(unknown)}")
        self.blocklist = blocklist
        self.metrics = metrics
        self.history_turns = history_turns
        self.actions = dict(actions)
        self.notifier = notifier
        self.clock = clock
        self._counted: OrderedDict[str, None] = OrderedDict()

    @classmethod
    def from_config(cls, config: Config, metrics: Metrics, *, notifier: HandoffNotifier | None = None) -> InputFilter:
        """The step as configured: ``safety.blocklist_path`` (a missing file is a start-up error), ``safety.actions``
        over the defaults."""
        blocklist = Blocklist.from_file(Path(config.resolve_path(config.safety.blocklist_path)))
        return cls(blocklist, metrics, history_turns=config.state.history_turns,
                   actions={**DEFAULT_ACTIONS, **config.safety.actions}, notifier=notifier)

    # ------------------------------------------------------------------ the verdict (pure)
    def action_for(self, category: str, *, from_blocklist: bool) -> str:
        if category in self.actions:
            return self.actions[category]
        return self.actions.get("blocklist", "refuse") if from_blocklist else "flag"

    def check(self, text: str) -> Verdict:
        norm = normalize(text)
        spans = [Span(f.category, f.rule, f.start, f.end) for f in detect(norm)]
        blocked = [Span(h.category, "blocklist", h.start, h.end) for h in self.blocklist.find(norm)]
        for start, end, decoded in hidden_texts(text):  # 敏感词 in base64 are 敏感词 too
            blocked += [Span(h.category, "blocklist_base64", start, end) for h in self.blocklist.find(decoded)]
        actions: dict[str, str] = {}
        for span in spans:
            actions.setdefault(span.category, self.action_for(span.category, from_blocklist=False))
        for span in blocked:
            actions.setdefault(span.category, self.action_for(span.category, from_blocklist=True))
        if not actions:
            return Verdict((), MappingProxyType({}), None, None)
        category = max(actions, key=lambda c: ACTIONS.index(actions[c]))
        return Verdict(tuple(spans + blocked), MappingProxyType(actions), actions[category], category)

    # ------------------------------------------------------------------ the step
    async def run(self, ctx: TurnContext) -> None:
        event = ctx.event
        if event.kind is not EventKind.MESSAGE or not event.text or not event.text.strip():
            return
        verdict = self.check(event.text)
        if verdict.clean:
            return
        assert ctx.state is not None
        state = ctx.state
        action = verdict.action
        if state.handed_off and action in ("refuse", "handoff"):
            action = "mask"  # a person has it: the bot says nothing, the agent reads it masked
        self._count(event.dedup_key, verdict, event.ref.channel)
        if action == "flag":
            return
        if action == "mask":
            masked = mask_spans(event.text, [(s.start, s.end) for s in verdict.spans
                                             if ACTIONS.index(verdict.actions[s.category]) >= ACTIONS.index("mask")])
            ctx.event = dataclasses.replace(event, text=masked)
            return
        lang = event.lang or detect_lang(event.text)
        assert verdict.category is not None
        if action == "refuse":
            name = "safety_refused_injection" if verdict.category in (INJECTION, SQL, SHELL) else "safety_refused"
            text = messages.text(name, lang)
            ctx.state = self._record(state, event.id, text, verdict.category, lang)
        else:
            text = messages.text("safety_handoff", lang)
            recorded = self._record(state, event.id, text, verdict.category, lang)
            ctx.state = recorded.replace(handed_off=True, node=None, invalid_answers=0,
                                         handoff=Handoff(HANDOFF_REASON, state.node, self.clock()))
            if self.notifier is not None:
                await self.notifier.notify(event.ref, ctx.state, HANDOFF_REASON, event.dedup_key)
        ctx.replies = (Reply(event.ref, text, in_reply_to=event.id, source="safety",
                             meta=MappingProxyType({"safety": verdict.category})),)
        ctx.decided = True

    def _record(self, state: DialogueState, event_id: str, reply: str, category: str, lang: str) -> DialogueState:
        """The refused message is kept only as a placeholder: the conversation goes on, the attack stays out."""
        state = state.replace(lang=state.lang or lang)
        state = state.with_turn("user", messages.text("safety_withheld", lang), self.history_turns, id=event_id,
                                safety=category)
        return state.with_turn("assistant", reply, self.history_turns, source="safety", safety=category)

    def _count(self, dedup_key: str, verdict: Verdict, channel: str) -> None:
        if dedup_key in self._counted:
            return
        self._counted[dedup_key] = None
        if len(self._counted) > _COUNTED_EVENTS:
            self._counted.popitem(last=False)
        for category, action in verdict.actions.items():
            self.metrics.safety_verdicts.labels("input", category, action).inc()
        rules = sorted({s.rule for s in verdict.spans})
        log.info("input filter on %s: %s (rules %s) -> %s", channel,
                 ", ".join(sorted(verdict.actions)), ", ".join(rules), verdict.action)
