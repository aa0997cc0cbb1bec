"""Property tests of the shared decoder (bot/decode.py): whatever bytes or values arrive, the answer is a
value within the limits or a DecodeError naming the field — never another exception, never the value."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bot.decode import (
    MAX_DEPTH,
    DecodeError,
    JsonObject,
    check_int,
    check_text,
    has_surrogates,
    loads_json,
    loads_object,
    parse_int,
    single,
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SECRET = "秘密-4111111111111111"  # what a message must never repeat

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text())
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=30)
# text that may hold lone surrogates, as a hostile client writes them with \\u escapes
hostile_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF, blacklist_categories=()))


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def no_surrogates(value: Any) -> bool:
    if isinstance(value, str):
        return not has_surrogates(value)
    if isinstance(value, list):
        return all(no_surrogates(v) for v in value)
    if isinstance(value, dict):
        return all(no_surrogates(k) and no_surrogates(v) for k, v in value.items())
    return True


# ---------------------------------------------------------------- any bytes
@SETTINGS
@given(raw=st.binary(max_size=512))
@example(raw=b"[" * 5000)
@example(raw=b'["\\ud800", ' + b"1" * 5000 + b"]")  # the fallback parser would meet Python's int digit limit
@example(raw=b'["\\ud800", NaN, Infinity]')
@example(raw=b'["\\ud800", 1e999]')
@example(raw=b"\xff\xfe{}")
def test_arbitrary_bytes_are_a_value_or_a_decode_error(raw: bytes) -> None:
    for mode in ("reject", "replace"):
        try:
            value = loads_json(raw, surrogates=mode)  # type: ignore[arg-type]
        except DecodeError as exc:
            assert exc.code == "invalid_json"
            continue
        assert depth(value) <= MAX_DEPTH
        assert no_surrogates(value)
        json.dumps(value, ensure_ascii=False).encode()  # whatever came through can be written again


@SETTINGS
@given(text=hostile_text)
def test_arbitrary_json_strings_with_escapes_are_rejected_or_replaced(text: str) -> None:
    raw = json.dumps({"query": text})  # \\ud800 escapes for lone surrogates, as a hostile client sends them
    if has_surrogates(text):
        with pytest.raises(DecodeError):
            loads_json(raw)
        replaced = loads_json(raw, surrogates="replace")["query"]
        assert not has_surrogates(replaced) and len(replaced) == len(text)
        assert re.sub("[\ud800-\udfff]", "\ufffd", text) == replaced
    else:
        assert loads_json(raw)["query"] == text


@SETTINGS
@given(value=json_values)
def test_valid_documents_round_trip(value: Any) -> None:
    raw = orjson.dumps(value)
    assert loads_json(raw) == value
    assert loads_json(raw, surrogates="replace") == value


# ---------------------------------------------------------------- depth
@pytest.mark.parametrize("levels", [1, MAX_DEPTH, MAX_DEPTH + 1, 1000, 5000, 100_000])
@pytest.mark.parametrize("kind", ["list", "object"])
def test_json_nested_thousands_of_levels_is_refused_without_recursion(levels: int, kind: str) -> None:
    raw = ("[" * levels + "]" * levels) if kind == "list" else ('{"a":' * levels + "1" + "}" * levels)
    for mode in ("reject", "replace"):
        if levels <= MAX_DEPTH:
            assert depth(loads_json(raw, surrogates=mode)) == levels  # type: ignore[arg-type]
        else:
            with pytest.raises(DecodeError) as err:
                loads_json(raw, surrogates=mode)  # type: ignore[arg-type]
            assert err.value.code == "invalid_json"


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 3000])
def test_deep_json_holding_a_surrogate_is_refused_in_replace_mode(levels: int) -> None:
    """The replace path re-parses with the stdlib parser, which must hit the same depth limit."""
    raw = "[" * levels + '"\\ud800"' + "]" * levels
    with pytest.raises(DecodeError):
        loads_json(raw, surrogates="replace")


def test_body_that_is_not_an_object_is_refused() -> None:
    for raw in ("[]", "1", '"text"', "null"):
        with pytest.raises(DecodeError):
            loads_object(raw)
    assert loads_object(b"  ", optional=True).data == {}


# ---------------------------------------------------------------- fields
@SETTINGS
@given(value=json_values | hostile_text)
def test_check_text_gives_encodable_text_or_names_the_field(value: Any) -> None:
    try:
        text = check_text(value, "field", max_chars=50)
    except DecodeError as exc:
        assert exc.code == "invalid_field" and "'field'" in exc.message
        return
    assert isinstance(text, str) and len(text) <= 50
    text.encode()


@SETTINGS
@given(prefix=st.text(max_size=5), kind=st.sampled_from(["text", "int", "choice", "bool", "obj", "items"]))
def test_errors_never_echo_the_value(prefix: str, kind: str) -> None:
    value = prefix + SECRET
    fields = JsonObject({"f": value})
    with pytest.raises(DecodeError) as err:
        match kind:
            case "text":
                fields.text("f", max_chars=3)
            case "int":
                fields.integer("f", lo=0, hi=10)
            case "choice":
                fields.choice("f", ["up", "down"])
            case "bool":
                fields.boolean("f")
            case "obj":
                fields.obj("f")
            case "items":
                fields.items("f", max_items=1)
    assert SECRET not in err.value.message and SECRET not in str(err.value)


@pytest.mark.parametrize("value", [1, 1.5, True, None, [], {}])
def test_numbers_where_strings_belong_are_refused(value: Any) -> None:
    with pytest.raises(DecodeError):
        JsonObject({"query": value}).text("query")


@pytest.mark.parametrize("value", ["1", "true", "", [1], {}, 0, 1, 1.5, float("inf")])
def test_strings_and_others_where_booleans_belong_are_refused(value: Any) -> None:
    with pytest.raises(DecodeError):
        JsonObject({"notify": value}).boolean("notify")


# ---------------------------------------------------------------- integers
ASCII_INT = re.compile(r"-?[0-9]{1,19}")


@SETTINGS
@given(text=st.text(max_size=30) | st.from_regex(r"\A\s?-?[0-9]{1,25}\s?\Z"))
@example(text="²")
@example(text="١٢٣")
@example(text="1_000")
@example(text="+5")
@example(text="9" * 5000)
@example(text="99999999999999999999")
@example(text="0x10")
def test_parse_int_takes_ascii_digits_in_range_only(text: str) -> None:
    lo, hi = -(10**12), 10**15
    expected: int | None = None
    if ASCII_INT.fullmatch(text.strip()) and lo <= int(text.strip()) <= hi:
        expected = int(text.strip())
    try:
        got = parse_int(text, "timestamp", lo=lo, hi=hi)
    except DecodeError as exc:
        assert expected is None and exc.code == "invalid_timestamp"
        return
    assert got == expected


@SETTINGS
@given(value=json_values | st.integers() | st.floats())
@example(value=10**400)
@example(value=1e300)
@example(value=float("nan"))
@example(value=True)
def test_check_int_answers_an_int_in_range_or_a_decode_error(value: Any) -> None:
    try:
        got = check_int(value, "ts", lo=0, hi=2**63 - 1)
    except DecodeError as exc:
        assert exc.code == "invalid_ts"
        return
    assert type(got) is int and 0 <= got <= 2**63 - 1
    assert not isinstance(value, bool)


def test_huge_numbers_in_a_document_cannot_reach_arithmetic() -> None:
    """orjson makes integers past 64 bits floats; the range check refuses them either way."""
    body = loads_object('{"ts": 1' + "0" * 40 + ', "neg": -1' + "0" * 40 + "}")
    for name in ("ts", "neg"):
        with pytest.raises(DecodeError):
            body.integer(name, lo=-(2**63), hi=2**63 - 1)
    with pytest.raises(DecodeError):
        loads_json("1" + "0" * 400)  # beyond a double: refused as infinity


# ---------------------------------------------------------------- one header / query value
@SETTINGS
@given(values=st.lists(hostile_text, max_size=3))
def test_single_refuses_missing_duplicate_and_non_utf8(values: list[str]) -> None:
    try:
        got = single(values, "Last-Event-ID", max_chars=64)
    except DecodeError as exc:
        assert exc.code in ("missing_last_event_id", "duplicate_last_event_id", "invalid_last_event_id")
        assert len(values) != 1 or has_surrogates(values[0]) or len(values[0]) > 64
        return
    assert len(values) == 1 and got == values[0] and not has_surrogates(got)


def test_non_utf8_header_bytes_as_aiohttp_keeps_them_are_refused() -> None:
    """aiohttp decodes header bytes with surrogateescape: b"\\xff" arrives as "\\udcff"."""
    value = b"Bearer \xff\xfe".decode("utf-8", "surrogateescape")
    with pytest.raises(DecodeError) as err:
        single([value], "Authorization")
    assert err.value.code == "invalid_authorization"
