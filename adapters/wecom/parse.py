"""Pure parsing: WeCom callback payloads to :class:`bot.types.Event`.

XML goes through xmltodict with entities disabled (entity bombs and XXE raise
``ValueError``); every problem becomes :class:`MalformedMessage`. Nothing here
does I/O, so it is tested on fixtures alone.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from typing import Any
from xml.parsers.expat import ExpatError

import xmltodict

from bot.types import Attachment, ConversationRef, Event, EventKind

CHANNEL = "wecom"
AIBOT_TENANT = "aibot"  # ConversationRef.tenant of AI-bot conversations; apps use their name ("" for the main one)

# App events that reach the hub; the rest (location reports, menu clicks, ...) are only logged.
ANSWERED_APP_EVENTS = frozenset({"enter_agent"})
ANSWERED_AIBOT_EVENTS = frozenset({"enter_chat"})

_MENTION = re.compile(r"^(?:@\S+\s+)+")


class MalformedMessage(ValueError):
    """A payload that is not what WeCom sends."""


def parse_xml(text: str | bytes) -> dict[str, Any]:
    """The children of the ``<xml>`` root, refusing DTDs, entities and garbage."""
    try:
        doc = xmltodict.parse(text, disable_entities=True)
    except (ExpatError, ValueError) as exc:
        raise MalformedMessage(f"not acceptable XML: {exc}") from None
    root = doc.get("xml") if isinstance(doc, dict) else None
    if not isinstance(root, dict):
        raise MalformedMessage("expected an <xml> root with child elements")
    return root


def envelope_encrypt(body: bytes) -> str:
    """The ``Encrypt`` field of an app callback envelope."""
    return _text(parse_xml(body), "Encrypt", required=True)


def _text(node: Mapping[str, Any], name: str, *, required: bool = False) -> str:
    value = node.get(name)
    if value is None:
        if required:
            raise MalformedMessage(f"<{name}> is missing")
        return ""
    if not isinstance(value, str):
        raise MalformedMessage(f"<{name}> must be a single text element")
    return value.strip() if name != "Content" else value


def app_event(xml: str, tenant: str, *, received_at: float | None = None) -> Event | None:
    """An app callback as an Event; None for events that are only logged.

    Unknown message types still become a message (without text) so the user
    gets a polite "not supported" answer instead of silence.
    """
    msg = parse_xml(xml)
    user = _text(msg, "FromUserName", required=True)
    msg_type = _text(msg, "MsgType", required=True).lower()
    created = _text(msg, "CreateTime")
    ref = ConversationRef(channel=CHANNEL, conversation_id=user, user_id=user, tenant=tenant)
    data = {"api": "app", "msg_type": msg_type, "agent_id": _text(msg, "AgentID"), "create_time": created}
    now = time.time() if received_at is None else received_at
    if msg_type == "event":
        name = _text(msg, "Event", required=True).lower()
        if name not in ANSWERED_APP_EVENTS:
            return None
        return Event(id=f"{user}:{created}:{name}", kind=EventKind.EVENT, ref=ref, name=name, received_at=now,
                     channel_data=data)
    msg_id = _text(msg, "MsgId") or f"{user}:{created}:{msg_type}"
    text: str | None = None
    attachments: tuple[Attachment, ...] = ()
    if msg_type == "text":
        text = _text(msg, "Content")
    elif msg_type == "image":
        attachments = (Attachment("image", url=_text(msg, "PicUrl") or None, media_id=_text(msg, "MediaId") or None),)
    elif msg_type == "voice":
        text = _text(msg, "Recognition") or None  # only when speech recognition is on
        fmt = _text(msg, "Format").lower()
        attachments = (Attachment("voice", media_id=_text(msg, "MediaId") or None,
                                  mime_type=f"audio/{fmt}" if fmt else None),)
    elif msg_type in ("video", "file"):
        attachments = (Attachment(msg_type, media_id=_text(msg, "MediaId") or None),)
    return Event(id=msg_id, kind=EventKind.MESSAGE, ref=ref, text=text, attachments=attachments, received_at=now,
                 channel_data=data)


def parse_json(text: str | bytes) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedMessage(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedMessage("expected a JSON object")
    return data


def _str(node: Mapping[str, Any], *path: str, required: bool = False) -> str:
    value: Any = node
    for part in path:
        value = value.get(part) if isinstance(value, Mapping) else None
    if value is None or value == "":
        if required:
            raise MalformedMessage(f"'{'.'.join(path)}' is missing")
        return ""
    if not isinstance(value, str | int):
        raise MalformedMessage(f"'{'.'.join(path)}' must be a string")
    return str(value)


def aibot_stream_id(msg: Mapping[str, Any]) -> str | None:
    """The stream id of a refresh callback (``msgtype: stream``), else None."""
    if _str(msg, "msgtype").lower() != "stream":
        return None
    return _str(msg, "stream", "id", required=True)


def aibot_event(msg: Mapping[str, Any], *, received_at: float | None = None) -> Event | None:
    """A decrypted AI-bot callback (not a stream refresh) as an Event; None for
    events that are only logged."""
    user = _str(msg, "from", "userid", required=True)
    msg_type = _str(msg, "msgtype", required=True).lower()
    group = _str(msg, "chattype").lower() == "group"
    chat = _str(msg, "chatid") if group else ""
    ref = ConversationRef(channel=CHANNEL, conversation_id=chat or user, user_id=user, tenant=AIBOT_TENANT,
                          is_group=bool(chat))
    data = {"api": "aibot", "msg_type": msg_type, "aibot_id": _str(msg, "aibotid"),
            "response_url": _str(msg, "response_url")}
    now = time.time() if received_at is None else received_at
    msg_id = _str(msg, "msgid", required=True)
    if msg_type == "event":
        name = _str(msg, "event", "eventtype", required=True).lower()
        if name not in ANSWERED_AIBOT_EVENTS:
            return None
        # the AI bot's enter_chat means what the app's enter_agent means: one name for the dialogue layer
        return Event(id=msg_id, kind=EventKind.EVENT, ref=ref, name="enter_agent", received_at=now,
                     channel_data={**data, "event": name})
    texts: list[str] = []
    attachments: list[Attachment] = []
    items = msg.get("mixed", {}).get("msg_item") if msg_type == "mixed" and isinstance(msg.get("mixed"), dict) else None
    for item in items if isinstance(items, list) else [msg]:
        if not isinstance(item, Mapping):
            raise MalformedMessage("'mixed.msg_item' entries must be objects")
        kind = _str(item, "msgtype").lower()
        if kind == "text":
            texts.append(_str(item, "text", "content"))
        elif kind == "voice":
            texts.append(_str(item, "voice", "content"))  # WeCom sends the AI bot a transcript
        elif kind in ("image", "file"):
            attachments.append(Attachment(kind, url=_str(item, kind, "url") or None))
    text = _MENTION.sub("", " ".join(t for t in texts if t)).strip() or None
    return Event(id=msg_id, kind=EventKind.MESSAGE, ref=ref, text=text, attachments=tuple(attachments),
                 received_at=now, channel_data=data)
