"""Which channel adapters run, decided from the config."""

from __future__ import annotations

from adapters.api import ApiAdapter
from adapters.base import ChannelAdapter
from bot.services import Services


def build_adapters(services: Services) -> list[ChannelAdapter]:
    cfg = services.config
    adapters: list[ChannelAdapter] = [ApiAdapter(services)]
    # Channel adapters are added below as they are enabled by config.
    del cfg
    return adapters
