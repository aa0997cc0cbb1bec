"""Dialogue-state persistence: one protocol, an in-memory and a Redis store."""

from bot.state.base import (
    SENT,
    DialogueState,
    Handoff,
    HistoryTurn,
    LedgerEntry,
    SeenPending,
    StateStore,
    StoreDown,
    VersionConflict,
)
from bot.state.factory import open_store

__all__ = [
    "SENT", "DialogueState", "Handoff", "HistoryTurn", "LedgerEntry", "SeenPending", "StateStore", "StoreDown",
    "VersionConflict", "open_store",
]
