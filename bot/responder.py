"""The simplest turn handler: greet on events, answer messages from the FAQ or
the engine, keep a bounded history. The dialogue graph replaces it when
configured; both share :class:`bot.answer.Answerer`."""

from __future__ import annotations

from bot import messages
from bot.answer import Answerer, StreamFn
from bot.state import DialogueState
from bot.text import detect_lang
from bot.turn import TurnResult
from bot.types import Event, EventKind, Reply


class SimpleResponder:
    def __init__(self, answerer: Answerer, history_turns: int) -> None:
        self.answerer = answerer
        self.history_turns = history_turns

    async def handle(self, event: Event, state: DialogueState, stream: StreamFn) -> TurnResult:
        lang = event.lang or (detect_lang(event.text) if event.text else state.lang or "zh")
        if event.kind is EventKind.EVENT:
            if event.name in ("enter_agent", "subscribe", "open"):
                return self._reply(state, event, messages.text("greeting", lang), "system", record_user=False)
            return TurnResult(state)
        if event.kind is EventKind.FEEDBACK:
            return TurnResult(state)
        if not (event.text and event.text.strip()):
            kinds = {a.kind for a in event.attachments}
            name = "voice_unrecognized" if "voice" in kinds else "attachment_only" if kinds else "unsupported"
            return self._reply(state, event, messages.text(name, lang), "system")
        history = state.history[-self.history_turns :]
        answer = await self.answerer.answer(
            event.text, lang=lang, history=history, context=event.context, stream=stream
        )
        state = state.replace(lang=lang)
        return self._reply(state, event, answer.text, answer.source, quick_replies=answer.suggestions)

    def _reply(
        self,
        state: DialogueState,
        event: Event,
        text: str,
        source: str,
        *,
        quick_replies: tuple[str, ...] = (),
        record_user: bool = True,
    ) -> TurnResult:
        if record_user:
            state = state.with_turn("user", event.text or "", self.history_turns, id=event.id)
        state = state.with_turn("assistant", text, self.history_turns, source=source)
        reply = Reply(to=event.ref, text=text, quick_replies=quick_replies, in_reply_to=event.id, source=source)
        return TurnResult(state, (reply,))
