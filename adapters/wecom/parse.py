"""Pure parsing: WeCom callback payloads to :class:`bot.types.Event`.

Two kinds of input arrive, and they get different treatment:

* the *envelope* (the POST body) is unauthenticated, so nothing here parses it:
  :func:`envelope_encrypt` finds the one ``<Encrypt>`` element with a bounded,
  linear byte scan, and the signature over that value is checked before any
  XML parser runs;
* the *decrypted* message passed the signature, so it is WeCom's: it is parsed
  with expat directly (no DTD, no entity declarations, at most
  ``MAX_XML_DEPTH`` levels) and JSON goes through :mod:`bot.decode` with lone
  surrogates replaced rather than refused, so odd text never loses a message.

Every problem becomes :class:`MalformedMessage`, whose message names the field
and never its value. Nothing here does I/O, so it is tested on fixtures alone.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any
from xml.parsers import expat

from bot.decode import DecodeError, loads_object
from bot.types import Attachment, ConversationRef, Event, EventKind

CHANNEL = "wecom"
AIBOT_TENANT = "aibot"  # ConversationRef.tenant of AI-bot conversations; apps use their name ("" for the main one)

# App events that reach the hub; the rest (location reports, menu clicks, ...) are only logged.
ANSWERED_APP_EVENTS = frozenset({"enter_agent"})
ANSWERED_AIBOT_EVENTS = frozenset({"enter_chat"})

MAX_XML_DEPTH = 8  # WeCom nests at most four levels (SendPicsInfo/PicList/item/PicMd5Sum)
MAX_ID_CHARS = 512  # ids end up in Redis keys and dedup entries
MAX_STREAM_ID_CHARS = 128  # ours are 32 hex characters; a refresh of anything longer is not ours
MAX_FIELD_CHARS = 4096  # URLs, media ids, labels; message text is bounded by the body limit only

_MENTION = re.compile(r"^(?:@\S+\s+)+")
# <Encrypt> holding base64, bare or in CDATA; the classes exclude '<' and ']', so the scan is linear
_ENCRYPT = re.compile(rb"<Encrypt>\s*(?:<!\[CDATA\[([A-Za-z0-9+/=]+)\]\]>|([A-Za-z0-9+/=]+))\s*</Encrypt>")
_XML_START = re.compile(rb"\A\s*(?:<\?xml[^>]{0,200}\?>\s*)?<xml>")
_DECLARATIONS = (b"<!DOCTYPE", b"<!ENTITY")


class MalformedMessage(ValueError):
    """A payload that is not what WeCom sends."""


def envelope_encrypt(body: bytes) -> str:
    """The ``Encrypt`` field of an app callback envelope, found without parsing XML.

    The body is not authenticated yet, so it gets only linear work: an
    ``<xml>`` start, no DTD or entity declaration anywhere, exactly one
    ``<Encrypt>`` element holding base64. Whatever else the envelope holds
    (``ToUserName``, ``AgentID``) is repeated inside the signed message."""
    if not _XML_START.match(body):
        raise MalformedMessage("expected an <xml> envelope")
    if any(marker in body for marker in _DECLARATIONS):
        raise MalformedMessage("DTD and entity declarations are not accepted")
    if body.count(b"<Encrypt") != 1:
        raise MalformedMessage("expected exactly one <Encrypt> element")
    found = _ENCRYPT.search(body)
    if found is None:
        raise MalformedMessage("<Encrypt> must hold base64 text")
    return (found.group(1) or found.group(2)).decode("ascii")


def parse_xml(text: str | bytes) -> dict[str, Any]:
    """The children of the ``<xml>`` root of a decrypted (signed) message.

    expat without a DTD: a ``<!DOCTYPE`` or ``<!ENTITY`` is refused before and
    during the parse (so neither entity expansion nor external entities can
    happen), nesting is capped, attributes are ignored. Elements holding only
    text become strings, elements with children become dicts, repeated
    names become lists (the shape xmltodict gives)."""
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    if any(marker in data for marker in _DECLARATIONS):
        raise MalformedMessage("DTD and entity declarations are not accepted")
    builder = _TreeBuilder()
    parser = expat.ParserCreate("utf-8")
    parser.buffer_text = True
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = _refuse_declaration
    parser.EntityDeclHandler = _refuse_declaration
    parser.ExternalEntityRefHandler = _refuse_declaration
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise MalformedMessage(f"not well-formed XML ({expat.ErrorString(exc.code)})") from None
    root = builder.root
    if builder.root_name != "xml" or not isinstance(root, dict):
        raise MalformedMessage("expected an <xml> root with child elements")
    return root


def _refuse_declaration(*_args: object) -> int:
    raise MalformedMessage("DTD and entity declarations are not accepted")


class _TreeBuilder:
    """expat callbacks building nested dicts, iteratively and at most ``MAX_XML_DEPTH`` deep."""

    def __init__(self) -> None:
        self.stack: list[tuple[str, dict[str, Any], list[str]]] = []
        self.root: Any = None
        self.root_name = ""

    def start(self, name: str, _attrs: dict[str, str]) -> None:
        if len(self.stack) >= MAX_XML_DEPTH:
            raise MalformedMessage(f"XML nested deeper than {MAX_XML_DEPTH} levels")
        self.stack.append((name, {}, []))

    def data(self, text: str) -> None:
        if self.stack:
            self.stack[-1][2].append(text)

    def end(self, _name: str) -> None:
        name, children, texts = self.stack.pop()
        value: Any = children if children else "".join(texts)
        if not self.stack:
            self.root, self.root_name = value, name
            return
        siblings = self.stack[-1][1]
        if name not in siblings:
            siblings[name] = value
        elif isinstance(siblings[name], list):
            siblings[name].append(value)
        else:
            siblings[name] = [siblings[name], value]


def _text(node: Mapping[str, Any], name: str, *, required: bool = False) -> str:
    value = node.get(name)
    if value is None or value == "":
        if required:
            raise MalformedMessage(f"<{name}> is missing")
        return ""
    if not isinstance(value, str):
        raise MalformedMessage(f"<{name}> must be a single text element")
    if name == "Content":
        return value
    value = value.strip()
    limit = MAX_ID_CHARS if name in ("FromUserName", "MsgId", "CreateTime", "MsgType", "Event") else MAX_FIELD_CHARS
    if len(value) > limit:
        raise MalformedMessage(f"<{name}> is longer than {limit} characters")
    return value


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


def parse_json(text: str | bytes, *, signed: bool) -> dict[str, Any]:
    """A JSON object under the shared limits (:mod:`bot.decode`).

    ``signed``: the text passed the signature, so it is WeCom's and lone
    surrogates become U+FFFD; an unsigned envelope holding them is refused."""
    try:
        return dict(loads_object(text, surrogates="replace" if signed else "reject").data)
    except DecodeError as exc:
        raise MalformedMessage(exc.message) from None


def aibot_envelope_encrypt(body: bytes) -> str:
    """The ``encrypt`` field of an AI-bot callback body (unsigned: surrogates refused)."""
    encrypt = parse_json(body, signed=False).get("encrypt")
    if not isinstance(encrypt, str) or not encrypt:
        raise MalformedMessage("'encrypt' must be a non-empty string")
    return encrypt


def _str(node: Mapping[str, Any], *path: str, required: bool = False, limit: int | None = MAX_ID_CHARS) -> str:
    """A string field of a signed AI-bot message. Numbers are taken as their digits
    (a signed message is not refused for a type WeCom might change), booleans,
    floats and containers are not; ``limit`` caps the characters."""
    value: Any = node
    for part in path:
        value = value.get(part) if isinstance(value, Mapping) else None
    name = ".".join(path)
    if value is None or value == "":
        if required:
            raise MalformedMessage(f"'{name}' is missing")
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MalformedMessage(f"'{name}' must be a string")
    if isinstance(value, int) and not -(10**18) < value < 10**19:
        raise MalformedMessage(f"'{name}' is out of range")
    text = str(value)
    if limit is not None and len(text) > limit:
        raise MalformedMessage(f"'{name}' is longer than {limit} characters")
    return text


def aibot_stream_id(msg: Mapping[str, Any]) -> str | None:
    """The stream id of a refresh callback (``msgtype: stream``), else None."""
    if _str(msg, "msgtype").lower() != "stream":
        return None
    return _str(msg, "stream", "id", required=True, limit=MAX_STREAM_ID_CHARS)


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
            "response_url": _str(msg, "response_url", limit=MAX_FIELD_CHARS)}
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
    mixed = msg.get("mixed")
    items = mixed.get("msg_item") if msg_type == "mixed" and isinstance(mixed, Mapping) else None
    for item in items if isinstance(items, list) else [msg]:
        if not isinstance(item, Mapping):
            raise MalformedMessage("'mixed.msg_item' entries must be objects")
        kind = _str(item, "msgtype").lower()
        if kind == "text":
            texts.append(_str(item, "text", "content", limit=None))
        elif kind == "voice":
            texts.append(_str(item, "voice", "content", limit=None))  # WeCom sends the AI bot a transcript
        elif kind in ("image", "file"):
            attachments.append(Attachment(kind, url=_str(item, kind, "url", limit=MAX_FIELD_CHARS) or None))
    text = _MENTION.sub("", " ".join(t for t in texts if t)).strip() or None
    return Event(id=msg_id, kind=EventKind.MESSAGE, ref=ref, text=text, attachments=tuple(attachments),
                 received_at=now, channel_data=data)
