"""WeCom callback signatures and AES, via wechatpy's implementation.

wechatpy reports problems with its own exception types, a plain ``ValueError``
(entity bombs, XXE) or whatever the base64 / AES / struct layers raise on
garbage; callers here see only :class:`BadSignature` (403), :class:`WrongReceiver`
(403) and :class:`MalformedPayload` (400). The signature is compared in constant
time before wechatpy looks at it, and the timestamp can be bounded against
replays (wechatpy has no such check). Values that are not valid Unicode (query
bytes that were not UTF-8) fail the signature rather than the encoder, and a
timestamp is ASCII digits in a sane range (``int("²")`` raises, ``int("9"*5000)``
is slow), so every hostile query gets a 4xx.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
import time
from binascii import Error as Base64Error

from wechatpy.enterprise.crypto import PrpCrypto, WeChatCrypto
from wechatpy.enterprise.exceptions import InvalidCorpIdException
from wechatpy.exceptions import InvalidSignatureException

from bot.decode import DecodeError, has_surrogates, parse_int

MAX_TIMESTAMP_S = 10**11  # seconds; year 5138


class CallbackError(Exception):
    """A callback that must be refused; ``status`` is the HTTP answer."""

    status = 400
    code = "bad_callback"


class BadSignature(CallbackError):
    status = 403
    code = "bad_signature"


class WrongReceiver(CallbackError):
    """Decrypted fine but addressed to another corp (or AI bot)."""

    status = 403
    code = "wrong_receiver"


class StaleTimestamp(CallbackError):
    status = 403
    code = "stale_timestamp"


class MalformedPayload(CallbackError):
    status = 400
    code = "malformed"


def signature(token: str, timestamp: str, nonce: str, encrypt: str) -> str:
    """WeCom's msg_signature: sha1 of the four values sorted and joined."""
    return hashlib.sha1("".join(sorted([token, timestamp, nonce, encrypt])).encode()).hexdigest()


class WecomCrypto:
    """One callback endpoint's token, EncodingAESKey and receive id (the CorpID
    for apps, ``""`` for AI bots)."""

    def __init__(self, token: str, aes_key: str, receive_id: str, *, replay_window_s: int = 0) -> None:
        try:
            self._crypto = WeChatCrypto(token, aes_key, receive_id)
        except (AssertionError, ValueError, Base64Error) as exc:
            raise ValueError("the EncodingAESKey must be 43 base64 characters") from exc
        self.token = token
        self.receive_id = receive_id
        self.replay_window_s = replay_window_s

    def _check(self, msg_signature: str, timestamp: str, nonce: str, encrypt: str) -> None:
        if not (msg_signature and timestamp and nonce and encrypt):
            raise BadSignature("msg_signature, timestamp, nonce and the encrypted text are all required")
        if has_surrogates(msg_signature + timestamp + nonce + encrypt):
            raise BadSignature("signature does not match")  # bytes that were not UTF-8 cannot be what WeCom signed
        expected = signature(self.token, timestamp, nonce, encrypt)
        if not hmac.compare_digest(expected.encode(), msg_signature.lower().encode("utf-8", "replace")):
            raise BadSignature("signature does not match")
        if self.replay_window_s:
            try:
                sent = parse_int(timestamp, "timestamp", lo=0, hi=MAX_TIMESTAMP_S)
            except DecodeError:
                raise MalformedPayload("timestamp is not a decimal integer in range") from None
            if abs(time.time() - sent) > self.replay_window_s:
                raise StaleTimestamp(f"timestamp is more than {self.replay_window_s}s off")

    def _decrypt(self, call, *args: object) -> str:
        try:
            return call(*args)
        except InvalidSignatureException:
            raise BadSignature("signature does not match") from None
        except InvalidCorpIdException:
            raise WrongReceiver("message is addressed to another receiver") from None
        except (ValueError, TypeError, KeyError, IndexError, struct.error) as exc:  # Base64Error is a ValueError
            raise MalformedPayload(f"cannot decrypt: {type(exc).__name__}") from None

    def verify_url(self, msg_signature: str, timestamp: str, nonce: str, echostr: str) -> str:
        """The plaintext echo WeCom expects back when the callback URL is saved."""
        self._check(msg_signature, timestamp, nonce, echostr)
        return self._decrypt(self._crypto.check_signature, msg_signature.lower(), timestamp, nonce, echostr)

    def decrypt(self, msg_signature: str, timestamp: str, nonce: str, encrypt: str) -> str:
        """The plaintext of a signed ``Encrypt`` / ``encrypt`` field."""
        self._check(msg_signature, timestamp, nonce, encrypt)
        return self._decrypt(
            self._crypto.decrypt_message, {"Encrypt": encrypt}, msg_signature.lower(), timestamp, nonce
        )

    def encrypt(self, plaintext: str, *, nonce: str | None = None, timestamp: str | None = None) -> dict[str, str]:
        """Encrypt and sign a passive reply: ``encrypt``, ``msgsignature``, ``timestamp``, ``nonce``."""
        nonce = nonce or secrets.token_hex(8)
        timestamp = timestamp or str(int(time.time()))
        encrypt = PrpCrypto(self._crypto.key).encrypt(plaintext, self.receive_id).decode()
        return {"encrypt": encrypt, "msgsignature": signature(self.token, timestamp, nonce, encrypt),
                "timestamp": timestamp, "nonce": nonce}
