"""Which web pages may call the widget API: same origin always, plus
``web.allowed_origins``. Browsers send ``Origin`` on every cross-origin call,
so a page that is not listed gets 403 and no CORS headers; callers without an
Origin (curl, server-to-server) still need a valid session token."""

from __future__ import annotations

from urllib.parse import urlsplit

_ALLOW_HEADERS = "Authorization, Content-Type, Last-Event-ID"
_ALLOW_METHODS = "GET, POST, OPTIONS"


def _normalize(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


class OriginPolicy:
    def __init__(self, allowed: list[str], public_url: str = "") -> None:
        self.any = "*" in allowed
        self.allowed = {_normalize(o) for o in allowed if o != "*"}
        if public_url:
            u = urlsplit(public_url)
            if u.scheme and u.netloc:
                self.allowed.add(f"{u.scheme}://{u.netloc}".lower())

    def allows(self, origin: str | None, host: str | None) -> bool:
        if origin is None:
            return True
        origin = _normalize(origin)
        if self.any or origin in self.allowed:
            return True
        # Same origin: the page was served by this host. The scheme is not compared because a TLS-terminating
        # proxy makes the hub see http while the browser says https.
        netloc = urlsplit(origin).netloc
        return bool(host) and netloc == (host or "").lower()

    @staticmethod
    def cors_headers(origin: str | None) -> dict[str, str]:
        if origin is None:
            return {}
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Expose-Headers": "Retry-After",
            "Vary": "Origin",
        }

    @staticmethod
    def preflight_headers(origin: str) -> dict[str, str]:
        return {
            **OriginPolicy.cors_headers(origin),
            "Access-Control-Allow-Methods": _ALLOW_METHODS,
            "Access-Control-Allow-Headers": _ALLOW_HEADERS,
            "Access-Control-Max-Age": "600",
        }
