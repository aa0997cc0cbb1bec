"""The callback signature, checked against values computed by DingTalk's documented formula."""

from __future__ import annotations

import pytest

from adapters.dingtalk import sign
from tests.adapters.dingtalk.dingtalk_fake import APP_SECRET, documented_sign

NOW_MS = 1_764_000_000_000
HOUR_MS = 3600 * 1000


def now() -> float:
    return NOW_MS


@pytest.mark.parametrize("secret", [APP_SECRET, "a", "SEC" + "x" * 64])
@pytest.mark.parametrize("timestamp", ["1764000000000", "1", "1577836800123"])
def test_compute_is_the_documented_formula(timestamp: str, secret: str) -> None:
    assert sign.compute(timestamp, secret) == documented_sign(timestamp, secret)


def test_a_fresh_genuine_request_passes() -> None:
    ts = str(NOW_MS - 5000)
    sign.verify(ts, documented_sign(ts), APP_SECRET, now_ms=now)


@pytest.mark.parametrize("skew", [HOUR_MS, -HOUR_MS, HOUR_MS - 1])
def test_skew_up_to_one_hour_passes(skew: int) -> None:
    ts = str(NOW_MS - skew)
    sign.verify(ts, documented_sign(ts), APP_SECRET, now_ms=now)


@pytest.mark.parametrize("skew", [HOUR_MS + 1, -HOUR_MS - 1, 24 * HOUR_MS])
def test_more_than_one_hour_of_skew_is_stale(skew: int) -> None:
    ts = str(NOW_MS - skew)
    with pytest.raises(sign.StaleTimestamp):
        sign.verify(ts, documented_sign(ts), APP_SECRET, now_ms=now)


@pytest.mark.parametrize(
    ("timestamp", "signature"),
    [
        (None, "x"),
        (str(NOW_MS), None),
        ("", ""),
        (str(NOW_MS), documented_sign(str(NOW_MS), "another-secret")),
        (str(NOW_MS), documented_sign(str(NOW_MS + 1))),  # a signature for another timestamp
        ("17640000000OO", documented_sign("17640000000OO")),  # not milliseconds
        ("-1", documented_sign("-1")),
        ("١٧٦٤", documented_sign("١٧٦٤")),  # non-ASCII digits
        (str(NOW_MS), "签名"),
    ],
)
def test_missing_or_wrong_signatures_are_refused(timestamp: str | None, signature: str | None) -> None:
    with pytest.raises(sign.SignatureError) as info:
        sign.verify(timestamp, signature, APP_SECRET, now_ms=now)
    assert not isinstance(info.value, sign.StaleTimestamp)


def test_nothing_passes_without_a_configured_secret() -> None:
    ts = str(NOW_MS)
    with pytest.raises(sign.SignatureError):
        sign.verify(ts, documented_sign(ts, ""), "", now_ms=now)
