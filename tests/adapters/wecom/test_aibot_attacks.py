"""Hostile requests to the WeCom AI-bot callback (``/wecom/aibot/callback``).

The envelope ``{"encrypt": ...}`` is unsigned: the shared JSON limits apply and
lone surrogates are refused. The decrypted message passed the signature, so it
is WeCom's: surrogates become U+FFFD and the message is answered. Each attack is
followed by a genuine message that still gets its stream.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from typing import Any

import pytest

from tests.adapters.rawhttp import error_of, raw_request

from .conftest import Hub, HubFactory
from .fake_wecom import FakeWecom
from .test_wecom_aibot import refresh, text_msg
from .test_wecom_app import RESET_ANSWER

PATH = b"/wecom/aibot/callback"


async def still_serving(hub: Hub, msg_id: str) -> None:
    """A genuine message after the attack opens a stream that finishes with the answer."""
    status, first = await hub.post_aibot(text_msg(f"good-{msg_id}", "如何重置密码？", user=f"good-{msg_id}"))
    assert status == 200 and first is not None and first["msgtype"] == "stream"
    await hub.settle()
    status, done = await hub.post_aibot(refresh(first["stream"]["id"]))
    assert status == 200 and done is not None and done["stream"]["content"] == RESET_ANSWER


async def post_envelope(hub: Hub, body: bytes, params: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    params = params if params is not None else hub.aibot.seal("{}")[0]
    status, payload = await raw_request(hub.server, "POST", PATH + b"?" + urllib.parse.urlencode(params).encode(),
                                        body=body)
    return status, error_of(payload)


async def post_signed_text(hub: Hub, plaintext: str) -> tuple[int, dict[str, Any] | None]:
    """A correctly encrypted and signed callback whose decrypted text is ``plaintext`` (JSON or not)."""
    params, encrypt = hub.aibot.seal(plaintext)
    async with hub.http.post(hub.url("/wecom/aibot/callback"), params=params,
                             data=json.dumps({"encrypt": encrypt})) as resp:
        if resp.status != 200:
            return resp.status, await resp.json()
        raw = await resp.read()
        return 200, hub.aibot.open_reply(json.loads(raw)) if raw else None


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


# ------------------------------------------------------------------ the unsigned envelope
@pytest.mark.parametrize("body", [
    deep(5000).encode(),
    ('{"encrypt": ' + deep(5000) + "}").encode(),
    b'{"encrypt": "\\ud800QUJD"}',
    b'{"encrypt": 12345}',
    b'{"encrypt": ""}',
    b'{"encrypt": ["QUJD"]}',
    b'["QUJD"]',
    b"\xff\xfe{}",
    b'{"encrypt": "QUJD"',
    b"",
])
async def test_hostile_envelope_is_400(wecom_hub: HubFactory, body: bytes) -> None:
    hub = await wecom_hub()
    status, error = await post_envelope(hub, body)
    assert status == 400 and error["error"] == "malformed"
    await still_serving(hub, "a1")


async def test_envelope_over_the_limit_is_413(wecom_hub: HubFactory) -> None:
    hub = await wecom_hub()
    status, error = await post_envelope(hub, b'{"encrypt": "' + b"A" * (1024 * 1024) + b'"}')
    assert (status, error["error"]) == (413, "body_too_large")
    await still_serving(hub, "a2")


async def test_query_attacks_are_4xx(wecom_hub: HubFactory) -> None:
    hub = await wecom_hub()
    params, body = hub.aibot.aibot_post(text_msg("a3", "如何重置密码？"))
    query = urllib.parse.urlencode(params).encode()
    cases = [
        (query + b"&timestamp=1", (400, "duplicate_timestamp")),
        (query.replace(b"nonce=", b"nonce_=", 1), (400, "missing_nonce")),
        (query.replace(b"msg_signature=", b"msg_signature=" + b"f" * 200), (400, "invalid_msg_signature")),
    ]
    for target, expected in cases:
        status, payload = await raw_request(hub.server, "POST", PATH + b"?" + target, body=body.encode())
        assert (status, error_of(payload)["error"]) == expected, expected
    for name in (b"msg_signature=", b"timestamp=", b"nonce="):  # not UTF-8: refused, or U+FFFD failing the signature
        status, payload = await raw_request(hub.server, "POST", PATH + b"?" + query.replace(name, name + b"%FF"),
                                            body=body.encode())
        assert (status, error_of(payload)["error"]) in ((400, f"invalid_{name[:-1].decode()}"), (403, "bad_signature"))
    await still_serving(hub, "a3")


# ------------------------------------------------------------------ signed, decrypted JSON
@pytest.mark.parametrize("plaintext", [
    deep(5000),
    '{"msgid": "m", "from": {"userid": "u"}, "msgtype": "text", "text": ' + deep(40) + "}",
    "<xml>not json</xml>",
    '"just a string"',
    '{"msgid": "m", "from": "u", "msgtype": "text"}',
    '{"msgid": true, "from": {"userid": "u"}, "msgtype": "text"}',
    '{"msgid": 1e400, "from": {"userid": "u"}, "msgtype": "text"}',
    '{"msgid": ' + "9" * 40 + ', "from": {"userid": "u"}, "msgtype": "text"}',
    '{"msgid": "' + "m" * 600 + '", "from": {"userid": "u"}, "msgtype": "text"}',
    '{"msgid": "m", "from": {"userid": {"id": "u"}}, "msgtype": "text"}',
    '{"msgid": "m", "from": {"userid": "u"}, "msgtype": "event", "event": "enter_chat"}',
    '{"msgid": "m", "from": {"userid": "u"}, "msgtype": "mixed", "mixed": {"msg_item": ["text"]}}',
    '{"msgtype": "stream", "stream": {"id": {"a": 1}}}',
    '{"msgtype": "stream", "stream": {"id": "' + "s" * 200 + '"}}',
    '{"msgtype": "stream", "stream": "abc"}',
])
async def test_signed_message_that_cannot_be_answered_is_400(wecom_hub: HubFactory, plaintext: str) -> None:
    hub = await wecom_hub()
    status, error = await post_signed_text(hub, plaintext)
    assert status == 400 and error is not None and error["error"] == "malformed"
    await still_serving(hub, "b1")


async def test_signed_lone_surrogates_are_replaced_and_the_message_answered(wecom_hub: HubFactory) -> None:
    hub = await wecom_hub()
    msg = text_msg("b2\ud800", "如何重置密码？\udc00", user="wang\ud83d")
    status, first = await post_signed_text(hub, json.dumps(msg))  # ensure_ascii: "\ud800" escapes, valid UTF-8
    assert status == 200 and first is not None and first["msgtype"] == "stream"
    await hub.settle()
    state = await hub.services.store.load("wecom:aibot:wang\ufffd")
    assert [t.text for t in state.history][:1] == ["如何重置密码？\ufffd"]
    await still_serving(hub, "b2")


async def test_signed_numbers_where_strings_belong_are_taken_as_digits(wecom_hub: HubFactory) -> None:
    hub = await wecom_hub()
    msg = {**text_msg("x", "如何重置密码？"), "msgid": 987654321, "from": {"userid": 10086}, "chattype": 2}
    status, first = await post_signed_text(hub, json.dumps(msg))
    assert status == 200 and first is not None and first["msgtype"] == "stream"
    await hub.settle()
    assert (await hub.services.store.load("wecom:aibot:10086")).history
    await still_serving(hub, "b3")


async def test_signed_strings_where_objects_belong_are_a_message_without_text(wecom_hub: HubFactory) -> None:
    hub = await wecom_hub()
    msg = {**text_msg("b4", "x"), "text": "如何重置密码？", "mixed": "x"}
    status, first = await post_signed_text(hub, json.dumps(msg))
    assert status == 200 and first is not None and first["msgtype"] == "stream"  # answered: "please type words"
    await hub.settle()
    await still_serving(hub, "b4")


async def test_signed_unknown_message_type_is_answered(wecom_hub: HubFactory) -> None:
    hub = await wecom_hub()
    msg = {**text_msg("b5", "x"), "msgtype": "hologram", "hologram": {"data": "x" * 1000}}
    status, first = await post_signed_text(hub, json.dumps(msg))
    assert status == 200 and first is not None and first["msgtype"] == "stream"
    await hub.settle()
    await still_serving(hub, "b5")


async def test_signed_unknown_event_and_unknown_stream_are_answered(wecom_hub: HubFactory) -> None:
    hub = await wecom_hub()
    event = {"msgid": "b6", "from": {"userid": "u"}, "msgtype": "event", "event": {"eventtype": "x" * 300}}
    assert await post_signed_text(hub, json.dumps(event)) == (200, None)
    status, closed = await post_signed_text(hub, json.dumps(refresh("not-a-stream-of-ours")))
    assert status == 200 and closed is not None and closed["stream"]["finish"] is True
    await still_serving(hub, "b6")


async def test_refusals_never_log_the_payload(wecom_hub: HubFactory, caplog: pytest.LogCaptureFixture,
                                              fake_wecom: FakeWecom) -> None:
    del fake_wecom
    hub = await wecom_hub()
    marker = "机密13800138000"
    caplog.set_level(logging.DEBUG)
    await post_envelope(hub, json.dumps({"encrypt": marker}).encode())
    await post_envelope(hub, ('{"encrypt": "' + marker + '", "x": ' + deep(100) + "}").encode())
    await post_signed_text(hub, json.dumps({"msgid": marker, "from": marker, "msgtype": marker}))
    await post_signed_text(hub, json.dumps({"msgtype": "stream", "stream": {"id": marker * 20}}))
    await post_signed_text(hub, marker)
    await hub.settle()
    assert marker not in caplog.text
    await still_serving(hub, "c1")
