"""WeCom (企业微信): self-built app callbacks, AI bot streaming, active sends, group robot.

:class:`WecomInbound` (gateways) verifies, decrypts and accepts callbacks; :class:`WecomSender` (every
process that runs turns) sends answers through ``message/send``, the AI bot's stream buffers (in the KV)
and response_url, and the reply bus for AI-bot event greetings.
"""

from adapters.wecom.apps import enabled
from adapters.wecom.inbound import WecomInbound
from adapters.wecom.sender import WecomSender

__all__ = ["WecomInbound", "WecomSender", "enabled"]
