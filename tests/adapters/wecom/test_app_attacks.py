"""Hostile requests to the WeCom app callback (``/wecom/callback``, ``/wecom/{app}/callback``).

Each attack gets a defined 4xx JSON answer (or WeCom's empty 200 where a signed
message is answerable), nothing is sent for it, and a genuine signed message
right after it is still answered. Real crypto (wechatpy's PrpCrypto and the
documented SHA1 signature), the real hub and Redis; only WeCom's API is faked.
"""

from __future__ import annotations

import base64
import logging
import os
import urllib.parse

import pytest

from bot import messages
from tests.adapters.rawhttp import error_of, raw_request

from .conftest import CORP_ID, Hub, HubFactory
from .fake_wecom import FakeWecom, Sender, text_xml, xml_message
from .test_wecom_app import RESET_ANSWER

BILLION_LAUGHS = ('<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
                  '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">'
                  '<!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>')
EXTERNAL = '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'


async def still_serving(hub: Hub, fake: FakeWecom, msg_id: str) -> None:
    """A genuine signed message after the attack is accepted and answered."""
    before = len(fake.sends)
    assert (await hub.post_app(text_xml("goodUser", "如何重置密码？", msg_id))).status == 200
    await hub.settle()
    assert fake.texts()[before:] == [RESET_ANSWER]


async def post_raw(hub: Hub, query: bytes, body: bytes, path: bytes = b"/wecom/callback") -> tuple[int, dict]:
    status, payload = await raw_request(hub.server, "POST", path + b"?" + query, body=body)
    return status, error_of(payload)


def envelope(encrypt: str) -> bytes:
    return f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>".encode()


def signed_query(hub: Hub, xml: str, **extra: str) -> tuple[dict[str, str], bytes]:
    params, encrypt = hub.sender.seal(xml, **extra)
    return params, envelope(encrypt)


