"""Choose the store from ``state.url``."""

from __future__ import annotations

from bot.config import StateConfig
from bot.logsafe import redact_url
from bot.state.base import StateStore
from bot.state.keys import Keys
from bot.state.memory import MemoryStore


def open_store(cfg: StateConfig) -> StateStore:
    if cfg.url.startswith("memory://"):
        return MemoryStore(cfg.idle_ttl_s, cfg.dedup_ttl_s, handoff_ttl_s=cfg.handoff_ttl_s)
    if cfg.url.startswith(("redis://", "rediss://", "unix://")):
        from bot.state.redis import RedisStore

        return RedisStore.from_url(cfg.url, Keys(cfg.key_prefix), cfg.idle_ttl_s, cfg.dedup_ttl_s,
                                   max_connections=cfg.max_connections, pool_timeout_s=cfg.pool_timeout_s,
                                   socket_timeout_s=cfg.socket_timeout_s, connect_timeout_s=cfg.connect_timeout_s,
                                   handoff_ttl_s=cfg.handoff_ttl_s)
    raise ValueError(f"state.url: expected memory:// or redis://..., got {redact_url(cfg.url)}")
