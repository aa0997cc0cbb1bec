"""What of a URL or a value may be written to a log, an error body or ``check-config``.

Secrets travel inside URLs more often than anywhere else: ``redis://:pw@host``,
``amqp://user:pw@host``, ``?access_token=`` on every WeCom API call,
``?password=`` in a Redis URL, the token in a DingTalk or WeCom group-robot
webhook (``/robot/send?access_token=…``, ``/cgi-bin/webhook/send?key=…``) and
the per-message ``sessionWebhook`` of DingTalk. :func:`redact_url` keeps what
helps an operator (scheme, host, port, path) and drops the rest.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Iterable, Mapping
from urllib.parse import SplitResult, parse_qsl, quote, quote_plus, unquote, urlsplit

REDACTED = "***"


def _split(url: object) -> tuple[SplitResult, str] | None:
    """The parts and ``host[:port]`` (IPv6 in brackets), or None when it does not parse."""
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return None
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return parts, f"{host}{port}" if host else ""


def _userinfo(parts: SplitResult) -> str:
    return f"{REDACTED}@" if (parts.username or parts.password) else ""


def redact_url(url: object) -> str:
    """``scheme://host:port/path`` with user-info replaced and the query and
    fragment dropped; anything that does not parse becomes ``REDACTED``."""
    split = _split(url)
    if split is None or not split[0].scheme:
        return REDACTED
    parts, where = split
    query = f"?{REDACTED}" if parts.query else ""
    return f"{parts.scheme}://{_userinfo(parts)}{where}{parts.path}{query}"


def url_path(url: object) -> str:
    """Only the path, for logging a failed platform call."""
    try:
        return urlsplit(str(url)).path or "/"
    except ValueError:
        return REDACTED


# --- what counts as a secret -------------------------------------------------------------------------------------

SECRET_KEY = re.compile(r"secret|token|key|password|passwd|credential", re.IGNORECASE)
# Names that match SECRET_KEY but hold no secret: counts, prefixes, template variable names.
NOT_SECRET_KEYS = frozenset({"key_prefix", "card_content_key", "max_new_tokens", "context_tokens", "history_tokens",
                             "token_ttl_s"})
WEBHOOK_KEY = re.compile(r"webhook", re.IGNORECASE)  # a webhook URL is a secret as a whole (token in path or query)
# Query parameters that carry a credential in the URLs we build or receive (WeCom ``access_token``/``corpsecret``,
# group-robot ``key``, DingTalk ``access_token``/``sign``/``session``, Stream ``ticket``, Redis ``password``).
SECRET_PARAM = re.compile(
    r"(?:access_?token|corpsecret|secret|token|key|password|passwd|sign|signature|session|ticket|auth|code|apikey"
    r"|api_key)",
    re.IGNORECASE,
)
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://\S*\Z")  # a value that is a URL, not prose mentioning one
MIN_SECRET_CHARS = 6  # shorter configured values ("dev", "1") would blank ordinary words out of every log line


def is_secret_key(name: str) -> bool:
    """Whether a config key (the last part of its path) holds a secret."""
    return name not in NOT_SECRET_KEYS and bool(SECRET_KEY.search(name))


def redact_webhook(url: object) -> str:
    """``scheme://host[:port]`` only: webhook URLs carry their token in the path
    (``/services/T0/B0/XXXX``) as often as in the query (``?access_token=``, ``?key=``)."""
    split = _split(url)
    if split is None or not split[0].scheme or not split[1]:
        return REDACTED
    return f"{split[0].scheme}://{split[1]}"


def mask_url(url: str) -> str:
    """For ``check-config``: the URL as configured, with user-info and the values of
    credential-looking query parameters replaced (``redis://***@h:6379/0?password=***&db=1``)."""
    split = _split(url)
    if split is None:
        return REDACTED
    parts, where = split
    query = [(k, REDACTED if SECRET_PARAM.search(k) else v)
             for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    masked = SplitResult(parts.scheme, f"{_userinfo(parts)}{where}", parts.path, "", "").geturl()
    if query:
        masked += "?" + "&".join(f"{k}={v}" for k, v in query)
    return masked + (f"#{REDACTED}" if parts.fragment else "")


def mask_config(data: object, key: str = "") -> object:
    """A dumped configuration fit to print: every value under a secret-looking key at
    any depth (``wecom.apps.<name>.secret``, ``api.keys``) is ``***``, webhook URLs
    show only their host, other URLs lose their credentials."""
    if isinstance(data, Mapping):
        return {k: mask_config(v, str(k)) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [mask_config(v, key) for v in data]
    if is_secret_key(key) and data not in ("", None) and not isinstance(data, bool):
        return REDACTED
    if isinstance(data, str) and _URL.match(data):
        return redact_webhook(data) if WEBHOOK_KEY.search(key) else mask_url(data)
    if isinstance(data, str) and "://" in data:  # prose that mentions a URL (a system prompt)
        return scrub(data)
    return data


def secrets_of(data: object, key: str = "") -> set[str]:
    """Every secret string in a dumped configuration (at least :data:`MIN_SECRET_CHARS` long),
    with the credentials inside its URLs and their URL-encoded and base64 spellings: what
    :class:`SecretFilter` blanks out of every log record."""
    found: set[str] = set()
    if isinstance(data, Mapping):
        for k, v in data.items():
            found |= secrets_of(v, str(k))
    elif isinstance(data, list | tuple):
        for v in data:
            found |= secrets_of(v, key)
    elif isinstance(data, str) and data:
        if is_secret_key(key):
            found.add(data)
        if _URL.match(data):
            webhook = bool(WEBHOOK_KEY.search(key))
            found |= _url_secrets(data, webhook=webhook)
            if webhook:
                found.add(data)
    found = {s for s in found if len(s) >= MIN_SECRET_CHARS}
    return found | {variant for s in found for variant in _spellings(s)}


def _url_secrets(url: str, *, webhook: bool) -> set[str]:
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return {url}
    found = {p for p in (parts.password,) if p}
    found |= {unquote(p) for p in found}
    for name, value in query:
        if webhook or SECRET_PARAM.search(name):
            found.add(value)
    if webhook:  # tokens in the path: /services/T000/B000/XXXX, /hooks/<uuid>
        found |= {seg for seg in parts.path.split("/") if _looks_like_token(seg)}
    return found


def _looks_like_token(segment: str) -> bool:
    letters, digits = any(c.isalpha() for c in segment), any(c.isdigit() for c in segment)
    return len(segment) >= 16 or (len(segment) >= 8 and letters and digits)


def _spellings(secret: str) -> set[str]:
    """How a secret may appear besides itself: inside a URL, or base64-encoded in a header."""
    raw = secret.encode("utf-8", "surrogatepass")
    out = {quote(secret, safe=""), quote_plus(secret, safe=""), base64.b64encode(raw).decode("ascii"),
           base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")}
    return {s for s in out if s != secret and len(s) >= MIN_SECRET_CHARS}


# --- scrubbing text and log records ------------------------------------------------------------------------------

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # user-info in any URL: redis://:pw@h, amqp://user:pw@h
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^\s/@'\"<>]*@"), rf"\1{REDACTED}@"),
    # credential-looking query parameters: ?access_token=…, &key=…, &password=…, ?session=…, &response_code=…
    (re.compile(rf"([?&;][\w.-]*?(?:{SECRET_PARAM.pattern})=)[^&#\s'\"<>]+", re.IGNORECASE), rf"\1{REDACTED}"),
    # Authorization headers and header reprs: 'Bearer …', 'x-acs-dingtalk-access-token': '…'
    (re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE), rf"\1 {REDACTED}"),
    (re.compile(r"(access[-_]?token['\"]?\s*[:=]\s*['\"]?)[^'\"&\s,;}]+", re.IGNORECASE), rf"\1{REDACTED}"),
)


def scrub(text: str, secrets: re.Pattern[str] | None = None) -> str:
    """``text`` with the given secrets and anything shaped like a credential (URL
    user-info, ``access_token=`` and similar query values, bearer tokens) replaced."""
    if secrets is not None:
        text = secrets.sub(REDACTED, text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def secrets_pattern(secrets: Iterable[str]) -> re.Pattern[str] | None:
    """One alternation, longest first, so a secret that contains another is replaced whole."""
    ordered = sorted({s for s in secrets if s}, key=len, reverse=True)
    return re.compile("|".join(re.escape(s) for s in ordered)) if ordered else None


class RewritingFilter(logging.Filter):
    """A filter that rewrites the whole text of every record it sees: the message
    formatted with its args, and the exception and stack text formatted too (so
    nothing reaches a handler unrewritten). Subclasses say what :meth:`rewrite` takes out."""

    def __init__(self) -> None:
        super().__init__()
        self._formatter = logging.Formatter()

    def rewrite(self, text: str) -> str:
        raise NotImplementedError

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # bad args: keep the template, never the args
            message = str(record.msg)
        record.msg, record.args = self.rewrite(message), None
        if record.exc_info:
            record.exc_text = self.rewrite(self._formatter.formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = self.rewrite(record.exc_text)
        if record.stack_info:
            record.stack_info = self.rewrite(record.stack_info)
        return True


class SecretFilter(RewritingFilter):
    """Defence in depth on the root handlers: whatever a call site forgot, no
    configured secret (or credential-shaped text) leaves in a log record. The
    message is formatted here (so secrets in ``args`` go too), and the exception
    and stack text are formatted and scrubbed, since ``str()`` of aiohttp's errors
    carries the full request URL."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = secrets_pattern(secrets)

    def scrub(self, text: str) -> str:
        return scrub(text, self._secrets)

    rewrite = scrub


def install_secret_filter(secrets: Iterable[str], logger: logging.Logger | None = None) -> SecretFilter:
    """Put one :class:`SecretFilter` on every handler of ``logger`` (the root logger):
    handler filters also see records propagated from every other logger."""
    target = logger or logging.getLogger()
    secret_filter = SecretFilter(secrets)
    for handler in target.handlers:
        handler.addFilter(secret_filter)
    return secret_filter


class MalformedRequestFilter(logging.Filter):
    """aiohttp refuses a malformed request (bad request line, control bytes in a
    header, duplicate Content-Length) before any handler runs and logs the error
    at ERROR with a traceback whose message quotes the raw line: query values,
    tokens, customer text. The internet sends such bytes all day; one line
    naming the kind of error, at INFO, is what an operator needs."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "malformed HTTP request refused (%s, status %s)"
            record.args = (type(exc).__name__, getattr(exc, "code", 400))
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def install_malformed_request_filter() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server_log.filters):
        server_log.addFilter(MalformedRequestFilter())
