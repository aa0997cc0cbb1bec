"""The DingTalk sender (every process that runs turns): replies through the sessionWebhook or the
robot OpenAPI, streamed answers into an AI card when ``dingtalk.card_template_id`` is set.

Which card an event's answer streams into is in the shared KV (:class:`CardRecords`), so a turn
that runs again on another worker (its first worker died mid-answer, or after deciding it but
before sending) updates and finalizes the card the customer already sees rather than opening a
second one or sending the answer again as a message. The app token and the robot's send budget
are shared through the KV too (adapters/dingtalk/api.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from adapters.dingtalk.api import DingtalkApi, Target, has_markdown
from adapters.dingtalk.card import AiCard, CardRecords
from adapters.dingtalk.parse import CHANNEL
from adapters.render import as_markdown, as_text
from bot.services import Services
from bot.types import ConversationRef, Event, Reply, ReplyChunk

log = logging.getLogger(__name__)


def _event_key(ref: ConversationRef, event_id: str) -> str:
    """What :attr:`bot.types.Event.dedup_key` is for the event a chunk answers."""
    return f"{ref.channel}:{ref.tenant}:{event_id}"


class DingtalkSender:
    name = CHANNEL

    def __init__(self, services: Services, *, clock: Callable[[], float] = time.time) -> None:
        self.cfg = services.config.dingtalk
        self.api = DingtalkApi(self.cfg, lambda: services.http, services.kv, services.keys, clock=clock)
        # as long as a redelivered event is recognized as one
        self.cards = CardRecords(services.kv, services.keys, services.config.state.dedup_ttl_s)
        self._streaming: dict[str, AiCard | None] = {}  # event -> the card its turn streams into here (None: none)

    async def stream(self, chunk: ReplyChunk) -> None:
        """Partial answers go into an AI card when ``dingtalk.card_template_id`` is set."""
        if not self.cfg.card_template_id:
            return
        key = _event_key(chunk.to, chunk.in_reply_to)
        if key not in self._streaming:
            self._streaming[key] = await self._open_card(key, chunk.to)
        card = self._streaming[key]
        if card is not None:
            card.push(chunk.text_so_far)

    async def _open_card(self, key: str, ref: ConversationRef) -> AiCard | None:
        try:
            record = await self.cards.reserve(key)
        except Exception as exc:  # no shared record, no card: the answer goes as a message
            log.warning("no AI card for %s: its record cannot be written (%s)", key, type(exc).__name__)
            return None
        if record.created:
            log.info("the turn for %s runs again: streaming into its card %s", key, record.out_track_id)

        async def created() -> None:
            await self.cards.mark_created(key, record.out_track_id)

        return AiCard(self.api, self.cfg, Target.of(None, ref), out_track_id=record.out_track_id,
                      created=record.created, on_created=created)

    async def _card_for(self, event: Event | None) -> AiCard | None:
        """The card this event's answer goes into: streamed here, or recorded by a worker that ran the
        turn before (this delivery repeats an answer decided there)."""
        if event is None or not self.cfg.card_template_id:
            return None
        key = event.dedup_key
        if key in self._streaming:
            return self._streaming.pop(key)
        try:
            record = await self.cards.get(key)
        except Exception as exc:
            log.warning("card record of %s unreadable (%s); answering with a message", key, type(exc).__name__)
            return None
        if record is None or not record.created:
            return None
        log.info("finalizing card %s of %s, streamed by an earlier run of the turn", record.out_track_id, key)
        return AiCard(self.api, self.cfg, Target.of(event, event.ref), out_track_id=record.out_track_id, created=True)

    async def deliver(self, event: Event | None, replies: Sequence[Reply]) -> None:
        card = await self._card_for(event)
        errors: list[Exception] = []
        for i, reply in enumerate(replies):
            if card is not None and i == 0:
                shown = as_markdown(reply)  # cards render markdown
                # the hub answers a failed or timed-out turn with a "system" apology
                if await (card.fail(shown) if reply.source == "system" else card.finish(shown)):
                    continue
            markdown = reply.markdown or has_markdown(as_markdown(reply))
            text = as_markdown(reply) if markdown else as_text(reply)
            target = Target.of(event, reply.to)
            try:
                await self.api.send(target, text, markdown)
            except Exception as exc:
                log.error("DingTalk reply to %s failed: %s", reply.to.conversation_id, exc)
                errors.append(exc)
        if card is not None and not replies and card.latest:
            await card.finish(card.latest)
        if errors:
            raise errors[0]

    async def close(self) -> None:
        cards = [c for c in self._streaming.values() if c is not None]
        self._streaming.clear()
        for card in cards:  # turns still streaming are handed back; a rerun finds their cards in the KV
            await card.abandon()
