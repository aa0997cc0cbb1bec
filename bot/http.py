"""HTTP plumbing shared by every route: JSON errors, body limits, metrics.

Every error leaves as ``{"error": code, "message": text}`` with the right
status and is counted; no traceback ever reaches a client.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from bot.decode import DecodeError, JsonObject, has_surrogates, loads_object, single
from bot.metrics import Metrics

log = logging.getLogger(__name__)

METRICS_KEY = web.AppKey("metrics", Metrics)


class HttpError(Exception):
    """An HTTP error with a JSON body; raise it from any handler."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def response(self) -> web.Response:
        resp = json_response({"error": self.code, "message": self.message}, status=self.status)
        resp.headers.update(self.headers)
        return resp


def json_response(data: Any, status: int = 200) -> web.Response:
    """UTF-8 JSON, Chinese as is. A lone surrogate that slipped into a value (text stored before the
    shared decoder refused them) cannot be UTF-8 encoded; it is then written as a ``\\udXXX``
    escape rather than failing the response with a 500."""
    text = json.dumps(data, ensure_ascii=False)
    try:
        body = text.encode()
    except UnicodeEncodeError:
        body = json.dumps(data).encode()
    return web.Response(body=body, status=status, content_type="application/json", charset="utf-8")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes with 413 before
    buffering it all (the declared length is checked first, then the stream)."""
    if request.content_length is not None and request.content_length > limit:
        raise HttpError(413, "body_too_large", f"request body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise HttpError(413, "body_too_large", f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_fields(request: web.Request, limit: int, *, optional: bool = False) -> JsonObject:
    """The body as a JSON object under the shared limits (bot/decode.py), 400 otherwise, with typed field
    accessors; ``optional``: an empty body is ``{}``."""
    body = await read_body(request, limit)
    return loads_object(body, optional=optional)


def query_one(request: web.Request, name: str, *, required: bool = True, max_chars: int = 4096) -> str | None:
    """One query parameter: 400 when missing (if required), given twice or not UTF-8.

    Read from the raw query string: yarl turns a percent-escape that is not UTF-8 (``%ff``) into
    U+FFFD, which would pass for text; decoded here with ``surrogateescape`` it stays detectable."""
    return single(query_values(request, name), name, required=required, max_chars=max_chars)


def query_values(request: web.Request, name: str) -> list[str]:
    """Every value of a query parameter, escapes that are not UTF-8 kept as lone surrogates."""
    raw = request.rel_url.raw_query_string
    if "%" not in raw:
        return request.query.getall(name, [])
    pairs = urllib.parse.parse_qsl(raw, keep_blank_values=True, errors="surrogateescape")
    return [v for k, v in pairs if k == name]


def header_one(request: web.Request, name: str, *, required: bool = False, max_chars: int = 8192) -> str | None:
    """One header value: 400 when given twice or not valid UTF-8 (aiohttp keeps the bytes as surrogates)."""
    return single(request.headers.getall(name, []), name, required=required, max_chars=max_chars)


def bearer_token(request: web.Request) -> str | None:
    """The bearer token, or None; a header that is not valid UTF-8 or given twice is a 400."""
    auth = header_one(request, "Authorization") or ""
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


_REASONS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
            413: "body_too_large", 429: "rate_limited", 503: "unavailable"}


def _route_name(request: web.Request) -> str:
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    metrics = request.app[METRICS_KEY]
    route = _route_name(request)
    started = time.perf_counter()
    try:
        response = await handler(request)
    except HttpError as exc:
        metrics.http_errors.labels(route, str(exc.status), exc.code).inc()
        response = exc.response()
    except DecodeError as exc:
        metrics.http_errors.labels(route, "400", exc.code).inc()
        response = HttpError(400, exc.code, exc.message).response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = _REASONS.get(exc.status, "http_error")
        metrics.http_errors.labels(route, str(exc.status), reason).inc()
        keep = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate", "retry-after")}
        response = HttpError(exc.status, reason, exc.reason or reason, keep).response()
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        metrics.http_errors.labels(route, "500", "internal").inc()
        response = HttpError(500, "internal", "internal error; it has been logged").response()
    metrics.http_requests.labels(route, str(response.status)).inc()
    metrics.http_latency.labels(route).observe(time.perf_counter() - started)
    return response


_MAX_ADDRESS = 64


def client_address(request: web.Request, trust_forwarded_for: bool) -> str:
    """Who is asking, for per-address limits (the widget, /chat, console sign-in): the connection's peer, or the last
    ``X-Forwarded-For`` hop when ``web.trust_forwarded_for`` says a proxy of ours stands in front (earlier hops are
    the client's own say-so). A forwarded header that is not UTF-8 is a 400."""
    if trust_forwarded_for:
        # Several headers are one comma-separated list (RFC 9110); bytes that are not UTF-8 are no address.
        forwarded = ",".join(request.headers.getall("X-Forwarded-For", []))
        if has_surrogates(forwarded):
            raise DecodeError("invalid_x_forwarded_for", "'X-Forwarded-For' is not valid UTF-8")
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        if hops:
            return hops[-1][:_MAX_ADDRESS]
    return request.remote or "unknown"
