"""Typed configuration, loaded once at start and passed in (never a global).

Sources, later wins: ``config/default.yaml`` (or ``--config`` / ``BOT_CONFIG``),
then environment variables ``BOT__SECTION__KEY``. Secrets belong in the
environment only. Any typo or wrong type raises :class:`ConfigError`, which the
CLI turns into exit status 2 with the key path named.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bot.service_hours import ServiceHours, parse_day
from engine.config import EngineConfig, OpenAIConfig, RerankerConfig  # noqa: F401 - re-exported; engine/ owns them

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "config" / "default.yaml"
ENV_PREFIX = "BOT__"


class ConfigError(Exception):
    """Raised for an unreadable, malformed or invalid configuration."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(64 * 1024, gt=0)
    public_url: str = ""  # how customers reach us; used in widget snippets
    worker_port: int = Field(8081, ge=0, le=65535)  # a --role worker process serves /healthz and /metrics here
    outbound_timeout_s: float = Field(30.0, gt=0)  # longest outbound platform / webhook call (bot.outbound)


class StateConfig(_Section):
    url: str = "memory://"  # memory:// or redis://host:port/db
    key_prefix: str = "kefu"
    idle_ttl_s: int = Field(1800, gt=0)  # a conversation idle this long restarts
    # A conversation a person has (handed off) is kept this long without messages: agents answer within
    # hours, outside service hours the next morning, and the customer's message must still be on the desk.
    handoff_ttl_s: int = Field(259200, gt=0)
    dedup_ttl_s: int = Field(86400, ge=86400)  # platform retries seen for >= 24 h
    history_turns: int = Field(20, gt=0)
    max_connections: int = Field(100, gt=0)  # Redis connections per process; callers past it wait
    pool_timeout_s: float = Field(5.0, gt=0)  # a wait for a free connection longer than this counts as Redis down
    socket_timeout_s: float = Field(5.0, gt=0)  # a Redis reply slower than this counts as Redis down
    connect_timeout_s: float = Field(2.0, gt=0)  # a Redis connect slower than this counts as Redis down

    @field_validator("url")
    @classmethod
    def _store_scheme(cls, url: str) -> str:
        """Refused here, naming the key and not the URL (which may carry a password)."""
        if not url.startswith(("memory://", "redis://", "rediss://", "unix://")):
            raise ValueError("expected memory:// or redis://... / rediss://... / unix://...")
        return url

    @model_validator(mode="after")
    def _handoff_outlives_idle(self) -> StateConfig:
        if self.handoff_ttl_s < self.idle_ttl_s:
            raise ValueError("state.handoff_ttl_s must be at least state.idle_ttl_s (a handed-off conversation "
                             "is kept longer than an idle one, never shorter)")
        return self


class HubConfig(_Section):
    max_concurrent_turns: int = Field(64, gt=0)
    engine_deadline_s: float = Field(20.0, gt=0)
    turn_deadline_s: float = Field(60.0, gt=0)
    max_pending: int = Field(10000, gt=0)  # accepted but not yet answered


class QueueConfig(_Section):
    url: str = ""  # empty: in-process (one process does everything); amqp://user:pass@host:5672/vhost for RabbitMQ
    name: str = "kefu"  # prefix of every exchange and queue this deployment declares
    partitions: int = Field(16, ge=1, le=1024)  # conversations hash into these; more workers than this sit idle
    delivery_limit: int = Field(5, ge=1)  # deliveries of one event before it is parked in the dead-letter queue
    max_length: int = Field(100_000, gt=0)  # events waiting per partition before gateways answer 503
    prefetch: int = Field(64, gt=0)  # unacknowledged events a worker holds per partition
    lease_s: float = Field(10.0, gt=0)  # a dead worker's partitions move to a live one after this
    confirm_timeout_s: float = Field(5.0, gt=0)  # a publish the broker has not confirmed by then gets 503


