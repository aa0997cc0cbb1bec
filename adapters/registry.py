"""Which channel adapters run, decided from the config."""

from __future__ import annotations

from adapters.api import ApiAdapter
from adapters.base import Channel, ChannelAdapter
from bot.services import Services


def build_channels(services: Services) -> list[Channel]:
    """Every configured channel, as its inbound half and its sender."""
    return [Channel(a.name, sender=a, inbound=a) for a in build_adapters(services)]


def build_adapters(services: Services) -> list[ChannelAdapter]:
    cfg = services.config
    adapters: list[ChannelAdapter] = [ApiAdapter(services)]
    # Channel adapters are added below as they are enabled by config.
    from adapters import wecom

    if wecom.enabled(cfg.wecom):
        adapters.append(wecom.WecomAdapter(services))
    if cfg.dingtalk.app_key:
        from adapters.dingtalk.adapter import DingtalkAdapter

        adapters.append(DingtalkAdapter(services))
    if cfg.dingtalk.notify_webhook:  # the team's DingTalk group hears about handoffs, whatever the channels
        from adapters.dingtalk.robot import GroupRobotNotifier
        from bot.state.shared import WindowGate

        gate = WindowGate(services.kv, services.keys.rate, cfg.dingtalk.notify_rate_per_min)
        services.notifiers.append(GroupRobotNotifier(lambda: services.http, gate, cfg.dingtalk.notify_webhook,
                                                     cfg.dingtalk.notify_secret))
    if cfg.web.enabled:
        from adapters.web import WebAdapter

        adapters.append(WebAdapter(services))
    del cfg
    return adapters
