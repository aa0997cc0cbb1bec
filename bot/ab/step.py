"""The A/B test in the turn pipeline: ``ab`` assigns the arm first, so that every turn of a user in the test
counts for its arm (intention to treat: a refused or handed-off turn too); ``ab_tag`` (last, runs after any
decision) labels the replies so channels, the archive and feedback see the arm; ``after_turn`` counts turns,
latency, fallbacks and votes per arm once the answer went out."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from types import MappingProxyType

from bot.ab.assign import ArmChoice, choose, current_arm
from bot.metrics import Metrics
from bot.pipeline import TurnContext
from bot.types import EventKind, Reply
from engine.config import AbTest, EngineConfig

log = logging.getLogger(__name__)

# The answer did not come from the model: the FAQ's fallback after an engine failure, or "I don't know".
FALLBACK_SOURCES = frozenset({"fallback", "unknown"})
FAILED_OUTCOMES = frozenset({"timeout", "error"})  # the pipeline's apology
RATINGS = ("up", "down", "none")
# The reply that carries the answer when a turn sends several (as bot/archive/rows.py reads it).
_ANSWERING = ("faq", "llm", "agent", "dialogue", "fallback", "unknown", "safety")


def _main(replies: tuple[Reply, ...]) -> Reply | None:
    return next((r for r in replies if r.source in _ANSWERING), replies[0] if replies else None)


class AbAssign:
    """Step ``ab``: the user's arm on the context and, for the turn's model calls, in ``current_arm``."""

    name = "ab"

    def __init__(self, test: AbTest) -> None:
        self.test = test

    async def run(self, ctx: TurnContext) -> None:
        choice = choose(self.test, ctx.event.ref)
        ctx.arm, ctx.ab_test, ctx.arm_adapter = choice.id, choice.test, choice.adapter
        current_arm.set(choice)


class AbTag:
    """Step ``ab_tag``: ``meta["arm"]`` (``<test>/<arm>``, as archived) and ``meta["ab_test"]`` on every reply,
    and ``meta["adapter"]`` on the model's answers; then the turn's arm is cleared."""

    name = "ab_tag"
    checks = True  # labels whatever was decided, a refusal included

    async def run(self, ctx: TurnContext) -> None:
        current_arm.set(None)
        if ctx.arm is None:
            return
        tagged = []
        for reply in ctx.replies:
            extra: dict[str, object] = {"arm": ctx.arm, "ab_test": ctx.ab_test}
            if reply.source == "llm":
                extra["adapter"] = ctx.arm_adapter
            tagged.append(replace(reply, meta=MappingProxyType({**reply.meta, **extra})))
        ctx.replies = tuple(tagged)


class AbExperiment:
    """The enabled test: its two steps and the after-turn counters."""

    def __init__(self, test: AbTest, metrics: Metrics) -> None:
        self.test = test
        self.metrics = metrics

    @classmethod
    def from_config(cls, cfg: EngineConfig, metrics: Metrics) -> AbExperiment | None:
        test = cfg.ab_test
        if test is None:
            return None
        if cfg.kind == "faq":
            log.warning("A/B test %s is enabled but engine.kind is faq: no model answers, the arms differ in nothing",
                        test.name)
        return cls(test, metrics)

    def steps(self) -> tuple[AbAssign, AbTag]:
        return AbAssign(self.test), AbTag()

    def _choice(self, ctx: TurnContext) -> ArmChoice:
        """The arm the turn ran in; a resent turn skipped the steps, and the assignment gives the same arm."""
        return choose(self.test, ctx.event.ref)

    def after_turn(self, ctx: TurnContext) -> None:
        """The pipeline's after-deliver hook. A vote counts for the voter's arm (the same user, the same arm);
        platform events (greetings) are no answers to compare."""
        event = ctx.event
        if ctx.outcome == "duplicate":
            return
        choice = self._choice(ctx)
        if event.kind is EventKind.FEEDBACK:
            if event.name in RATINGS:
                self.metrics.ab_feedback.labels(choice.test, choice.arm, event.name).inc()
            return
        if event.kind is not EventKind.MESSAGE:
            return
        self.metrics.ab_turns.labels(choice.test, choice.arm).inc()
        self.metrics.ab_latency.labels(choice.test, choice.arm).observe(max(0.0, time.time() - event.received_at))
        main = _main(ctx.replies)
        if ctx.outcome in FAILED_OUTCOMES or (main is not None and main.source in FALLBACK_SOURCES):
            self.metrics.ab_fallbacks.labels(choice.test, choice.arm).inc()
