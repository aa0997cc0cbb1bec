"""WeCom (企业微信): self-built app callbacks, AI bot streaming, active sends, group robot."""

from adapters.wecom.adapter import WecomAdapter, enabled

__all__ = ["WecomAdapter", "enabled"]
