"""Which channels run, decided from the config, and which halves of them this process builds:
senders everywhere (every process that runs turns sends), inbound halves (routes, Stream-mode
connections) only on processes that take events (gateways)."""

from __future__ import annotations

from adapters.api import ApiInbound, ApiSender
from adapters.base import Channel
from bot.services import Services


def build_channels(services: Services) -> list[Channel]:
    """Every configured channel, as its inbound half (None on a worker) and its sender."""
    cfg = services.config
    gateway = services.takes_events
    channels = [Channel(ApiSender.name, sender=ApiSender(services), inbound=ApiInbound(services) if gateway else None)]
    from adapters import wecom

    if wecom.enabled(cfg.wecom):
        wecom_sender = wecom.WecomSender(services)
        channels.append(Channel(wecom_sender.name, sender=wecom_sender,
                                inbound=wecom.WecomInbound(services) if gateway else None))
        if cfg.wecom.robot_key:  # the team's WeCom group hears about handoffs, from whichever process runs the turn
            from adapters.wecom.robot import RobotNotifier
            from bot.state.shared import WindowGate

            robot_gate = WindowGate(services.kv, services.keys.rate, cfg.wecom.robot_rate_per_min)
            services.notifiers.append(RobotNotifier(wecom_sender.policy, robot_gate, cfg.wecom.api_base,
                                                    cfg.wecom.robot_key))
    if cfg.dingtalk.app_key:
        from adapters.dingtalk.inbound import DingtalkInbound
        from adapters.dingtalk.sender import DingtalkSender

        channels.append(Channel(DingtalkSender.name, sender=DingtalkSender(services),
                                inbound=DingtalkInbound(services) if gateway else None))
    if cfg.dingtalk.notify_webhook:  # the team's DingTalk group hears about handoffs, whatever the channels
        from adapters.dingtalk.robot import GroupRobotNotifier
        from bot.state.shared import WindowGate

        gate = WindowGate(services.kv, services.keys.rate, cfg.dingtalk.notify_rate_per_min)
        services.notifiers.append(GroupRobotNotifier(lambda: services.http, gate, cfg.dingtalk.notify_webhook,
                                                     cfg.dingtalk.notify_secret))
    if cfg.web.enabled:  # one event log and feedback store shared by both halves
        from adapters.web import WebInbound, WebSender, open_stores

        events, feedback = open_stores(services)
        channels.append(Channel(WebSender.name, sender=WebSender(events, feedback),
                                inbound=WebInbound(services, events, feedback) if gateway else None))
    del cfg
    return channels
