"""The public WeCom crypto vectors, through our wrapper of wechatpy."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from adapters.wecom.crypto import BadSignature, MalformedPayload, StaleTimestamp, WecomCrypto, WrongReceiver
from adapters.wecom.parse import app_event, envelope_encrypt

from .fake_wecom import Sender, new_aes_key, sign

# Tencent's WXBizMsgCrypt sample values and wechatpy's own test values (public).
VECTORS = json.loads((Path(__file__).parent / "wecom_crypto_vectors.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("source", ["tencent_official", "wechatpy_tests"])
def test_verify_url_vector(source: str) -> None:
    v = VECTORS[source]
    crypto = WecomCrypto(v["token"], v["encoding_aes_key"], v["corp_id"])
    u = v["verify_url"]
    assert crypto.verify_url(u["msg_signature"], u["timestamp"], u["nonce"], u["echostr"]) == u["expected_reply"]


def test_verify_url_wrong_nonce_is_refused() -> None:
    v = VECTORS["wechatpy_tests"]
    crypto = WecomCrypto(v["token"], v["encoding_aes_key"], v["corp_id"])
    u = v["verify_url"]
    with pytest.raises(BadSignature):
        crypto.verify_url(u["msg_signature"], u["timestamp"], "437374424", u["echostr"])


def test_tencent_message_vector_decrypts_and_parses() -> None:
    v = VECTORS["tencent_official"]
    m = v["message"]
    crypto = WecomCrypto(v["token"], v["encoding_aes_key"], v["corp_id"])
    xml = crypto.decrypt(m["msg_signature"], m["timestamp"], m["nonce"], envelope_encrypt(m["body"].encode()))
    event = app_event(xml, "")
    expected = m["expected"]
    assert event is not None
    assert (event.id, event.text) == (expected["MsgId"], expected["Content"])
    assert event.ref.user_id == expected["FromUserName"]
    assert event.channel_data["agent_id"] == expected["AgentID"]
    assert event.channel_data["create_time"] == expected["CreateTime"]


def test_wechatpy_message_vector() -> None:
    v = VECTORS["wechatpy_tests"]
    m = v["message"]
    crypto = WecomCrypto(v["token"], v["encoding_aes_key"], v["corp_id"])
    event = app_event(crypto.decrypt(m["msg_signature"], m["timestamp"], m["nonce"], m["encrypt"]), "")
    assert event is not None
    assert (event.id, event.text, event.ref.user_id) == ("4363689963896700987", "test", "messense")


def test_vector_with_another_corp_id_is_wrong_receiver() -> None:
    v = VECTORS["wechatpy_tests"]
    m = v["message"]
    crypto = WecomCrypto(v["token"], v["encoding_aes_key"], "wx_someone_else")
    with pytest.raises(WrongReceiver):
        crypto.decrypt(m["msg_signature"], m["timestamp"], m["nonce"], m["encrypt"])


def test_tampered_ciphertext_is_a_bad_signature() -> None:
    v = VECTORS["wechatpy_tests"]
    m = v["message"]
    crypto = WecomCrypto(v["token"], v["encoding_aes_key"], v["corp_id"])
    with pytest.raises(BadSignature):
        crypto.decrypt(m["msg_signature"], m["timestamp"], m["nonce"], "A" + m["encrypt"][1:])
    with pytest.raises(BadSignature):
        crypto.decrypt("", m["timestamp"], m["nonce"], m["encrypt"])


def test_replay_window_refuses_old_vectors_only_when_enabled() -> None:
    v = VECTORS["wechatpy_tests"]
    m = v["message"]
    crypto = WecomCrypto(v["token"], v["encoding_aes_key"], v["corp_id"], replay_window_s=300)
    with pytest.raises(StaleTimestamp):
        crypto.decrypt(m["msg_signature"], m["timestamp"], m["nonce"], m["encrypt"])
    fresh = Sender("t", new_aes_key(), "corp")
    params, encrypt = fresh.seal("<xml><a>1</a></xml>", timestamp=str(int(time.time())))
    recent = WecomCrypto("t", fresh.aes_key, "corp", replay_window_s=300)
    plain = recent.decrypt(params["msg_signature"], params["timestamp"], params["nonce"], encrypt)
    assert plain == "<xml><a>1</a></xml>"


def test_signed_garbage_is_malformed_not_a_crash() -> None:
    sender = Sender("t", new_aes_key(), "corp")
    crypto = WecomCrypto("t", sender.aes_key, "corp")
    for garbage in ("not base64 at all!", "QUJD", "A" * 64, ""):
        params = sender.seal("x")[0]
        sig = sign("t", params["timestamp"], params["nonce"], garbage)
        # random plaintext may even name a receiver: refused either way, never a crash
        with pytest.raises((MalformedPayload, WrongReceiver, BadSignature)):
            crypto.decrypt(sig, params["timestamp"], params["nonce"], garbage)


def test_encrypted_reply_round_trip() -> None:
    sender = Sender("tok", new_aes_key(), "")
    crypto = WecomCrypto("tok", sender.aes_key, "")
    sealed = crypto.encrypt(json.dumps({"msgtype": "stream", "stream": {"id": "s", "content": "你好"}}))
    assert sender.open_reply(sealed)["stream"]["content"] == "你好"


def test_bad_aes_key_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="EncodingAESKey"):
        WecomCrypto("t", "short", "corp")
