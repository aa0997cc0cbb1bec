"""Streaming an answer into a DingTalk AI card while the engine generates it.

The card is created and delivered on the first token, updated with the whole
text so far (``isFull``) at most once per ``card_update_interval_s`` by one
background task, so the engine never waits for DingTalk, and finally
finalized with the complete answer or marked failed. Any card failure leaves
the answer to the ordinary message path: a reply is never lost to a card.

Which card an answer streams into is kept in the shared KV (:class:`CardRecords`,
Redis when state is), by event: a turn that runs again on another worker (its
first worker died) streams into, and finalizes, the card the customer already
sees instead of opening a second one. The updater task itself lives in the
process running the turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from adapters.dingtalk.api import DingtalkApi, DingtalkError, Target
from bot.config import DingtalkConfig
from bot.state.keys import Keys
from bot.state.kv import SharedKV

log = logging.getLogger(__name__)

# flowStatus values of DingTalk AI card templates
PROCESSING, INPUTING, FINISHED, FAILED = "1", "2", "3", "5"


def new_out_track_id() -> str:
    return f"kefu-{uuid.uuid4().hex}"


@dataclass(frozen=True, slots=True)
class CardRecord:
    out_track_id: str
    created: bool = False  # created and delivered into the chat


class CardRecords:
    """Event (dedup key) -> the card its answer streams into, in the shared KV with a TTL."""

    def __init__(self, kv: SharedKV, keys: Keys, ttl_s: float) -> None:
        self.kv = kv
        self.keys = keys
        self.ttl_s = ttl_s

    async def get(self, event_key: str) -> CardRecord | None:
        raw = await self.kv.get(self.keys.dingtalk_card(event_key))
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return CardRecord(str(data["id"]), bool(data.get("created")))
        except (ValueError, TypeError, KeyError):
            log.warning("unreadable card record for %s ignored", event_key)
            return None

    async def reserve(self, event_key: str) -> CardRecord:
        """The event's card: the one already recorded (the turn runs again), else a new id, recorded first."""
        fresh = CardRecord(new_out_track_id())
        if await self.kv.set_nx(self.keys.dingtalk_card(event_key), _dump(fresh), self.ttl_s):
            return fresh
        return await self.get(event_key) or fresh

    async def mark_created(self, event_key: str, out_track_id: str) -> None:
        await self.kv.set(self.keys.dingtalk_card(event_key), _dump(CardRecord(out_track_id, True)), self.ttl_s)


def _dump(record: CardRecord) -> str:
    return json.dumps({"id": record.out_track_id, "created": record.created})


