"""What a customer handed to a person hears while waiting: never silence.

After a handoff the bot keeps quiet so it does not talk over the agent, but a
customer left without a word when nobody is there (outside service hours, or
no agent picks up) gives up. So, with no background timer (everything is
decided when the customer writes, from the times kept on :class:`Handoff`):

- at the handoff: the service hours, or outside them when a person will
  answer and that a message left here is kept for the agent;
- the first message left outside the hours is acknowledged once, with the
  next opening time (not every message: the agent reads them all later);
- when the customer writes and has waited ``agent_timeout_s`` with no agent
  reply (counted only while someone was on duty), the bot says so once and
  offers to help meanwhile: "继续咨询机器人" gives the conversation back, and
  from then on a question the FAQ knows is answered by the bot while the
  conversation stays in the agents' hands;
- an agent's reply (``bot.dialogue.handoff.agent_replied``) starts the count
  again from the customer's next message.

Pure decisions over times passed in; the dialogue manager applies them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bot import messages
from bot.config import HandoffConfig
from bot.service_hours import ServiceHours
from bot.state import Handoff
from bot.text import normalize

Say = tuple[str, tuple[str, ...]]  # text, quick replies
_AGENT_ACTIVE_S = 600.0  # with no agent_timeout_s: how long after a reply an agent counts as on duty


@dataclass(frozen=True, slots=True)
class WaitStep:
    """What one customer message while waiting leads to."""

    handoff: Handoff  # the handoff with its waiting marks updated
    says: tuple[Say, ...] = ()
    release: bool = False  # the customer chose the bot: the handoff ends
    may_answer: bool = False  # nobody answered in time: the bot may answer the message itself


class WaitingCare:
    def __init__(self, hours: ServiceHours, agent_timeout_s: float) -> None:
        self.hours = hours
        self.agent_timeout_s = agent_timeout_s
        self._agent_active_s = agent_timeout_s or _AGENT_ACTIVE_S
        self._continue = frozenset(normalize(messages.text("handoff_continue", lang)) for lang in ("zh", "en"))

    @classmethod
    def from_config(cls, cfg: HandoffConfig) -> WaitingCare:
        return cls(ServiceHours.parse(cfg.hours.model_dump(), cfg.timezone), cfg.agent_timeout_s)

    def continue_label(self, lang: str) -> str:
        return messages.text("handoff_continue", lang)

    def on_handoff(self, now: float, lang: str) -> Say:
        """The acknowledgement added to the handoff node's own text."""
        hours = self.hours.describe(lang)
        if self.hours.is_open(now):
            return messages.text("handoff_hours", lang).format(hours=hours), ()
        nxt = self.hours.when(self.hours.next_opening(now), now, lang)
        return messages.text("handoff_closed", lang).format(hours=hours, next=nxt), (self.continue_label(lang),)

    def _on_duty(self, h: Handoff, now: float) -> bool:
        """Inside the hours, or an agent answered this conversation lately (working late: the customer
        must not hear "a person will answer tomorrow" right after one did)."""
        return self.hours.is_open(now) or bool(h.agent_at and now - h.agent_at < self._agent_active_s)

    def on_message(self, handoff: Handoff, text: str, now: float, lang: str) -> WaitStep:
        """A customer message (or attachment: ``text`` empty) while a person has the conversation."""
        if normalize(text) in self._continue:
            return WaitStep(handoff, ((messages.text("handoff_bot_back", lang), ()),), release=True)
        h = handoff
        if not h.waiting_since:  # the first message since the handoff, or since the agent last answered
            h = dataclasses.replace(h, waiting_since=h.since if not h.agent_at and h.since else now)
        if not self._on_duty(h, now):
            if h.noted:
                return WaitStep(h, may_answer=h.late)
            nxt = self.hours.when(self.hours.next_opening(now), now, lang)
            said = messages.text("handoff_noted", lang).format(next=nxt)
            return WaitStep(dataclasses.replace(h, noted=True), ((said, (self.continue_label(lang),)),),
                            may_answer=h.late)
        if h.late or not self.agent_timeout_s:
            return WaitStep(h, may_answer=h.late)
        opened = self.hours.opened_at(now) or 0.0  # 0: past the hours, an agent still at it
        waited = now - max(h.waiting_since, opened)  # time nobody on duty could answer does not count
        if waited < self.agent_timeout_s:
            return WaitStep(h)
        said = messages.text("handoff_late", lang)
        return WaitStep(dataclasses.replace(h, late=True), ((said, (self.continue_label(lang),)),), may_answer=True)