class ApiConfig(_Section):
    keys: list[str] = []  # when set, /chat needs Authorization: Bearer <key>
    max_query_chars: int = Field(2000, gt=0)  # longest /chat query, as web.max_message_chars; past it 400
    allow_anonymous: bool = False  # let /chat without keys listen on a non-loopback address
    rate_per_client_per_min: int = Field(60, gt=0)  # /chat requests per API key (or per address without keys)
    pending_share: float = Field(0.25, gt=0, le=1)  # of hub.max_pending, the most /chat may hold per process


class FaqConfig(_Section):
    path: str = "config/faq.yaml"
    synonyms_path: str = "config/synonyms.yaml"  # synonyms, colloquialisms, typos, abbreviations (bot/faq/synonyms.py)
    threshold: float = Field(0.36, ge=0, le=1)  # confident: the FAQ answers (chosen on config/faq_eval_hard.yaml)
    floor: float = Field(0.20, ge=0, le=1)  # between floor and threshold: 猜你想问 offers the closest questions
    margin: float = Field(0.02, ge=0, le=1)  # a top match this close to the second is uncertain too
    # A cross-encoder re-ranking the lexical candidates (bot/faq/rerank.py); path empty: lexical only.
    reranker: RerankerConfig = RerankerConfig()
    rerank_weight: float = Field(0.7, ge=0, le=1)  # the model's share of a candidate's score
    rerank_top_k: int = Field(10, gt=0, le=100)  # lexical candidates the model reads per question


class WebConfig(_Section):
    enabled: bool = True
    allowed_origins: list[str] = []  # empty: same origin only
    session_secret: str = ""  # set BOT__WEB__SESSION_SECRET in production
    token_ttl_s: int = Field(86400, gt=0)
    rate_per_session_per_min: int = Field(30, gt=0)
    rate_per_ip_per_min: int = Field(120, gt=0)
    trust_forwarded_for: bool = False  # behind a reverse proxy: rate-limit by the last X-Forwarded-For address
    max_message_chars: int = Field(2000, gt=0)
    replay_events: int = Field(1000, gt=0)  # widget events kept per session for reconnects and reloads
    heartbeat_s: float = Field(15.0, gt=0)  # SSE keep-alive comment interval
    max_streams_per_session: int = Field(8, gt=0)  # open SSE connections (tabs) per session per process
    max_streams_per_ip: int = Field(32, gt=0)  # open SSE connections per client address per process
    max_streams: int = Field(10000, gt=0)  # open SSE connections per process
    max_sessions: int = Field(10000, gt=0)  # sessions one process keeps events of or watches; the longest idle go
    pending_share: float = Field(0.25, gt=0, le=1)  # of hub.max_pending, the most the widget may hold per process
    demo_page: bool = True  # serve the demo company page at GET /


