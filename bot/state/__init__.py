"""Dialogue-state persistence: one protocol, an in-memory and a Redis store."""

from bot.state.base import DialogueState, HistoryTurn, StateStore, VersionConflict
from bot.state.factory import open_store

__all__ = ["DialogueState", "HistoryTurn", "StateStore", "VersionConflict", "open_store"]
