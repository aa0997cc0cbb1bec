"""Graph-based dialogue management: intents, slots, sentiment, context and
human handoff. :class:`DialogueManager` is the hub's turn handler when
``dialogue.enabled``; :func:`build_manager` makes it from the services."""

from bot.dialogue.graph import Graph, GraphError, compile_graph
from bot.dialogue.manager import DialogueManager, build_manager

__all__ = ["DialogueManager", "Graph", "GraphError", "build_manager", "compile_graph"]