def _digits_as_text(value: Any) -> Any:
    """YAML reads an all-digit token as an int; it is still text."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class WecomAppConfig(_Section):
    """One more WeCom self-built app in the same deployment, served at ``/wecom/{name}/callback``."""

    corp_id: str = ""  # empty: wecom.corp_id
    token: str = ""
    aes_key: str = ""
    secret: str = ""
    agent_id: int = 0

    _text = field_validator("corp_id", "token", "aes_key", "secret", mode="before")(_digits_as_text)


class WecomConfig(_Section):
    corp_id: str = ""
    token: str = ""
    aes_key: str = ""
    secret: str = ""
    agent_id: int = 0
    api_base: str = "https://qyapi.weixin.qq.com"
    robot_key: str = ""
    apps: dict[str, WecomAppConfig] = {}
    max_body_bytes: int = Field(1024 * 1024, gt=0)
    replay_window_s: int = Field(3600, ge=0)  # 0: no timestamp check
    user_rate_per_min: int = Field(30, gt=0)
    robot_rate_per_min: int = Field(20, gt=0)
    send_retries: int = Field(3, ge=0)
    retry_backoff_s: float = Field(1.0, ge=0)
    aibot_token: str = ""
    aibot_aes_key: str = ""
    aibot_stream_ttl_s: int = Field(600, gt=0)
    aibot_event_wait_s: float = Field(3.0, ge=0, lt=5)
    response_url_hosts: list[str] = ["qyapi.weixin.qq.com"]  # the AI bot's response_url: these (https, 443) only

    _text = field_validator("corp_id", "token", "aes_key", "secret", "robot_key", "aibot_token", "aibot_aes_key",
                            mode="before")(_digits_as_text)

    @field_validator("apps")
    @classmethod
    def _app_names(cls, apps: dict[str, WecomAppConfig]) -> dict[str, WecomAppConfig]:
        for name in apps:
            if not re.fullmatch(r"[a-z0-9_-]{1,32}", name) or name == "aibot":
                raise ValueError(f"app name {name!r} must be 1-32 of a-z 0-9 _ - and not 'aibot'")
        return apps


class DingtalkConfig(_Section):
    mode: Literal["http", "stream"] = "http"
    app_key: str = ""
    app_secret: str = ""
    robot_code: str = ""
    api_base: str = "https://api.dingtalk.com"
    webhook_hosts: list[str] = ["oapi.dingtalk.com", "api.dingtalk.com"]
    card_template_id: str = ""
    card_content_key: str = "content"  # the template variable the streamed answer fills
    card_update_interval_s: float = Field(0.5, ge=0)  # at most one card update per interval while streaming
    send_rate_per_min: int = Field(20, gt=0)  # DingTalk throttles a robot past 20 messages a minute
    stream_backoff_s: float = Field(1.0, gt=0)  # first Stream-mode reconnect delay, doubled per failure
    stream_backoff_max_s: float = Field(60.0, gt=0)
    notify_webhook: str = ""  # a group robot's webhook URL (with access_token) for team notifications
    notify_secret: str = ""  # its 加签 secret
    notify_rate_per_min: int = Field(20, gt=0)

    _text = field_validator("app_key", "app_secret", "robot_code", "card_template_id", "notify_secret",
                            mode="before")(_digits_as_text)


class DialogueConfig(_Section):
    enabled: bool = True  # false: the simple FAQ/LLM responder answers, no graph
    path: str = "config/dialogue.yaml"
    intents_path: str = "config/intents.yaml"
    intents_labelled_path: str = "config/intents_labelled.yaml"  # extra examples from label-import; missing = none
    intents_eval_path: str = "config/intents_eval.yaml"
    speech_acts_path: str = "config/speech_acts.yaml"  # request | question | other: start a flow or answer about it
    speech_acts_eval_path: str = "config/speech_acts_eval.yaml"
    intent_threshold: float = Field(0.45, ge=0, le=1)  # below: no intent route, maybe a clarifying question
    clarify_floor: float = Field(0.15, ge=0, le=1)  # intents this likely are offered in the clarifying question
    faq_strong: float = Field(0.75, ge=0, le=1)  # an FAQ match this close beats an intent route
    history_tokens: int = Field(1024, gt=0)  # history budget for llm nodes (also capped by engine.context_tokens)
    anger_handoff: int = Field(2, ge=1)  # angry messages in a conversation before it goes to a person
    handoff_webhook_url: str = ""  # generic webhook told of every handoff (JSON {title, text})
    notify_timeout_s: float = Field(10.0, gt=0)


class ServiceHoursConfig(_Section):
    """When people answer handoffs (bot/service_hours.py): "HH:MM-HH:MM", shifts joined by commas, or "closed"."""

    mon: str = "09:00-21:00"
    tue: str = "09:00-21:00"
    wed: str = "09:00-21:00"
    thu: str = "09:00-21:00"
    fri: str = "09:00-21:00"
    sat: str = "09:00-21:00"
    sun: str = "09:00-21:00"

    @field_validator("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    @classmethod
    def _day(cls, spec: str) -> str:
        parse_day(spec)
        return spec


class HandoffConfig(_Section):
    """What a customer handed to a person hears while waiting (bot/dialogue/waiting.py)."""

    hours: ServiceHoursConfig = ServiceHoursConfig()
    timezone: str = "Asia/Shanghai"  # IANA name the hours are in
    agent_timeout_s: float = Field(300.0, ge=0)  # 0: never tell the customer that no agent has replied

    @model_validator(mode="after")
    def _schedule(self) -> HandoffConfig:
        ServiceHours.parse(self.hours.model_dump(), self.timezone)
        return self


class SafetyOutputConfig(_Section):
    """The output filter (bot/safety/output_filter.py): what a reply may not carry to the customer."""

    enabled: bool = True  # false: replies and streamed tokens go out unchecked
    max_chars: int = Field(2000, gt=0)  # a model-written reply longer than this is replaced (a runaway generation)
    tail_chars: int = Field(24, gt=0)  # streaming: significant characters held back (longer than any blocked term)
    leak_ngram: int = Field(12, ge=4)  # units (a Chinese character, an English word) shared with the instructions
    leak_markers: list[str] = ["系统提示词", "system prompt"]  # phrases that only a leaking answer says
    allowed_pii: list[str] = []  # the company's own hotline, service email...: a model may say these
    # operator-written replies: checked against the blocklist only (an FAQ answer may carry the hotline)
    trusted_sources: list[str] = ["faq", "fallback", "dialogue", "system", "unknown", "agent"]
    # key of the digests of personal data a customer gave (the history keeps them redacted), so a later answer may
    # repeat the customer's own number; set BOT__SAFETY__OUTPUT__PII_SECRET, empty: a random key per process
    pii_secret: str = ""


class SafetyConfig(_Section):
    """The input filter (bot.safety): what each category of finding does to a turn."""

    enabled: bool = True  # false: no input checks at all
    blocklist_path: str = "config/blocklist.txt"  # 敏感词, one per line, optional <TAB>category
    # per category (injection, sql, shell, blocklist, or a blocklist file's own category): refuse | mask | handoff
    # | flag; a blocklist category not named here takes the action of ``blocklist``
    actions: dict[str, str] = {
        "injection": "refuse", "sql": "flag", "shell": "flag", "blocklist": "refuse", "abuse": "mask",
    }
    output: SafetyOutputConfig = SafetyOutputConfig()

    @field_validator("actions")
    @classmethod
    def _known_actions(cls, actions: dict[str, str]) -> dict[str, str]:
        for category, action in actions.items():
            if action not in ("refuse", "mask", "handoff", "flag"):
                raise ValueError(f"actions.{category}: expected refuse, mask, handoff or flag")
        return actions


class PrivacyConfig(_Section):
    """PII redaction (bot/privacy/pii.py) wherever data is kept or leaves the hub; slots are never redacted."""

    extra_patterns: dict[str, str] = {}  # name -> regex (on the NFKC form); matches become [name]
    keep: list[str] = []  # values never redacted: the company's own hotline and service e-mails in answers

    @field_validator("extra_patterns")
    @classmethod
    def _patterns(cls, patterns: dict[str, str]) -> dict[str, str]:
        """Named by key, never by value: an operator may paste a sample number into the regex."""
        for name, rx in patterns.items():
            if not re.fullmatch(r"[\w\u4e00-\u9fff]{1,32}", name):
                raise ValueError("extra_patterns: names are 1-32 letters, digits, _ or Chinese characters")
            try:
                compiled = re.compile(rx)
            except re.error:
                raise ValueError(f"extra_patterns.{name}: not a valid regular expression") from None
            if compiled.fullmatch(""):
                raise ValueError(f"extra_patterns.{name}: matches the empty string")
        return patterns


class AdminConfig(_Section):
    token: str = ""  # the admin API is off while this is empty


class ConsoleConfig(_Section):
    """The agent console at ``/console`` (bot/console/): sign-in, inbox, conversations, FAQ curation, dashboard."""

    enabled: bool = True  # served by gateways; without accounts the sign-in page says how to add one
    agents_path: str = "config/agents.yaml"  # accounts and argon2 hashes (git-ignored): python -m bot console add-agent
    canned_path: str = "config/canned.yaml"  # canned answers offered in the reply box
    session_idle_s: int = Field(8 * 3600, gt=0)  # a console session unused this long ends
    session_max_s: int = Field(24 * 3600, gt=0)  # every session ends this long after sign-in, used or not
    cookie_secure: Literal["auto", "always", "never"] = "auto"  # auto: Secure when the request came over HTTPS
    login_failures: int = Field(5, gt=0)  # failed sign-ins per account name, and 4x that per address, per window
    login_window_s: int = Field(900, gt=0)  # ... then sign-in answers 429 until the window passes
    faq_poll_s: float = Field(5.0, gt=0)  # how often each process looks for FAQ changes made on another


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    access: bool = False  # one line per HTTP request (costs a turn ~8%); /metrics counts requests either way


class ArchiveConfig(_Section):
    """The conversation archive (bot/archive/): every turn, redacted, in SQLite or PostgreSQL."""

    enabled: bool = True
    url: str = "sqlite:///.cache/archive.db"  # a relative sqlite path is under the project root; postgresql+psycopg://
    retention_days: int = Field(180, ge=0)  # rows older than this are deleted (at start, then hourly); 0 keeps all
    batch_size: int = Field(200, gt=0)  # rows per write
    flush_interval_s: float = Field(1.0, gt=0)  # the longest a row waits in memory before it is written
    buffer_max: int = Field(10000, gt=0)  # rows held in memory; past it new rows are dropped (and counted)

    @field_validator("url")
    @classmethod
    def _archive_scheme(cls, url: str) -> str:
        """Refused here, naming the key and not the URL (which may carry a password)."""
        if not url.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://", "postgres://")):
            raise ValueError("expected sqlite:///path or postgresql+psycopg://user@host:port/db")
        return url


class Config(_Section):
    server: ServerConfig = ServerConfig()
    state: StateConfig = StateConfig()
    hub: HubConfig = HubConfig()
    queue: QueueConfig = QueueConfig()
    api: ApiConfig = ApiConfig()
    faq: FaqConfig = FaqConfig()
    engine: EngineConfig = EngineConfig()
    web: WebConfig = WebConfig()
    wecom: WecomConfig = WecomConfig()
    dingtalk: DingtalkConfig = DingtalkConfig()
    dialogue: DialogueConfig = DialogueConfig()
    handoff: HandoffConfig = HandoffConfig()
    safety: SafetyConfig = SafetyConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    admin: AdminConfig = AdminConfig()
    console: ConsoleConfig = ConsoleConfig()
    logging: LoggingConfig = LoggingConfig()
    archive: ArchiveConfig = ArchiveConfig()

    @model_validator(mode="after")
    def _queue_needs_shared_state(self) -> Config:
        if self.queue.url and not self.queue.url.startswith(("amqp://", "amqps://")):
            raise ValueError("queue.url must be empty (in-process) or amqp://... / amqps://...")
        if self.queue.url and self.state.url.startswith("memory://"):
            raise ValueError("queue.url needs state.url in Redis: gateways and workers must share dedup and state")
        return self

    def resolve_path(self, path: str) -> Path:
        """Relative data paths are relative to the project root, not the cwd."""
        p = Path(path)
        return p if p.is_absolute() else ROOT / p


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not parts:
            continue
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: conflicts with another BOT__ variable")
        node[parts[-1]] = _parse_scalar(raw)
    return tree


def _parse_scalar(raw: str) -> Any:
    """Lists and mappings (``[a, b]``, ``{k: v}``) are YAML-parsed; everything else
    stays a string for the typed models to convert, so a token ``0042`` stays
    ``"0042"`` and ``BOT__X=`` clears a key."""
    if raw.strip()[:1] not in ("[", "{"):
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out




def _kind(value: Any) -> str:
    """What was given, never the value itself: a mistyped key (``secert``) or a value
    in the wrong place may be the very secret the operator meant to set."""
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if value is None:
        return "nothing"
    return {bool: "a boolean", int: "a number", float: "a number", str: "text"}.get(type(value), "a value")


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors(include_url=False, include_input=True):
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        lines.append(f"  {path}: {msg}; got {_kind(e.get('input'))}")
    return "invalid configuration:\n" + "\n".join(lines)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what, without PyYAML's snippet of the offending line (it may hold a secret)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "cannot be parsed"
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def load_config(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    environ = os.environ if environ is None else environ
    path = path or environ.get("BOT_CONFIG") or DEFAULT_CONFIG
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping of sections")
    data = _merge(data, _env_overrides(environ))
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