class AiCard:
    """One card for one answer: ``push`` partial text, then ``finish`` or ``fail``. With ``created`` the card
    already exists (a turn running again, or only finalizing): it is updated, never created a second time."""

    def __init__(self, api: DingtalkApi, cfg: DingtalkConfig, target: Target, *, out_track_id: str | None = None,
                 created: bool = False, on_created: Callable[[], Awaitable[None]] | None = None) -> None:
        self.api = api
        self.cfg = cfg
        self.target = target
        self.out_track_id = out_track_id or new_out_track_id()
        self.created = created
        self._on_created = on_created
        self.updates = 0  # intermediate updates sent; tests and logs read it
        self._latest = ""
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def latest(self) -> str:
        return self._latest

    def push(self, text_so_far: str) -> None:
        """Record the newest partial answer; never waits for DingTalk."""
        self._latest = text_so_far
        self._changed.set()
        if self._task is None:
            self._task = asyncio.create_task(self._pump(), name=f"dingtalk card {self.out_track_id}")

    async def finish(self, text: str) -> bool:
        """Show the final answer. False: the card is unusable and the caller must send ``text`` itself."""
        if not await self._stop():
            return False
        try:
            await self._stream(text, finalize=True)
        except DingtalkError as exc:
            log.warning("finalizing card %s failed (%s); sending the answer as a message", self.out_track_id, exc)
            await self._mark(FAILED, self._latest)
            return False
        await self._mark(FINISHED, text)
        return True

    async def fail(self, text: str) -> bool:
        """Mark the card failed, showing ``text`` (the apology). False: send ``text`` yourself."""
        if not await self._stop():
            return False
        with contextlib.suppress(DingtalkError):
            await self._stream(text, finalize=True, error=True)
        return await self._mark(FAILED, text)

    async def abandon(self) -> None:
        """Stop updating without an end (shutdown): the card stays as it is, for a rerun of the turn to finish."""
        self._closing.set()  # also ends the loop should the cancel below be swallowed by its wait_for
        self._changed.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _stop(self) -> bool:
        """Stop the updater after its in-flight call; True when the card exists."""
        self._closing.set()
        self._changed.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        return self.created

    async def _pump(self) -> None:
        if not self.created:
            try:
                await self._create()
                self.created = True
            except DingtalkError as exc:
                log.warning("creating an AI card failed (%s); the answer goes as a message", exc)
                return
            if self._on_created is not None:
                try:
                    await self._on_created()
                except Exception as exc:  # the card works; only a rerun on another worker would not find it
                    log.warning("recording card %s failed: %s", self.out_track_id, exc)
        inputing = False
        while True:
            await self._changed.wait()
            if self._closing.is_set():
                return
            self._changed.clear()
            try:
                if not inputing:
                    inputing = await self._mark(INPUTING, "")
                await self._stream(self._latest, finalize=False)
                self.updates += 1
            except DingtalkError as exc:
                log.warning("updating card %s failed: %s", self.out_track_id, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.cfg.card_update_interval_s)
                return

    async def _create(self) -> None:
        key = self.cfg.card_content_key
        await self.api.wait_send_rate()  # a new card is a new message in the chat: it counts against the send rate
        await self.api.call("POST", "/v1.0/card/instances", {
            "cardTemplateId": self.cfg.card_template_id,
            "outTrackId": self.out_track_id,
            "cardData": {"cardParamMap": {"flowStatus": PROCESSING, key: ""}},
            "callbackType": "STREAM",
            "imGroupOpenSpaceModel": {"supportForward": True},
            "imRobotOpenSpaceModel": {"supportForward": True},
        })
        t = self.target
        body: dict[str, Any] = {"outTrackId": self.out_track_id, "userIdType": 1}
        if t.is_group:
            deliver: dict[str, Any] = {"robotCode": self.api.robot_code}
            if t.staff_id:
                deliver["atUserIds"] = {t.staff_id: t.nick or t.staff_id}
            body.update(openSpaceId=f"dtv1.card//IM_GROUP.{t.conversation_id}", imGroupOpenDeliverModel=deliver)
        elif t.staff_id:
            body.update(openSpaceId=f"dtv1.card//IM_ROBOT.{t.staff_id}",
                        imRobotOpenDeliverModel={"spaceType": "IM_ROBOT"})
        else:
            raise DingtalkError("a single-chat card needs the sender's userid")
        await self.api.call("POST", "/v1.0/card/instances/deliver", body)

    async def _stream(self, text: str, *, finalize: bool, error: bool = False) -> None:
        await self.api.call("PUT", "/v1.0/card/streaming", {
            "outTrackId": self.out_track_id,
            "guid": uuid.uuid4().hex,
            "key": self.cfg.card_content_key,
            "content": text,
            "isFull": True,
            "isFinalize": finalize,
            "isError": error,
        })

    async def _mark(self, status: str, text: str) -> bool:
        params = {"flowStatus": status}
        if text:
            params[self.cfg.card_content_key] = text
        try:
            await self.api.call("PUT", "/v1.0/card/instances", {
                "outTrackId": self.out_track_id,
                "cardData": {"cardParamMap": params},
                "cardUpdateOptions": {"updateCardDataByKey": True},
            })
            return True
        except DingtalkError as exc:
            log.warning("setting card %s to status %s failed: %s", self.out_track_id, status, exc)
            return False
