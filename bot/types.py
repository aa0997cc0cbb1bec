"""Core value types shared by adapters, the hub and engines.

Adapters turn platform payloads into these and nothing past an adapter reads
a platform payload; ``channel_data`` is the one escape hatch, and only the
adapter that wrote it reads it back (for example to reply through a
DingTalk ``sessionWebhook``).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


class EventKind(enum.StrEnum):
    MESSAGE = "message"
    EVENT = "event"  # platform events: enter_agent, subscribe, click ...
    FEEDBACK = "feedback"  # thumbs up / down on an earlier answer


@dataclass(frozen=True, slots=True)
class ConversationRef:
    """Enough to reply later, also proactively."""

    channel: str
    conversation_id: str
    user_id: str
    tenant: str = ""
    is_group: bool = False

    @property
    def key(self) -> str:
        """Stable identity of the conversation across processes."""
        return f"{self.channel}:{self.tenant}:{self.conversation_id}"


@dataclass(frozen=True, slots=True)
class Attachment:
    kind: str  # image | voice | file | video
    url: str | None = None
    media_id: str | None = None
    mime_type: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    id: str  # platform message id; events without one: f"{user}:{create_time}:{name}"
    kind: EventKind
    ref: ConversationRef
    text: str | None = None  # voice arrives as its recognition text when there is one
    attachments: tuple[Attachment, ...] = ()
    received_at: float = field(default_factory=time.time)
    name: str | None = None  # event name for EventKind.EVENT (enter_agent, ...)
    context: str | None = None  # caller-supplied context, e.g. the page being viewed
    lang: str | None = None  # language hint from the channel (browser, client)
    channel_data: Mapping[str, Any] = field(default_factory=_empty)  # platform specifics; core never reads it
    origin: str = ""  # the gateway process that accepted it, for answers that must go back to that process
    sender_name: str | None = None  # the customer's display name where the platform gives one (DingTalk nick)

    @property
    def dedup_key(self) -> str:
        return f"{self.ref.channel}:{self.ref.tenant}:{self.id}"


@dataclass(frozen=True, slots=True)
class Reply:
    to: ConversationRef
    text: str
    markdown: bool = False
    quick_replies: tuple[str, ...] = ()
    in_reply_to: str | None = None
    source: str = "bot"  # faq | llm | dialogue | agent | fallback | system
    meta: Mapping[str, Any] = field(default_factory=_empty)


@dataclass(frozen=True, slots=True)
class ReplyChunk:
    """A piece of an answer still being generated, for channels that stream."""

    to: ConversationRef
    in_reply_to: str
    text_so_far: str
    delta: str
