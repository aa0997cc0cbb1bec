"""Where the hub may send a request whose address came from outside, and how long any outbound call may take.

Two platforms hand us a URL to answer on inside the callback itself: DingTalk's ``sessionWebhook`` and the
WeCom AI bot's ``response_url``. Whoever gets a callback past (or around) the signature check could otherwise
make the hub POST an answer, with whatever it carries, to any address: an internal admin port, a cloud metadata
endpoint, a server of their own. :class:`OutboundPolicy` is the one check both use before calling such a URL:

- only ``https`` to a listed host on port 443, so a default deployment reaches nothing but the platform;
- a listed *loopback* host (``127.0.0.1``, ``localhost``, ``::1``) may be reached over http or https on any
  port, and an entry written as an origin (``http://10.0.0.5:8080``) allows exactly that scheme, host and
  port: tests and private deployments opt in through configuration, never by default;
- no user-info, no characters that parse differently in different URL parsers (whitespace, backslashes,
  non-ASCII): the URL that is checked is the :class:`yarl.URL` that is then requested, so the check and
  the request cannot disagree about the host.

Callers also pass ``allow_redirects=False``: a 3xx from an allowed host would otherwise take the request to a
host nobody checked. Errors name the host only; the rest of such a URL (session tokens, response codes) is
a credential.

:data:`HTTP_TIMEOUT` is the timeout of the shared outbound session: every part of a call is bounded
explicitly rather than by whichever default the installed aiohttp has.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
from yarl import URL

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
HTTPS_PORT = 443
_UNSAFE = re.compile(r"[^\x21-\x7e]|\\")  # anything but printable ASCII, and backslashes

HTTP_TIMEOUT_S = 30.0


def http_timeout(total_s: float = HTTP_TIMEOUT_S) -> aiohttp.ClientTimeout:
    """A bound on every part of an outbound call: the whole call, connecting, and each read."""
    part = min(total_s, 10.0)
    return aiohttp.ClientTimeout(total=total_s, connect=part, sock_connect=part, sock_read=total_s)


HTTP_TIMEOUT = http_timeout()


class OutboundRefused(ValueError):
    """A URL the policy does not allow; the message names the host only."""

    def __init__(self, host: str, why: str) -> None:
        super().__init__(f"outbound call to host {host!r} refused: {why}")
        self.host = host
        self.why = why


def host_of(url: object) -> str:
    """The host of ``url`` for a log line ("?" when there is none or it does not parse); never the rest."""
    text = str(url)
    if _UNSAFE.search(text):
        return "?"
    try:
        return URL(text).raw_host or "?"
    except (ValueError, TypeError):
        return "?"


@dataclass(frozen=True, slots=True)
class OutboundPolicy:
    """The hosts (https, 443) and exact origins a platform-supplied URL may point at."""

    hosts: frozenset[str] = frozenset()
    origins: frozenset[tuple[str, str, int]] = frozenset()  # (scheme, host, port)

    @classmethod
    def of(cls, entries: Iterable[str]) -> OutboundPolicy:
        """From configuration: each entry a host name (``oapi.dingtalk.com``) or an origin
        (``http://127.0.0.1:8080``); a host name that is a loopback address allows any port."""
        hosts: set[str] = set()
        origins: set[tuple[str, str, int]] = set()
        for entry in entries:
            entry = entry.strip()
            if not entry:
                continue
            if "://" not in entry:
                hosts.add(entry.lower().rstrip("."))
                continue
            url = URL(entry)
            if url.scheme not in ("http", "https") or not url.raw_host or url.port is None:
                raise ValueError(f"outbound origin {entry!r} must be http(s)://host[:port]")
            origins.add((url.scheme, url.raw_host.lower(), url.port))
        return cls(frozenset(hosts), frozenset(origins))

    def check(self, url: str) -> URL:
        """The URL to request, or :class:`OutboundRefused` naming the host and why."""
        if not url:
            raise OutboundRefused("?", "no URL")
        if _UNSAFE.search(url):
            raise OutboundRefused(host_of(url), "characters outside printable ASCII")
        try:
            parsed = URL(url)
            port = parsed.port
        except (ValueError, TypeError):
            raise OutboundRefused("?", "not a URL") from None
        host = (parsed.raw_host or "").lower()
        if not parsed.absolute or not host:
            raise OutboundRefused("?", "not an absolute URL")
        if parsed.user is not None or parsed.password is not None:
            raise OutboundRefused(host, "user-info in the URL")
        if parsed.scheme not in ("http", "https") or port is None:
            raise OutboundRefused(host, f"scheme {parsed.scheme!r}")
        if (parsed.scheme, host, port) in self.origins:
            return parsed
        if host in self.hosts:
            if host in LOOPBACK_HOSTS:
                return parsed  # listed on purpose: a loopback fake in tests
            if parsed.scheme == "https" and port == HTTPS_PORT:
                return parsed
            raise OutboundRefused(host, "only https on port 443")
        raise OutboundRefused(host, "host not allowed")

    def allows(self, url: str) -> bool:
        try:
            self.check(url)
        except OutboundRefused:
            return False
        return True
