"""Untrusted input -> validated values, once for every entry point.

Every route, webhook and Stream frame reads its body, headers and query
through these functions, so one set of limits holds everywhere: a JSON
document nests at most ``MAX_DEPTH`` levels, strings hold no lone surrogates
(they cannot be encoded again, so they would fail later, deep inside a send
or a Redis write), numbers in string fields and strings in number fields are
refused, integers are ASCII digits inside a stated range (``int("²")`` raises,
``int("1"*5000)`` is slow), and headers or query parameters that are not
valid UTF-8 or are given twice are refused.

Errors are :class:`DecodeError` with a stable ``code`` and a message that
names the field but never echoes its value (a value may be a secret or
personal data). ``bot.http`` turns them into ``400`` JSON answers; channel
code that must answer a platform differently catches them itself.

Surrogates: a public client that sends ``"\\ud800"`` gets a 400 (``reject``).
A message that a platform signed is a real customer's and must not be lost,
so platform callers use ``replace``: the broken code point becomes U+FFFD.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import orjson

MAX_DEPTH = 32  # deeper than any body we accept; far below the recursion limit
Surrogates = Literal["reject", "replace"]

_INT = re.compile(r"-?[0-9]{1,19}")  # ASCII digits only: str.isdigit() accepts "²" and "١"
_SURROGATE = re.compile("[\ud800-\udfff]")


class DecodeError(ValueError):
    """Input that is not what the entry point accepts. ``code`` is stable for clients."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------- JSON documents
