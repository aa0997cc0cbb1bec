"""DingTalk robot message JSON -> :class:`bot.types.Event`. Pure.

The HTTP callback body and the Stream-mode ``ChatbotMessage`` frame data are
the same JSON, so both modes share this. What only the DingTalk adapter needs
to answer (``sessionWebhook``, its expiry, the sender's staff id for the
@-mention) goes into ``Event.channel_data``.

The input passed the platform's check (the HTTP signature, the Stream
connection's ticket) and was decoded by :mod:`bot.decode` with surrogates
replaced, so this is lenient where a signed message must not be lost (an id
sent as a number is taken as its digits, a display label of the wrong type is
dropped) and strict only where an answer is impossible. Errors name the field,
never its value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from bot.types import Attachment, ConversationRef, Event, EventKind

CHANNEL = "dingtalk"
SINGLE, GROUP = "1", "2"
_MAX_ID = 512
_MAX_URL = 4096
_MAX_MS = 10**15  # milliseconds; year 33658
_DIGITS = re.compile(r"[0-9]{1,16}")  # ASCII only: "²".isdigit() is True and int("²") raises


class ParseError(ValueError):
    """The payload is not a DingTalk robot message we can answer."""


def _str(data: Mapping[str, Any], name: str, *, required: bool = False) -> str:
    value = data.get(name)
    if value is None or value == "":
        if required:
            raise ParseError(f"'{name}' is missing")
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ParseError(f"'{name}' must be a string")
    if isinstance(value, int) and not -(10**18) < value < 10**19:
        raise ParseError(f"'{name}' is out of range")
    text = str(value)
    if len(text) > _MAX_ID:
        raise ParseError(f"'{name}' is longer than {_MAX_ID} characters")
    return text


def _label(data: Mapping[str, Any], name: str, limit: int = 256) -> str:
    """Display-only fields (nick, title): never a reason to refuse a message."""
    value = data.get(name)
    return value[:limit] if isinstance(value, str) else ""


def _int_or_none(value: Any) -> int | None:
    """A millisecond time in range, or None when absent or unreadable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        value = int(value.strip())
    if isinstance(value, int) and 0 <= value <= _MAX_MS:
        return value
    return None


def _content(data: Mapping[str, Any]) -> Mapping[str, Any]:
    content = data.get("content")
    return content if isinstance(content, Mapping) else {}


def _download_code(item: Mapping[str, Any]) -> str | None:
    code = item.get("downloadCode") or item.get("pictureDownloadCode")
    return code if isinstance(code, str) and code else None


def _body(msgtype: str, data: Mapping[str, Any]) -> tuple[str | None, tuple[Attachment, ...]]:
    """Text and attachments of one message; (None, ()) for kinds we cannot read."""
    content = _content(data)
    if msgtype == "text":
        text = data.get("text")
        value = text.get("content") if isinstance(text, Mapping) else None
        return (value.strip() if isinstance(value, str) else None), ()
    if msgtype == "richText":
        parts: list[str] = []
        files: list[Attachment] = []
        items = content.get("richText")
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, Mapping):
                continue
            if isinstance(item.get("text"), str):
                parts.append(item["text"])
            elif (code := _download_code(item)) is not None:
                files.append(Attachment("image", media_id=code))
        return ("\n".join(p.strip() for p in parts if p.strip()) or None), tuple(files)
    if msgtype == "picture":
        code = _download_code(content)
        return None, (Attachment("image", media_id=code),) if code else ()
    if msgtype == "audio":
        code = _download_code(content)
        recognition = content.get("recognition")
        text = recognition.strip() if isinstance(recognition, str) and recognition.strip() else None
        return text, (Attachment("voice", media_id=code),) if code else ()
    if msgtype in ("video", "file"):
        code = _download_code(content)
        return None, (Attachment(msgtype, media_id=code),) if code else ()
    return None, ()


def parse_message(data: Mapping[str, Any]) -> Event:
    """Raise :class:`ParseError` when fields we need to answer are missing."""
    if not isinstance(data, Mapping):
        raise ParseError("a robot message must be a JSON object")
    msg_id = _str(data, "msgId", required=True)
    conversation_id = _str(data, "conversationId", required=True)
    staff_id = _str(data, "senderStaffId")
    sender_id = _str(data, "senderId")
    if not (staff_id or sender_id):
        raise ParseError("'senderId' is missing")
    conversation_type = _str(data, "conversationType") or SINGLE
    if conversation_type not in (SINGLE, GROUP):
        raise ParseError("'conversationType' must be 1 (single) or 2 (group)")
    msgtype = _str(data, "msgtype") or "unknown"
    chatbot_user_id = _str(data, "chatbotUserId")
    mentions = []
    at_users = data.get("atUsers")
    for user in at_users if isinstance(at_users, list) else []:
        if not isinstance(user, Mapping) or user.get("dingtalkId") == chatbot_user_id:
            continue
        who = user.get("staffId") or user.get("dingtalkId")
        if isinstance(who, str) and who:
            mentions.append(who)
    text, attachments = _body(msgtype, data)
    webhook = data.get("sessionWebhook")
    ref = ConversationRef(
        channel=CHANNEL,
        conversation_id=conversation_id,
        user_id=staff_id or sender_id,
        tenant=_str(data, "chatbotCorpId") or _str(data, "senderCorpId"),
        is_group=conversation_type == GROUP,
    )
    channel_data = {
        "msgtype": msgtype,
        "session_webhook": webhook if isinstance(webhook, str) and len(webhook) <= _MAX_URL else "",
        "session_webhook_expires_ms": _int_or_none(data.get("sessionWebhookExpiredTime")),
        "sender_id": sender_id,
        "sender_staff_id": staff_id,
        "sender_nick": _label(data, "senderNick"),
        "robot_code": _str(data, "robotCode"),
        "conversation_title": _label(data, "conversationTitle"),
        "mentions": tuple(mentions),
        "is_in_at_list": bool(data.get("isInAtList")),
    }
    return Event(
        id=msg_id,
        kind=EventKind.MESSAGE,
        ref=ref,
        text=text,
        attachments=attachments,
        channel_data=MappingProxyType(channel_data),
        sender_name=channel_data["sender_nick"] or None,
    )
