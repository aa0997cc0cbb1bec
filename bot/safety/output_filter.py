"""The output filter: what the bot is about to say, checked before a customer sees it.

A model can be talked into saying what it must not (the input filter stops
most attempts, not all), can repeat its own instructions, and can invent a
phone number that belongs to somebody else. So every reply of a turn is checked
after the dialogue decided it, and every streamed token before it is shown:

``blocklist``
    the operator's blocked terms (:class:`bot.safety.blocklist.Blocklist`, the
    same normalisation as the input filter), in every reply whatever its source.
``leak``
    the system prompt or internal instructions coming back: any run of
    ``leak_ngram`` units (a Chinese character, an ASCII word) shared with the
    internal texts after normalisation (so spaces, punctuation, full-width and
    traditional characters do not hide it), or a marker phrase (``系统提示词``).
``pii``
    a phone, resident ID, bank card or email that the customer did not give in
    this conversation (their messages now and in the history, the caller's
    context) and that is not the company's own (``allowed_pii``, and any
    value in ``operator_texts``: the FAQ answers the model is given as
    reference and may well repeat).
``length``
    longer than ``max_chars``: a runaway generation.

Leak, PII and length are checked in model-written replies; operator-written
ones (FAQ answers, dialogue texts: ``trusted_sources``) only against the
blocklist, since an FAQ answer may well carry the company's phone number. An
unsafe reply is replaced by a fixed apology (``messages.safety_fallback``), in
the state's history too (the next prompt must not carry it back), logged by
category only and counted in ``kefu_safety_verdicts_total{stage="output"}``.

Streaming: :class:`StreamGuard` wraps the turn's :data:`StreamFn` and holds
back a tail (at least ``tail_chars`` significant characters and
``leak_ngram`` units, never cutting inside a number or an email) so a blocked
term, a leaked phrase or an invented number is seen whole before any of it
could be shown. Once something unsafe is seen it forwards nothing more; the
final reply (replaced by then) tells the channel what the answer is. Channels
already treat the final reply as the truth: the widget repaints the bubble
with it, WeCom's AI-bot stream and DingTalk's card finish with it.

Wiring (two steps sharing one checker)::

    out = OutputFilter(config.safety.output, metrics, blocklist=...,
                       internal=internal_texts(config.engine.system_prompt, graph),
                       operator_texts=[entry.answer for entry in faq.by_id.values()])
    steps = [<input filter>, out.stream_step(), Dialogue(handler), out]
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from bot import messages
from bot.answer import CONTEXT_NOTE, StreamFn
from bot.metrics import Metrics
from bot.pipeline import TurnContext
from bot.privacy.pii import find_pii as default_find_pii
from bot.privacy.pii import redact
from bot.safety.normalize import Normalized, is_word_char, normalize
from bot.state import DialogueState, HistoryTurn
from bot.types import Reply

if TYPE_CHECKING:
    from bot.config import SafetyOutputConfig

log = logging.getLogger(__name__)

STAGE = "output"
ACTION = "replace"
BLOCKLIST, LEAK, PII, LENGTH = "blocklist", "leak", "pii", "length"
KNOWLEDGE_HEADER = "参考资料（仅在相关时使用）"  # bot/answer.py puts FAQ entries under it in the system message
_UNIT = re.compile(r"[a-z0-9]+|[^\W_]")  # in normalised text: an ASCII word or number, or one other letter
_RUN = frozenset("._%+-@")  # with ASCII letters and digits: one run (a number, an email); never cut inside
LOOKBACK = 256  # characters before the newly streamed text that are checked again with it
CUSTOMER_ROLES = frozenset({"user", "agent"})  # whose words may be repeated back; never the bot's own
DIGESTS = "pii"  # a user history turn's meta: keyed digests of the personal data in it (the text is redacted)


class BlocklistLike(Protocol):
    def find(self, text: str | Normalized) -> Sequence[Any]: ...


PiiFinder = Callable[[str], Iterable[Any]]  # found items with ``kind`` and ``value`` (bot.privacy.pii.find_pii)


@dataclass(frozen=True, slots=True)
class Finding:
    """Why a text is unsafe; never any of the text itself (it may be the very thing to keep out of logs)."""

    category: str  # blocklist | leak | pii | length
    kind: str = ""  # pii: phone | id | card | email ...; leak: ngram | marker


@dataclass(frozen=True, slots=True)
class Given:
    """Personal data the customer gave in this conversation: canonical values seen in text this turn, and
    keyed digests of what earlier turns held (their stored text is redacted, bot/privacy/pii.py)."""

    values: frozenset[str] = frozenset()
    digests: frozenset[str] = frozenset()
    key: bytes = b""

    def __contains__(self, canonical: object) -> bool:
        if not isinstance(canonical, str):
            return False
        return canonical in self.values or (bool(self.digests) and digest(self.key, canonical) in self.digests)


def digest(key: bytes, canonical: str) -> str:
    """A keyed digest of one value: without the key a phone number cannot be found from it by trying them all."""
    return hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()[:32]


def internal_texts(system_prompt: str, graph: Any = None) -> list[str]:
    """What the model is told and the customer must never read back: the system prompt, the fixed
    instructions bot/answer.py adds, and the instruction templates of the dialogue graph's ``llm`` nodes
    (a collect node's prompt is a question to the customer, not an instruction)."""
    texts = [system_prompt, CONTEXT_NOTE]
    nodes = getattr(graph, "nodes", None) or {}
    for node in nodes.values():
        if getattr(node, "kind", "") == "llm" and node.prompt is not None:
            texts += [t for t in node.prompt.by_lang.values() if t]
    return [t for t in texts if t and t.strip()]


def _units(norm: Normalized) -> list[str]:
    return _UNIT.findall(norm.text)


def _significant(c: str) -> bool:
    return not (c.isspace() or unicodedata.category(c)[0] in "PSZC")


def _in_run(c: str) -> bool:
    return is_word_char(c) or c in _RUN


def canonical_pii(kind: str, value: str) -> str:
    """One spelling of a personal-data value, so ``138 0013 8000``, ``+86 13800138000`` and
    ``13800138000`` compare equal (an email by its lower case)."""
    if kind == "email" or "@" in value:
        return unicodedata.normalize("NFKC", value).strip().lower()
    digits = "".join(c for c in unicodedata.normalize("NFKC", value) if c.isdigit() or c in "xX").upper()
    for prefix in ("0086", "86"):
        if kind == "mobile" and digits.startswith(prefix) and len(digits) - len(prefix) == 11:
            return digits[len(prefix):]
        if kind == "landline" and digits.startswith(prefix):
            return "0" + digits[len(prefix):]
    return digits


class LeakDetector:
    """Runs of ``n`` units shared with the internal texts, and marker phrases, in normalised text."""

    def __init__(self, internal: Iterable[str], *, n: int, markers: Iterable[str] = ()) -> None:
        self.n = n
        self._grams: set[tuple[str, ...]] = set()
        for text in internal:
            units = _units(normalize(text))
            self._grams.update(tuple(units[i : i + n]) for i in range(len(units) - n + 1))
        self._markers = [m for m in (normalize(m).squeezed for m in (*markers, KNOWLEDGE_HEADER)) if m]

    def find(self, norm: Normalized) -> str | None:
        if any(m in norm.squeezed for m in self._markers):
            return "marker"
        if self._grams:
            units = _units(norm)
            n = self.n
            for i in range(len(units) - n + 1):
                if tuple(units[i : i + n]) in self._grams:
                    return "ngram"
        return None


class OutputChecker:
    """The four checks on one text; shared by the reply step and the stream guard."""

    def __init__(
        self,
        cfg: SafetyOutputConfig,
        *,
        internal: Iterable[str] = (),
        blocklist: BlocklistLike | None = None,
        find_pii: PiiFinder | None = None,
        operator_texts: Iterable[str] = (),
    ) -> None:
        self.cfg = cfg
        self.blocklist = blocklist
        self.find_pii: PiiFinder = find_pii or default_find_pii
        self.leaks = LeakDetector(internal, n=cfg.leak_ngram, markers=cfg.leak_markers)
        # The company's own numbers and addresses: configured, or in what the operator wrote (FAQ answers the
        # model is given as reference and may well repeat)
        self.allowed = frozenset(self._canonical_all(cfg.allowed_pii)) | frozenset(self.values_in(operator_texts))
        self.trusted = frozenset(cfg.trusted_sources)
        # Without a configured key digests still work within this process; after a move to another worker
        # an earlier turn's number is unknown again and repeating it is replaced (safe, if less helpful).
        self.key = cfg.pii_secret.encode() if cfg.pii_secret else secrets.token_bytes(32)

    def set_operator_texts(self, texts: Iterable[str]) -> None:
        """The operator's texts changed (FAQ curation, bot/faq/curation.py): a curated answer that gives the
        company's number must not read as leaked personal data in the next turn, on this process."""
        self.allowed = frozenset(self._canonical_all(self.cfg.allowed_pii)) | frozenset(self.values_in(texts))

    def _canonical_all(self, texts: Iterable[str]) -> set[str]:
        """Canonical values of the personal data in ``texts`` (an allowed value may also be written bare)."""
        out: set[str] = set()
        for text in texts:
            found = list(self.find_pii(text))
            out.update(canonical_pii(_kind(p), _value(p, text)) for p in found)
            if not found and text.strip():
                out.add(canonical_pii("", text))
        return out

    def values_in(self, texts: Iterable[str]) -> set[str]:
        out: set[str] = set()
        for text in texts:
            if text:
                out.update(canonical_pii(_kind(p), _value(p, text)) for p in self.find_pii(text))
        return out

    def given(self, ctx: TurnContext) -> Given:
        """Personal data the customer (or a person on our side) gave in this conversation: the values in this
        message, and the digests on earlier turns (their stored text is redacted, so scanning it finds none)."""
        texts = [ctx.event.text or "", ctx.event.context or ""]
        digests: set[str] = set()
        if ctx.state is not None:
            for turn in ctx.state.history:
                if turn.role in CUSTOMER_ROLES:
                    digests.update(str(d) for d in turn.meta.get(DIGESTS) or ())
        return Given(frozenset(self.values_in(texts)), frozenset(digests), self.key)

    def check(self, text: str, *, given: Given, source: str = "llm") -> Finding | None:
        norm = normalize(text)
        if self.blocklist is not None and self.blocklist.find(norm):
            return Finding(BLOCKLIST)
        if source in self.trusted:
            return None
        if len(text) > self.cfg.max_chars:
            return Finding(LENGTH)
        if (how := self.leaks.find(norm)) is not None:
            return Finding(LEAK, how)
        for p in self.find_pii(text):
            value = canonical_pii(_kind(p), _value(p, text))
            if value not in given and value not in self.allowed:
                return Finding(PII, _kind(p))
        return None

    def release_point(self, text: str) -> int:
        """How much of a partial answer may be shown: all but a tail of at least ``tail_chars``
        significant characters and ``leak_ngram`` units, cut outside any number or email."""
        need_chars, need_units = self.cfg.tail_chars, self.cfg.leak_ngram
        i, chars, units = len(text), 0, 0
        while i > 0 and (chars < need_chars or units < need_units):
            c = text[i - 1]
            if _significant(c):
                chars += 1
                if not is_word_char(c) or i == 1 or not is_word_char(text[i - 2]):
                    units += 1
            i -= 1
        while 0 < i < len(text) and _in_run(text[i - 1]) and _in_run(text[i]):
            i -= 1
        return i


def _kind(p: Any) -> str:
    return str(getattr(p, "kind", "") or "")


def _value(p: Any, text: str) -> str:
    value = getattr(p, "value", "") or ""
    if not value and hasattr(p, "start"):
        value = text[p.start : p.end]
    return str(value)


class StreamGuard:
    """A :data:`StreamFn` in front of the channel's: forwards only what has been checked and is followed by
    a held-back tail; after the first unsafe finding, nothing."""

    def __init__(self, checker: OutputChecker, downstream: StreamFn, given: Given | None = None) -> None:
        self.checker = checker
        self.downstream = downstream
        self.given = given or Given()
        self.blocked: Finding | None = None
        self._released = ""  # what the channel has been shown of the current answer
        self._checked = 0  # characters of the current answer checked so far

    def reset(self, given: Given) -> None:
        """A new attempt at the turn (a compare-and-set retry runs the steps again)."""
        self.given, self.blocked, self._released, self._checked = given, None, "", 0

    async def __call__(self, text_so_far: str, _delta: str) -> None:
        if self.blocked is not None:
            return
        if not text_so_far.startswith(self._released) or len(text_so_far) < self._checked:
            self._released, self._checked = "", 0  # the answer started again (offset 0 downstream)
        start = self._window_start(text_so_far)
        if len(text_so_far) > self.checker.cfg.max_chars:
            self.blocked = Finding(LENGTH)
        else:
            self.blocked = self.checker.check(text_so_far[start:], given=self.given)
        self._checked = len(text_so_far)
        if self.blocked is not None:
            return
        cut = self.checker.release_point(text_so_far)
        if cut <= len(self._released):
            return
        piece = text_so_far[len(self._released) : cut]
        self._released = text_so_far[:cut]
        await self.downstream(self._released, piece)

    def _window_start(self, text: str) -> int:
        """Where to check from: everything before was checked (with its own look-back) when it was the end;
        the start moves back out of any number or email so no fragment of one is judged alone."""
        i = max(0, self._checked - LOOKBACK)
        while 0 < i < len(text) and _in_run(text[i - 1]) and _in_run(text[i]):
            i -= 1
        return i


class GuardStream:
    """The step before the dialogue that puts a :class:`StreamGuard` in front of the turn's stream."""

    name = "safety_stream"

    def __init__(self, checker: OutputChecker) -> None:
        self.checker = checker

    async def run(self, ctx: TurnContext) -> None:
        if not self.checker.cfg.enabled:
            return
        given = self.checker.given(ctx)
        if isinstance(ctx.stream, StreamGuard):
            ctx.stream.reset(given)
        else:
            ctx.stream = StreamGuard(self.checker, ctx.stream, given)


class OutputFilter:
    """The step after the dialogue: each reply checked, an unsafe one replaced (reply and history)."""

    name = "safety_out"
    checks = True  # runs after the dialogue decided (bot/pipeline.py)

    def __init__(
        self,
        cfg: SafetyOutputConfig,
        metrics: Metrics,
        *,
        internal: Iterable[str] = (),
        blocklist: BlocklistLike | None = None,
        find_pii: PiiFinder | None = None,
        operator_texts: Iterable[str] = (),
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.checker = OutputChecker(cfg, internal=internal, blocklist=blocklist, find_pii=find_pii,
                                     operator_texts=operator_texts)

    def stream_step(self) -> GuardStream:
        return GuardStream(self.checker)

    def set_operator_texts(self, texts: Iterable[str]) -> None:
        """Replace the texts given as ``operator_texts`` (the stream guard shares the checker, so it sees them)."""
        self.checker.set_operator_texts(texts)

    async def run(self, ctx: TurnContext) -> None:
        if not self.cfg.enabled or not ctx.replies:
            return
        guard = ctx.stream if isinstance(ctx.stream, StreamGuard) else None
        # the guard's, taken before the dialogue: this message's values and every earlier turn's digests
        # (the dialogue only adds this turn, without digests yet, and may trim the oldest)
        given = guard.given if guard is not None else self.checker.given(ctx)
        out: list[Reply] = []
        replaced: list[tuple[str, str]] = []
        for reply in ctx.replies:
            finding = self.checker.check(reply.text, given=given, source=reply.source)
            if finding is None and guard is not None and guard.blocked is not None \
                    and reply.source not in self.checker.trusted:
                finding = guard.blocked  # what the customer was kept from seeing is not sent whole either
            if finding is None:
                out.append(reply)
                continue
            lang = ctx.event.lang or (ctx.state.lang if ctx.state is not None else None) or _lang_of(reply.text)
            text = messages.text("safety_fallback", lang)
            out.append(Reply(reply.to, text, in_reply_to=reply.in_reply_to, source="fallback", meta=reply.meta))
            replaced.append((reply.text, text))
            self.metrics.safety_verdicts.labels(STAGE, finding.category, ACTION).inc()
            log.warning("output filter replaced a %s reply to %s event %s: %s%s", reply.source,
                        ctx.event.ref.channel, ctx.event.id, finding.category,
                        f" ({finding.kind})" if finding.kind else "")
        if replaced:
            ctx.replies = tuple(out)
        if ctx.state is not None:
            state = _replace_in_history(ctx.state, replaced) if replaced else ctx.state
            ctx.state = self._remember_given(state, ctx)

    def _remember_given(self, state: DialogueState, ctx: TurnContext) -> DialogueState:
        """Keyed digests of the personal data in this message, on its history turn: the stored text is
        redacted, and a later answer may still repeat the customer's own number back to them."""
        values = self.checker.values_in([ctx.event.text or ""])
        if not values:
            return state
        history = list(state.history)
        for i in range(len(history) - 1, -1, -1):
            turn = history[i]
            if turn.role == "user" and turn.meta.get("id") == ctx.event.id:
                known = set(turn.meta.get(DIGESTS) or ())
                known.update(digest(self.checker.key, v) for v in values)
                meta = MappingProxyType({**turn.meta, DIGESTS: sorted(known)})
                history[i] = HistoryTurn(turn.role, turn.text, turn.ts, meta)
                return state.replace(history=tuple(history))
        return state


def _lang_of(text: str) -> str:
    from bot.text import detect_lang

    return detect_lang(text)


def _replace_in_history(state: DialogueState, replaced: Sequence[tuple[str, str]]) -> DialogueState:
    """The replaced replies' texts in the bot's latest history turns become the fallback as well."""
    history = list(state.history)
    for original, text in replaced:
        for i in range(len(history) - 1, -1, -1):
            turn = history[i]
            if turn.role == "assistant" and turn.text in (original, redact(original)):
                history[i] = HistoryTurn(turn.role, text, turn.ts, turn.meta)
                break
    return state.replace(history=tuple(history))
