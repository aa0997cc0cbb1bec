"""The WeCom sender (every process that runs turns): app answers through ``message/send``,
AI-bot answers into the stream buffers (in the KV), proactive AI-bot replies through the
conversation's response_url (in the KV), AI-bot event greetings on the reply bus.

Access tokens and per-user send budgets are shared through the KV, so any number of
workers send as one app (adapters/wecom/api.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from adapters.render import as_markdown, as_text
from adapters.wecom.aibot import AibotSender
from adapters.wecom.api import AccessToken, AppClient, CallPolicy, WecomApiError
from adapters.wecom.apps import configured_apps, where
from adapters.wecom.parse import AIBOT_TENANT, CHANNEL
from bot.config import WecomConfig
from bot.outbound import OutboundPolicy
from bot.services import Services
from bot.state.shared import WindowGate
from bot.types import ConversationRef, Event, Reply, ReplyChunk

log = logging.getLogger(__name__)


def response_url_policy(cfg: WecomConfig) -> OutboundPolicy:
    """Where an AI-bot response_url may point: ``wecom.response_url_hosts`` (https, 443), and the origin of
    ``wecom.api_base``, which the operator already trusts with access tokens (a loopback fake in tests)."""
    entries = list(cfg.response_url_hosts)
    try:
        OutboundPolicy.of([cfg.api_base])
        entries.append(cfg.api_base)
    except ValueError:
        log.warning("wecom.api_base is not an http(s) origin; AI-bot response_urls go to response_url_hosts only")
    return OutboundPolicy.of(entries)


class WecomSender:
    name = CHANNEL

    def __init__(self, services: Services) -> None:
        self.cfg = cfg = services.config.wecom
        keys = services.keys
        self.policy = CallPolicy(lambda: services.http, cfg.send_retries, cfg.retry_backoff_s)
        self.apps: dict[str, AppClient] = {}  # by app name, the tenant of its conversations
        for name, app in configured_apps(cfg).items():
            token = AccessToken(self.policy, services.kv, keys, cfg.api_base, app.corp_id, app.secret, app.agent_id)
            gate = WindowGate(services.kv, keys.rate, cfg.user_rate_per_min)
            self.apps[name] = AppClient(token, self.policy, gate, cfg.api_base, app.agent_id)
            if not (app.secret and app.agent_id):
                log.warning("%s: no secret / agent_id, so answers cannot be sent", where(name))
        self.aibot: AibotSender | None = None
        if cfg.aibot_token:
            self.aibot = AibotSender(services.kv, keys, self.policy, stream_ttl_s=cfg.aibot_stream_ttl_s,
                                     bus=services.bus, response_urls=response_url_policy(cfg))

    async def stream(self, chunk: ReplyChunk) -> None:
        if chunk.to.tenant == AIBOT_TENANT and self.aibot is not None:
            await self.aibot.stream(chunk)

    async def deliver(self, event: Event | None, replies: Sequence[Reply]) -> None:
        if event is not None and event.ref.tenant == AIBOT_TENANT and self.aibot is not None:
            await self.aibot.finish(event, replies)
            return
        for reply in replies:
            if reply.to.tenant == AIBOT_TENANT and self.aibot is not None:
                await self.aibot.send_proactive(reply)
                continue
            client = self.apps.get(reply.to.tenant)
            if client is None:
                raise WecomApiError(-1, f"no WeCom app {reply.to.tenant!r} to send to {reply.to.user_id}",
                                    "message/send")
            text = as_markdown(reply) if reply.markdown else as_text(reply)
            if text:
                await client.send_text(reply.to.user_id, text, markdown=reply.markdown)

    async def erase(self, ref: ConversationRef) -> int:
        """What the channel keeps about a conversation outside the state: the AI bot's response_url."""
        return await self.aibot.erase(ref) if self.aibot is not None else 0

    async def close(self) -> None:
        return None
