"""One customer talking to the shipped dialogue (config/dialogue.yaml, intents, speech acts, FAQ) in
process: the replies of each turn and the state after it."""

from __future__ import annotations

from typing import Any

from bot.answer import no_stream
from bot.dialogue.manager import DialogueManager
from bot.faq import FaqIndex
from bot.services import Services
from bot.state import DialogueState
from bot.types import ConversationRef, Event, EventKind, Reply


class Customer:
    def __init__(self, services: Services, name: str = "mei") -> None:
        mgr = services.hub.handler
        assert isinstance(mgr, DialogueManager)
        self.mgr = mgr
        self.ref = ConversationRef(channel="api", conversation_id=name, user_id=name)
        self.state = DialogueState(key=self.ref.key)
        self.n = 0
        self.replies: tuple[Reply, ...] = ()

    @property
    def faq(self) -> FaqIndex:
        return self.mgr.faq

    async def say(self, text: str, **event: Any) -> list[str]:
        self.n += 1
        ev = Event(id=f"{self.ref.user_id}-{self.n}", kind=EventKind.MESSAGE, ref=self.ref, text=text, **event)
        result = await self.mgr.handle(ev, self.state, no_stream)
        self.state = result.state.replace(version=self.state.version + 1, updated_at=self.mgr.clock())
        self.replies = result.replies
        return [r.text for r in result.replies]

    @property
    def quick(self) -> list[str]:
        return [q for r in self.replies for q in r.quick_replies]

    def answer(self, faq_id: str) -> str:
        return self.faq.by_id[faq_id].answer

    def text(self, name: str) -> str:
        return self.mgr.graph.texts[name].get(self.state.lang or "zh")

    def prompt(self, node: str, key: str = "prompt") -> str:
        text = getattr(self.mgr.graph.nodes[node], key)
        assert text is not None
        return text.get(self.state.lang or "zh")
