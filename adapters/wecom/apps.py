"""Which WeCom apps are configured: shared by the inbound half (callback secrets) and the sender (send secrets)."""

from __future__ import annotations

from bot.config import WecomAppConfig, WecomConfig

MAIN_APP = ""  # the app configured at the top of the wecom section; its tenant and /wecom/callback


def configured_apps(cfg: WecomConfig) -> dict[str, WecomAppConfig]:
    """Every app with a callback, by name (``""`` for the main one)."""
    apps: dict[str, WecomAppConfig] = {}
    if cfg.corp_id:
        apps[MAIN_APP] = WecomAppConfig(corp_id=cfg.corp_id, token=cfg.token, aes_key=cfg.aes_key,
                                        secret=cfg.secret, agent_id=cfg.agent_id)
    for name, app in cfg.apps.items():
        apps[name] = app if app.corp_id else app.model_copy(update={"corp_id": cfg.corp_id})
    return apps


def where(name: str) -> str:
    """The config path of an app, for messages."""
    return f"wecom.apps.{name}" if name else "wecom"


def enabled(cfg: WecomConfig) -> bool:
    return bool(cfg.corp_id or cfg.apps or cfg.aibot_token or cfg.robot_key)
