"""What of a URL or a value may be written to a log, an error body or ``check-config``.

Secrets travel inside URLs more often than anywhere else: ``redis://:pw@host``,
``amqp://user:pw@host``, ``?access_token=`` on every WeCom API call,
``?password=`` in a Redis URL, the token in a DingTalk or WeCom group-robot
webhook (``/robot/send?access_token=…``, ``/cgi-bin/webhook/send?key=…``) and
the per-message ``sessionWebhook`` of DingTalk. :func:`redact_url` keeps what
helps an operator (scheme, host, port, path) and drops the rest.
"""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit

REDACTED = "***"


def redact_url(url: object) -> str:
    """``scheme://host:port/path`` with user-info replaced and the query and
    fragment dropped; anything that does not parse becomes ``REDACTED``."""
    text = str(url)
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return REDACTED
    if not parts.scheme or not (host or parts.path):
        return REDACTED
    userinfo = f"{REDACTED}@" if (parts.username or parts.password) else ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    query = f"?{REDACTED}" if parts.query else ""
    return SplitResult(parts.scheme, f"{userinfo}{host}{port}", parts.path, "", "").geturl() + query


def url_path(url: object) -> str:
    """Only the path, for logging a failed platform call."""
    try:
        return urlsplit(str(url)).path or "/"
    except ValueError:
        return REDACTED