def loads_json(raw: bytes | str, *, max_depth: int = MAX_DEPTH, surrogates: Surrogates = "reject") -> Any:
    """Parse a JSON document under the shared limits.

    orjson refuses invalid UTF-8 and lone surrogates outright; with
    ``surrogates="replace"`` the stdlib parser takes what orjson refused and
    the surrogates become U+FFFD. Depth is checked on the parsed value (orjson
    itself stops at 1024 levels, the stdlib parser raises RecursionError)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if surrogates == "reject" or "surrogate" not in str(exc) or "depth" in str(exc):
            raise DecodeError("invalid_json", _json_reason(exc)) from None
        try:
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            value = json.loads(text, parse_constant=_no_constant, parse_int=_bounded_int, parse_float=_finite_float)
        except (ValueError, RecursionError):  # JSONDecodeError, and our hooks' refusals, are ValueErrors
            raise DecodeError("invalid_json", "body is not valid JSON") from None
        value = _clean(value, max_depth)
        return value
    _check_depth(value, max_depth)
    return value


def _no_constant(name: str) -> Any:
    """NaN and Infinity are not JSON; orjson refuses them, so the fallback parser does too."""
    raise ValueError(f"{name} is not JSON")


def _bounded_int(digits: str) -> int | float:
    """As orjson: integers beyond 64 bits become floats (``int("1" * 5000)`` would raise
    Python's digit limit, and the range checks of ``check_int`` refuse them either way)."""
    if len(digits.lstrip("-")) > 19:
        return _finite_float(digits)
    return int(digits)


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("number is infinite")
    return value


def _json_reason(exc: orjson.JSONDecodeError) -> str:
    text = str(exc).lower()
    if "depth" in text or "recursion" in text:
        return f"JSON nested deeper than {MAX_DEPTH} levels"
    if "utf-8" in text:
        return "body is not valid UTF-8"
    if "surrogate" in text:
        return "JSON string holds a lone surrogate (not valid Unicode text)"
    return f"body is not valid JSON (line {exc.lineno}, column {exc.colno})"


def _check_depth(value: Any, max_depth: int) -> None:
    """Iterative, so a hostile depth cannot overflow the stack here either."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            raise DecodeError("invalid_json", f"JSON nested deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children)


def _clean(value: Any, max_depth: int, depth: int = 1) -> Any:
    """Depth check plus U+FFFD for surrogates, for values the stdlib parser produced."""
    if depth > max_depth and isinstance(value, (dict, list)):
        raise DecodeError("invalid_json", f"JSON nested deeper than {max_depth} levels")
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_clean(v, max_depth, depth + 1) for v in value]
    if isinstance(value, dict):
        return {_SURROGATE.sub("\ufffd", k): _clean(v, max_depth, depth + 1) for k, v in value.items()}
    return value


def loads_object(raw: bytes | str, *, surrogates: Surrogates = "reject", optional: bool = False) -> JsonObject:
    """A JSON document that must be an object; ``optional``: empty input is ``{}``."""
    if optional and not (raw.strip() if isinstance(raw, (bytes, str)) else raw):
        return JsonObject({})
    value = loads_json(raw, surrogates=surrogates)
    if not isinstance(value, dict):
        raise DecodeError("invalid_json", "body must be a JSON object")
    return JsonObject(value)


# ---------------------------------------------------------------- fields
class JsonObject:
    """Typed, limited access to the fields of a decoded JSON object.

    Each accessor names the field in its error and never its value."""

    def __init__(self, data: Mapping[str, Any], where: str = "") -> None:
        self.data = data
        self.where = where

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str) -> Any:
        return self.data.get(key)

    def text(self, key: str, *, max_chars: int | None = None, max_bytes: int | None = None,
             non_empty: bool = True, pattern: re.Pattern[str] | None = None) -> str:
        value = self.opt_text(key, max_chars=max_chars, max_bytes=max_bytes, pattern=pattern)
        if value is None:
            raise DecodeError(f"invalid_{key}", f"'{self._name(key)}' is required and must be a string")
        if non_empty and not value.strip():
            raise DecodeError(f"invalid_{key}", f"'{self._name(key)}' must not be empty")
        return value

    def opt_text(self, key: str, *, max_chars: int | None = None, max_bytes: int | None = None,
                 pattern: re.Pattern[str] | None = None) -> str | None:
        value = self.data.get(key)
        if value is None:
            return None
        return check_text(value, self._name(key), max_chars=max_chars, max_bytes=max_bytes, pattern=pattern)

    def integer(self, key: str, *, lo: int, hi: int, default: int | None = None) -> int:
        value = self.data.get(key)
        if value is None:
            if default is None:
                raise DecodeError(f"invalid_{key}", f"'{self._name(key)}' is required and must be an integer")
            return default
        return check_int(value, self._name(key), lo=lo, hi=hi)

    def boolean(self, key: str, *, default: bool | None = None) -> bool:
        value = self.data.get(key)
        if value is None and default is not None:
            return default
        if not isinstance(value, bool):
            raise DecodeError(f"invalid_{key}", f"'{self._name(key)}' must be true or false")
        return value

    def choice(self, key: str, options: Iterable[str], *, default: str | None = None) -> str:
        value = self.data.get(key)
        allowed = tuple(options)
        if value is None and default is not None:
            return default
        if not isinstance(value, str) or value not in allowed:
            raise DecodeError(f"invalid_{key}", f"'{self._name(key)}' must be one of {', '.join(allowed)}")
        return value

    def obj(self, key: str, *, required: bool = False) -> JsonObject | None:
        value = self.data.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, dict):
            raise DecodeError(f"invalid_{key}", f"'{self._name(key)}' must be an object")
        return JsonObject(value, self._name(key))

    def items(self, key: str, *, max_items: int) -> list[Any]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise DecodeError(f"invalid_{key}", f"'{self._name(key)}' must be a list")
        if len(value) > max_items:
            raise DecodeError(f"invalid_{key}", f"'{self._name(key)}' holds more than {max_items} items")
        return value


def check_text(value: Any, name: str, *, max_chars: int | None = None, max_bytes: int | None = None,
               pattern: re.Pattern[str] | None = None) -> str:
    """A string (not a number: ``123`` where text belongs is a client bug worth telling), valid
    Unicode, within limits. ``max_bytes`` counts UTF-8 bytes: a Chinese character is three."""
    code = f"invalid_{name.rsplit('.', 1)[-1]}"
    if not isinstance(value, str):
        raise DecodeError(code, f"'{name}' must be a string")
    if _SURROGATE.search(value):
        raise DecodeError(code, f"'{name}' holds a lone surrogate (not valid Unicode text)")
    if max_chars is not None and len(value) > max_chars:
        raise DecodeError(code, f"'{name}' is longer than {max_chars} characters")
    if max_bytes is not None and len(value.encode()) > max_bytes:
        raise DecodeError(code, f"'{name}' is longer than {max_bytes} bytes")
    if pattern is not None and not pattern.fullmatch(value):
        raise DecodeError(code, f"'{name}' has an invalid format")
    return value


def check_int(value: Any, name: str, *, lo: int, hi: int) -> int:
    """An integer in ``[lo, hi]`` from a JSON number or a string of ASCII digits.

    Booleans are not integers here (``True == 1`` in Python), nor are floats
    with a fraction; the range keeps absurd timestamps out of arithmetic."""
    code = f"invalid_{name.rsplit('.', 1)[-1]}"
    if isinstance(value, bool):
        raise DecodeError(code, f"'{name}' must be an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise DecodeError(code, f"'{name}' must be an integer")
        value = int(value)
    elif isinstance(value, str):
        value = parse_int(value, name, lo=lo, hi=hi)
    elif not isinstance(value, int):
        raise DecodeError(code, f"'{name}' must be an integer")
    if not lo <= value <= hi:
        raise DecodeError(code, f"'{name}' is out of range")
    return value


def parse_int(text: str | None, name: str, *, lo: int, hi: int) -> int:
    """ASCII decimal digits only, at most 19 of them, then the range."""
    code = f"invalid_{name.rsplit('.', 1)[-1]}"
    if text is None or not _INT.fullmatch(text.strip()):
        raise DecodeError(code, f"'{name}' must be a decimal integer")
    value = int(text.strip())
    if not lo <= value <= hi:
        raise DecodeError(code, f"'{name}' is out of range")
    return value


# ---------------------------------------------------------------- headers and query
def single(values: list[str], name: str, *, required: bool = True, max_chars: int = 4096) -> str | None:
    """The one value of a query parameter or header: missing (when required) or
    given twice is an error, and so is text that was not valid UTF-8 (aiohttp
    keeps such bytes as lone surrogates, which fail at the first ``encode``)."""
    code = name.lower().replace("-", "_")  # Last-Event-ID -> invalid_last_event_id
    if not values:
        if required:
            raise DecodeError(f"missing_{code}", f"'{name}' is required")
        return None
    if len(values) > 1:
        raise DecodeError(f"duplicate_{code}", f"'{name}' is given more than once")
    try:
        return check_text(values[0], name, max_chars=max_chars)
    except DecodeError as exc:
        raise DecodeError(f"invalid_{code}", exc.message) from None


def has_surrogates(text: str) -> bool:
    return _SURROGATE.search(text) is not None
