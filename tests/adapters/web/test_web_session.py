"""Signed, expiring session tokens bound to the session id."""

from __future__ import annotations

import logging

import pytest

from adapters.web.session import SessionTokens, TokenError, new_session_id


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_issued_token_verifies_to_its_session() -> None:
    tokens = SessionTokens("s" * 32, ttl_s=60)
    sid = new_session_id()
    issued = tokens.issue(sid)
    session = tokens.verify(issued.token)
    assert session.session_id == sid
    assert session.expires_at == issued.expires_at


@pytest.mark.parametrize("token", [None, ""])
def test_missing_token_is_refused(token: str | None) -> None:
    with pytest.raises(TokenError) as err:
        SessionTokens("s" * 32, 60).verify(token)
    assert err.value.code == "missing_token"


def test_signature_from_another_secret_is_refused() -> None:
    theirs = SessionTokens("attacker-secret-xxxxxxxxxxxxxxxx", 60).issue(new_session_id()).token
    with pytest.raises(TokenError) as err:
        SessionTokens("s" * 32, 60).verify(theirs)
    assert err.value.code == "invalid_token"


def test_token_moved_to_another_session_id_is_refused() -> None:
    tokens = SessionTokens("s" * 32, 60)
    version, _sid, exp, sig = tokens.issue(new_session_id()).token.split(".")
    forged = ".".join([version, new_session_id(), exp, sig])
    with pytest.raises(TokenError) as err:
        tokens.verify(forged)
    assert err.value.code == "invalid_token"


def test_extended_expiry_is_refused() -> None:
    tokens = SessionTokens("s" * 32, 60)
    version, sid, exp, sig = tokens.issue(new_session_id()).token.split(".")
    with pytest.raises(TokenError):
        tokens.verify(".".join([version, sid, str(int(exp) + 10**6), sig]))


A32 = "a" * 32


@pytest.mark.parametrize("token", ["garbage", "v1.abc.1.x", f"v2.{A32}.9999999999.x", f"v1.{A32}.soon.x",
                                   f"v1.{A32}.9999999999"])
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(TokenError) as err:
        SessionTokens("s" * 32, 60).verify(token)
    assert err.value.code == "invalid_token"


def test_token_expires_after_its_ttl() -> None:
    clock = Clock()
    tokens = SessionTokens("s" * 32, ttl_s=60, clock=clock)
    token = tokens.issue(new_session_id()).token
    clock.now += 59
    tokens.verify(token)
    clock.now += 1
    with pytest.raises(TokenError) as err:
        tokens.verify(token)
    assert err.value.code == "token_expired"


def test_empty_secret_warns_and_uses_a_random_one(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="adapters.web.session"):
        a = SessionTokens("", 60)
    assert "BOT__WEB__SESSION_SECRET" in caplog.text
    b = SessionTokens("", 60)
    token = a.issue(new_session_id()).token
    a.verify(token)
    with pytest.raises(TokenError):
        b.verify(token)  # another process (or a restart) has another random secret


def test_session_ids_must_be_ours() -> None:
    with pytest.raises(ValueError):
        SessionTokens("s" * 32, 60).issue("../../etc")
