"""What a turn is: the handler protocol the hub runs for each event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bot.answer import StreamFn
from bot.state import DialogueState
from bot.types import Event, Reply


@dataclass(frozen=True, slots=True)
class TurnResult:
    state: DialogueState  # saved by the hub with compare-and-set
    replies: tuple[Reply, ...] = ()


class TurnHandler(Protocol):
    async def handle(self, event: Event, state: DialogueState, stream: StreamFn) -> TurnResult:
        """Decide the replies and the next state. Pure with respect to I/O other
        than the engine: the hub saves state and sends replies, so a turn that
        loses a compare-and-set race can simply run again."""