# ------------------------------------------------------------------ query parameters
async def test_msg_signature_given_twice_is_400(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    params, body = signed_query(hub, text_xml("u", "如何重置密码？", "a1"))
    query = urllib.parse.urlencode(params) + "&msg_signature=" + "0" * 40
    status, error = await post_raw(hub, query.encode(), body)
    assert (status, error["error"]) == (400, "duplicate_msg_signature")
    await still_serving(hub, fake_wecom, "a1-good")


async def test_missing_nonce_is_400(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    params, body = signed_query(hub, text_xml("u", "如何重置密码？", "a2"))
    del params["nonce"]
    status, error = await post_raw(hub, urllib.parse.urlencode(params).encode(), body)
    assert (status, error["error"]) == (400, "missing_nonce")
    await still_serving(hub, fake_wecom, "a2-good")


@pytest.mark.parametrize("raw", [b"%FF%FE", b"%ED%A0%80", b"\xff\xfe"])
async def test_query_values_that_are_not_utf8_are_refused(wecom_hub: HubFactory, fake_wecom: FakeWecom,
                                                          raw: bytes) -> None:
    hub = await wecom_hub()
    params, body = signed_query(hub, text_xml("u", "如何重置密码？", "a3"))
    for name in ("msg_signature", "timestamp", "nonce"):
        query = urllib.parse.urlencode({k: v for k, v in params.items() if k != name}).encode()
        status, payload = await raw_request(hub.server, "POST", b"/wecom/callback?" + query + b"&" +
                                            name.encode() + b"=" + raw, body=body)
        assert status in (400, 403), (name, status)  # aiohttp turns bad UTF-8 into U+FFFD: the signature fails
        if status != 400 or payload.startswith(b"{"):
            error_of(payload)
    await hub.settle()
    assert fake_wecom.sends == []
    await still_serving(hub, fake_wecom, "a3-good")


async def test_query_value_of_5000_characters_is_400(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    params, body = signed_query(hub, text_xml("u", "如何重置密码？", "a4"))
    params["nonce"] = "n" * 5000  # (over aiohttp's 8190-byte request line, aiohttp itself answers 400)
    status, error = await post_raw(hub, urllib.parse.urlencode(params).encode(), body)
    assert (status, error["error"]) == (400, "invalid_nonce")
    await still_serving(hub, fake_wecom, "a4-good")


@pytest.mark.parametrize("timestamp", ["²", "١٧٠٠٠٠٠٠٠٠", "-1700000000", "9" * 19, "1e9", " "])
async def test_signed_timestamp_that_is_not_a_sane_integer_is_400(wecom_hub: HubFactory, fake_wecom: FakeWecom,
                                                                  timestamp: str) -> None:
    hub = await wecom_hub({"wecom.replay_window_s": 300})
    # correctly signed over the odd timestamp: only the replay check can refuse it
    resp = await hub.post_app(text_xml("u", "如何重置密码？", "a5"), timestamp=timestamp)
    assert resp.status in (400, 403)
    await hub.settle()
    assert fake_wecom.sends == []
    await still_serving(hub, fake_wecom, "a5-good")


# ------------------------------------------------------------------ the unsigned envelope
async def test_envelope_nested_100k_levels_is_refused_without_parsing(wecom_hub: HubFactory,
                                                                     fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    params, _ = signed_query(hub, text_xml("u", "x", "b1"))
    body = b"<xml>" + b"<a>" * 100_000 + b"</a>" * 100_000 + b"<Encrypt>QUJD</Encrypt></xml>"
    status, error = await post_raw(hub, urllib.parse.urlencode(params).encode(), body)
    assert (status, error["error"]) == (403, "bad_signature")  # the scan found <Encrypt>; the signature failed
    await still_serving(hub, fake_wecom, "b1-good")


@pytest.mark.parametrize("body", [
    BILLION_LAUGHS + "<xml><Encrypt>&d;</Encrypt></xml>",
    BILLION_LAUGHS + "<xml><Encrypt>QUJD</Encrypt></xml>",
    EXTERNAL + "<xml><Encrypt>&e;</Encrypt></xml>",
    "<xml><Encrypt>QUJD</Encrypt><Encrypt>REVG</Encrypt></xml>",
    "<xml><Encrypt>not base64 ✓</Encrypt></xml>",
    "<xml><Encrypt><![CDATA[QUJD]]></xml>",
    "<xml><Encrypt>QUJD",
    "<other><Encrypt>QUJD</Encrypt></other>",
    '{"Encrypt": "QUJD"}',
    "",
])
async def test_malformed_or_hostile_envelope_is_400(wecom_hub: HubFactory, fake_wecom: FakeWecom, body: str) -> None:
    hub = await wecom_hub()
    params, _ = signed_query(hub, text_xml("u", "x", "b2"))
    status, error = await post_raw(hub, urllib.parse.urlencode(params).encode(), body.encode())
    assert (status, error["error"]) == (400, "malformed")
    await still_serving(hub, fake_wecom, "b2-good")


async def test_envelope_body_not_utf8_is_400(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    params, _ = signed_query(hub, text_xml("u", "x", "b3"))
    status, error = await post_raw(hub, urllib.parse.urlencode(params).encode(), b"<xml>\xff\xfe<Encrypt>\xed\xa0")
    assert (status, error["error"]) == (400, "malformed")
    await still_serving(hub, fake_wecom, "b3-good")


async def test_body_over_the_limit_is_413(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    params, _ = signed_query(hub, text_xml("u", "x", "b4"))
    big = b"<xml><Encrypt>" + base64.b64encode(os.urandom(800 * 1024)) + b"</Encrypt></xml>"
    status, error = await post_raw(hub, urllib.parse.urlencode(params).encode(), big)
    assert (status, error["error"]) == (413, "body_too_large")
    await still_serving(hub, fake_wecom, "b4-good")


async def test_unknown_app_is_404(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    params, body = signed_query(hub, text_xml("u", "x", "b5"))
    status, error = await post_raw(hub, urllib.parse.urlencode(params).encode(), body, path=b"/wecom/%ED%A0/callback")
    assert status == 404 and error["error"] in ("unknown_app", "not_found")
    await still_serving(hub, fake_wecom, "b5-good")


# ------------------------------------------------------------------ signed, decrypted XML
@pytest.mark.parametrize("inner", [
    BILLION_LAUGHS + "<xml><FromUserName>u</FromUserName><MsgType>text</MsgType><Content>&d;</Content></xml>",
    EXTERNAL + "<xml><FromUserName>&e;</FromUserName><MsgType>text</MsgType></xml>",
    "<xml>" + "<a>" * 5000 + "</a>" * 5000 + "</xml>",
    "<xml><FromUserName>u</FromUserName><MsgType>text</MsgType><Content>&#xD800;</Content></xml>",
    "<xml><FromUserName><id>u</id></FromUserName><MsgType>text</MsgType></xml>",
    "<xml><FromUserName>u</FromUserName><FromUserName>v</FromUserName><MsgType>text</MsgType></xml>",
    "<xml><FromUserName>" + "u" * 600 + "</FromUserName><MsgType>text</MsgType></xml>",
    "<xml><MsgType>text</MsgType><Content>no sender</Content></xml>",
    "<xml>just text</xml>",
    "<xml><FromUserName>u</FromUserName><MsgType>text",
    '{"FromUserName": "u"}',
])
async def test_signed_message_that_is_not_wecom_xml_is_400(wecom_hub: HubFactory, fake_wecom: FakeWecom,
                                                           inner: str) -> None:
    hub = await wecom_hub()
    resp = await hub.post_app(inner)
    assert resp.status == 400
    await hub.settle()
    assert fake_wecom.sends == []
    await still_serving(hub, fake_wecom, "c1-good")


async def test_signed_message_with_odd_but_valid_text_is_answered(wecom_hub: HubFactory,
                                                                  fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    odd = "如何重置密码？\u0000".replace("\u0000", "") + "\ufffd\u202e\U0001f600"
    assert (await hub.post_app(text_xml("u", odd, "c2"))).status == 200
    await hub.settle()
    assert len(fake_wecom.sends) == 1
    await still_serving(hub, fake_wecom, "c2-good")


async def test_signed_unknown_message_type_gets_the_polite_reply(wecom_hub: HubFactory,
                                                                 fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    assert (await hub.post_app(xml_message("u", "hologram", {"MsgId": "c3", "Data": "x" * 1000}))).status == 200
    await hub.settle()
    assert fake_wecom.texts() == [messages.text("unsupported", "zh")]
    await still_serving(hub, fake_wecom, "c3-good")


async def test_signed_for_another_corp_is_403(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    other = Sender(hub.sender.token, hub.config.wecom.aes_key, "ww_other")
    assert (await hub.post_app(text_xml("u", "如何重置密码？", "c4"), sender=other)).status == 403
    await still_serving(hub, fake_wecom, "c4-good")


# ------------------------------------------------------------------ URL verification (GET)
async def test_url_verification_attacks_are_4xx(wecom_hub: HubFactory, fake_wecom: FakeWecom) -> None:
    hub = await wecom_hub()
    params, echostr = hub.sender.seal("8827364510")
    good = urllib.parse.urlencode({**params, "echostr": echostr}).encode()
    cases = {
        good + b"&echostr=" + urllib.parse.quote(echostr).encode(): (400, "duplicate_echostr"),
        urllib.parse.urlencode(params).encode(): (400, "missing_echostr"),
        urllib.parse.urlencode({**params, "echostr": "%%%"}).encode(): (403, "bad_signature"),
        urllib.parse.urlencode({**params, "echostr": "x" * 5000}).encode(): (400, "invalid_echostr"),
    }
    for query, expected in cases.items():
        status, payload = await raw_request(hub.server, "GET", b"/wecom/callback?" + query)
        assert (status, error_of(payload)["error"]) == expected, query[:60]
    # bytes that are not UTF-8 reach the handler as surrogates (400) or as U+FFFD (the signature fails: 403)
    for name in (b"msg_signature=", b"timestamp=", b"nonce=", b"echostr="):
        status, payload = await raw_request(hub.server, "GET", b"/wecom/callback?" + good.replace(name, name + b"%FF"))
        code = error_of(payload)["error"]
        assert (status, code) in ((400, f"invalid_{name[:-1].decode()}"), (403, "bad_signature")), name
    status, payload = await raw_request(hub.server, "GET", b"/wecom/callback?" + good)
    assert (status, payload) == (200, b"8827364510")
    await still_serving(hub, fake_wecom, "d1-good")


async def test_refusals_never_log_the_payload(wecom_hub: HubFactory, fake_wecom: FakeWecom,
                                              caplog: pytest.LogCaptureFixture) -> None:
    hub = await wecom_hub()
    marker = "机密13800138000"
    caplog.set_level(logging.DEBUG)
    params, _ = signed_query(hub, text_xml("u", "x", "e1"))
    await post_raw(hub, urllib.parse.urlencode(params).encode(), f"<xml><Encrypt>{marker}</Encrypt></xml>".encode())
    await hub.post_app(f"<xml><FromUserName>{marker}<b/></FromUserName><MsgType>{marker}</MsgType></xml>")
    await hub.post_app(f"<xml><FromUserName>u</FromUserName><MsgType>event</MsgType><Event>{marker}</Event></xml>")
    await hub.settle()
    assert marker not in caplog.text
    await still_serving(hub, fake_wecom, "e1-good")
