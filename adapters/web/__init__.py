"""The web channel: an embeddable chat widget with streamed answers.

:class:`WebInbound` (gateways: the widget's routes, rate limits, origin checks, SSE) and
:class:`WebSender` (every process that runs turns: ``stream``, ``deliver``, ``erase``) share one
event log and one feedback store, opened by :func:`open_stores`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters.web.events import EventLog, MemoryEventLog, RedisEventLog
from adapters.web.feedback import FeedbackStore, MemoryFeedbackStore, RedisFeedbackStore
from adapters.web.inbound import WebInbound
from adapters.web.sender import WebSender

if TYPE_CHECKING:
    from bot.services import Services


def open_stores(services: Services) -> tuple[EventLog, FeedbackStore]:
    """The session event log and the feedback store, in Redis when state is, else in this process."""
    cfg, idle = services.config.web, services.config.state.idle_ttl_s
    if services.redis is not None:
        return (RedisEventLog(services.redis, services.keys, cfg.replay_events, idle,
                              blocking=services.redis_blocking, max_sessions=cfg.max_sessions),
                RedisFeedbackStore(services.redis, services.keys, idle))
    return MemoryEventLog(cfg.replay_events, idle, cfg.max_sessions), MemoryFeedbackStore()


__all__ = ["WebInbound", "WebSender", "open_stores"]
