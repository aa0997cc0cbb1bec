"""Events and replies as bytes, for the queue between gateways and workers and
for the reply ledger. One format in one place, so a gateway and a worker of
the same release always agree, and an unreadable message is a
:class:`CodecError` (parked in the dead-letter queue) instead of a crash."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import orjson

from bot.types import Attachment, ConversationRef, Event, EventKind, Reply

FORMAT = 1  # bump when a field changes meaning; decoders refuse what they do not know


class CodecError(ValueError):
    """Bytes that are not an event or replies of this format."""


def _ref(ref: ConversationRef) -> list[Any]:
    return [ref.channel, ref.conversation_id, ref.user_id, ref.tenant, ref.is_group]


def _unref(raw: Any) -> ConversationRef:
    channel, conversation_id, user_id, tenant, is_group = raw
    for value in (channel, conversation_id, user_id, tenant):
        if not isinstance(value, str):
            raise CodecError("conversation reference fields must be strings")
    return ConversationRef(channel, conversation_id, user_id, tenant, bool(is_group))


def _frozen(value: Any) -> Any:
    """JSON lists come back as tuples and objects as read-only mappings, like the adapters built them."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def encode_event(event: Event) -> bytes:
    body = {
        "f": FORMAT,
        "id": event.id,
        "kind": event.kind.value,
        "ref": _ref(event.ref),
        "text": event.text,
        "att": [[a.kind, a.url, a.media_id, a.mime_type] for a in event.attachments],
        "at": event.received_at,
        "name": event.name,
        "ctx": event.context,
        "lang": event.lang,
        "cd": _plain(event.channel_data),
        "origin": event.origin,
        "sn": event.sender_name,
    }
    return _dumps(body).encode()


def _dumps(body: Any) -> str:
    try:
        return orjson.dumps(body).decode()
    except (orjson.JSONEncodeError, TypeError):  # a lone surrogate: stdlib escapes it (\ud800) and we stay readable
        return json.dumps(body, separators=(",", ":"))


def _loads(raw: bytes | str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:  # orjson refuses escaped lone surrogates that _dumps may have written
        return json.loads(raw)


def decode_event(raw: bytes | str) -> Event:
    try:
        d = _loads(raw)
        if not isinstance(d, dict) or d.get("f") != FORMAT:
            raise CodecError(f"not an event of format {FORMAT}")
        return Event(
            id=_str(d["id"]),
            kind=EventKind(d["kind"]),
            ref=_unref(d["ref"]),
            text=_opt_str(d.get("text")),
            attachments=tuple(Attachment(*a) for a in d.get("att") or ()),
            received_at=float(d["at"]),
            name=_opt_str(d.get("name")),
            context=_opt_str(d.get("ctx")),
            lang=_opt_str(d.get("lang")),
            channel_data=_frozen(d.get("cd") or {}),
            origin=_str(d.get("origin") or ""),
            sender_name=_opt_str(d.get("sn")),
        )
    except CodecError:
        raise
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise CodecError(f"unreadable event: {type(exc).__name__}") from None


def encode_replies(replies: Sequence[Reply]) -> str:
    return _dumps(
        [
            [_ref(r.to), r.text, r.markdown, list(r.quick_replies), r.in_reply_to, r.source, _plain(r.meta)]
            for r in replies
        ]
    )


def decode_replies(raw: bytes | str) -> tuple[Reply, ...]:
    try:
        rows = _loads(raw)
        return tuple(
            Reply(_unref(to), _str(text), bool(md), tuple(qr), in_reply_to, _str(source), _frozen(meta or {}))
            for to, text, md, qr, in_reply_to, source, meta in rows
        )
    except CodecError:
        raise
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise CodecError(f"unreadable replies: {type(exc).__name__}") from None


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise CodecError("expected a string")
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)
