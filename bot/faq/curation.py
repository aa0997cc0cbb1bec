"""FAQ curation from the agent console: answers edited, paraphrases added or removed, curated answers pinned.

Why a change log rather than writing config/faq.yaml: every gateway and worker must answer from the same FAQ
without a restart, a file on one host is not shared by the others, and the product owner wants to see who
changed what. So each change is one append-only row in the archive database (``faq_changes``) and the FAQ a
process answers from is the base file with the log folded over it in id order. Each process reloads when the
log grows: a poll every ``console.faq_poll_s`` (a cheap count and max id) and at once on the console feed's
``faq`` event, which the process that made a change publishes.

Building an index takes about a second (jieba, BM25, TF-IDF fitting), so it runs on a thread and only the swap
(``services.answerer.faq`` and the output filter's operator texts) happens on the event loop; reloads that
arrive while one runs are served by the next one (one at a time, the latest log wins). The jieba dictionary is
shared by every index (bot/faq/analyzer.py), so a reload costs the new index only and the old one is freed.

A database that is away leaves the current FAQ in place: writes raise :class:`CurationUnavailable` (the page
says so) and the poll logs one warning per outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, insert, select, update

from bot.archive.schema import faq_changes
from bot.faq.index import FaqIndex
from bot.faq.model import FaqEntry
from bot.text import CJK, normalize

if TYPE_CHECKING:
    from bot.archive.db import ArchiveDb
    from bot.services import Services

log = logging.getLogger(__name__)

ACTIONS = ("edit_answer", "add_paraphrase", "remove_paraphrase", "pin", "unpin")
PIN_PREFIX = "pin-"
PIN_CATEGORY = "curated"
ANSWER_CHARS = (1, 2000)
PHRASE_CHARS = (2, 200)  # a paraphrase or a pinned question
AGENT_CHARS = (1, 128)
HISTORY_MAX = 1000
FEED_KIND = "faq"
POLL_DOWN_MAX_S = 60.0  # the longest pause between polls while the database is away

# C0 and C1 controls but tab, newline and carriage return (handled below); zero-width and bidirectional
# controls too, which would make two identical-looking questions differ or turn an answer's text around.
_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200c\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class FaqChange:
    id: int
    at: dt.datetime  # UTC
    agent: str
    action: str  # one of ACTIONS
    faq_id: str
    text: str  # the new answer or the paraphrase; pin: the answer; unpin: ""
    question: str | None  # pin: the question customers keep asking

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at.isoformat(), "agent": self.agent, "action": self.action,
                "faq_id": self.faq_id, "text": self.text, "question": self.question}


class CurationUnavailable(Exception):
    """No archive, or its database cannot be reached now: the change was not made."""


class InvalidChange(ValueError):
    """A text out of bounds or not valid Unicode; the message is for the agent and never quotes the text."""


# ---------------------------------------------------------------------------------------------- validation


def clean_text(value: object, label: str, bounds: tuple[int, int], *, multiline: bool = False) -> str:
    """What an agent typed, made safe to show customers: lone surrogates refused (no valid text has them),
    control characters stripped, line breaks kept only in answers, then the length checked."""
    if not isinstance(value, str):
        raise InvalidChange(f"{label}须为文本")
    if _SURROGATE.search(value):
        raise InvalidChange(f"{label}含有无效字符")
    text = _CONTROLS.sub("", value.replace("\r\n", "\n").replace("\r", "\n"))
    if multiline:
        text = "\n".join(line.rstrip() for line in text.replace("\t", " ").split("\n")).strip()
        text = re.sub(r"\n{3,}", "\n\n", text)
    else:
        text = " ".join(text.split())
    low, high = bounds
    if not low <= len(text) <= high:
        raise InvalidChange(f"{label}须为 {low}-{high} 个字符")
    return text


def phrasing_key(text: str) -> str:
    """Two phrasings that differ only in width, case, punctuation or spaces are the same one."""
    return normalize(text).replace(" ", "")


def is_pin(faq_id: str) -> bool:
    return faq_id.startswith(PIN_PREFIX)


# ---------------------------------------------------------------------------------------------- folding


def fold(base: Sequence[FaqEntry], changes: Iterable[FaqChange]) -> tuple[list[FaqEntry], list[FaqChange]]:
    """The base entries with ``changes`` applied in id order; also the changes skipped because their entry is
    not there (the base file lost it, or it was unpinned)."""
    current: dict[str, FaqEntry] = {e.id: e for e in base}
    skipped: list[FaqChange] = []
    for change in sorted(changes, key=lambda c: c.id):
        if change.action == "pin":
            current[change.faq_id] = FaqEntry(
                id=change.faq_id, category=PIN_CATEGORY, question=change.question or change.text,
                answer=change.text, lang="zh" if CJK.search(change.question or "") else "en")
            continue
        entry = current.get(change.faq_id)
        if entry is None:
            skipped.append(change)
            continue
        if change.action == "edit_answer":
            current[entry.id] = replace(entry, answer=change.text)
        elif change.action == "add_paraphrase":
            known = {phrasing_key(p) for p in (entry.question, *entry.paraphrases)}
            if phrasing_key(change.text) not in known:
                current[entry.id] = replace(entry, paraphrases=(*entry.paraphrases, change.text))
        elif change.action == "remove_paraphrase":
            key = phrasing_key(change.text)
            current[entry.id] = replace(entry, paraphrases=tuple(p for p in entry.paraphrases
                                                                 if phrasing_key(p) != key))
        elif change.action == "unpin" and is_pin(entry.id):
            del current[entry.id]
        else:  # an action a newer version wrote: this one leaves the entry as it is
            skipped.append(change)
    return list(current.values()), skipped


# ---------------------------------------------------------------------------------------------- database
# These run on the archive's thread (ArchiveWriter.run), never on the event loop.


def _change(row: Any) -> FaqChange:
    at = row["created_at"]
    if at.tzinfo is None:  # SQLite keeps no zone; every row is written in UTC
        at = at.replace(tzinfo=dt.UTC)
    return FaqChange(id=int(row["id"]), at=at, agent=row["agent"], action=row["action"], faq_id=row["faq_id"],
                     text=row["text"], question=row["question"])


def _insert(db: ArchiveDb, row: dict[str, Any]) -> int:
    """One change; a pin's entry id is its own row id, set in the same transaction."""
    with db.engine.begin() as conn:
        (change_id,) = conn.execute(insert(faq_changes).values(**row)).inserted_primary_key
        if row["action"] == "pin":
            conn.execute(update(faq_changes).where(faq_changes.c.id == change_id)
                         .values(faq_id=f"{PIN_PREFIX}{change_id}"))
    return int(change_id)


def _read_log(db: ArchiveDb, known: tuple[int, int] | None) -> tuple[tuple[int, int], list[FaqChange]] | None:
    """The whole log, unless its (count, max id) is ``known``: the log is append-only, so a row committed late
    with a smaller id (PostgreSQL sequences) still changes the count."""
    with db.engine.connect() as conn:
        count, top = conn.execute(select(func.count(), func.coalesce(func.max(faq_changes.c.id), 0))
                                  .select_from(faq_changes)).one()
        if known is not None and (int(count), int(top)) == known:
            return None
        rows = [_change(r._mapping) for r in conn.execute(select(faq_changes).order_by(faq_changes.c.id))]
    return (len(rows), max((c.id for c in rows), default=0)), rows


def _history(db: ArchiveDb, limit: int, faq_id: str | None) -> list[FaqChange]:
    stmt = select(faq_changes)
    if faq_id is not None:
        stmt = stmt.where(faq_changes.c.faq_id == faq_id)
    with db.engine.connect() as conn:
        return [_change(r._mapping) for r in conn.execute(stmt.order_by(faq_changes.c.id.desc()).limit(limit))]


# ---------------------------------------------------------------------------------------------- the service


class FaqCuration:
    def __init__(self, services: Services) -> None:
        """The base is the FAQ this process loaded from ``config.faq.path`` at start (the dialogue graph was
        checked against it); its synonym table is reused, so every index built here reads text the same way."""
        self.services = services
        self.config = services.config
        self.archive = services.archive
        base = services.answerer.faq
        self._base: tuple[FaqEntry, ...] = tuple(base.entries)
        self._synonyms = base.analyzer.synonyms
        self._entries: list[FaqEntry] = list(self._base)
        self._applied: tuple[int, int] = (0, 0)  # (count, max id) of the log the current index was built from
        self._changes_known: list[FaqChange] = []  # that log
        self._lock = asyncio.Lock()
        self._requested = 0  # reload requests made, and the latest one a finished reload covered
        self._served = 0
        self._down = False
        self._warned: set[str] = set()
        self._poll: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._origin = uuid.uuid4().hex[:12]  # this process's changes come back through the feed: not reloaded

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Answer from the curated FAQ from the first turn; a database that is away leaves the base one (the
        poll picks the log up once it is back)."""
        with contextlib.suppress(CurationUnavailable):
            await self.reload()
        feed = getattr(self.services, "feed", None)
        if feed is not None:
            feed.listen(self._on_feed)
        if self._poll is None:
            self._poll = asyncio.get_running_loop().create_task(self._poll_loop(), name="kefu-faq-curation")

    async def close(self) -> None:
        self._closed = True
        tasks = [t for t in (self._poll, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._poll = None
        self._tasks.clear()

    async def _poll_loop(self) -> None:
        """Every ``faq_poll_s``; while the database is away, less and less often (each try may wait for a
        connect timeout on the archive's thread, which the turn archive needs too)."""
        every = self.config.console.faq_poll_s
        wait = every
        while not self._closed:
            await asyncio.sleep(wait)
            try:
                await self.reload()
            except CurationUnavailable:
                pass  # logged once per outage in _call
            except Exception:  # the poll must outlive a bad build; the current FAQ stays
                log.exception("faq curation: reload failed; keeping the current FAQ")
            wait = min(max(every, POLL_DOWN_MAX_S), wait * 2) if self._down else every

    def _on_feed(self, event: Any) -> None:
        """Another process changed the FAQ: reload now rather than at the next poll (in a task of its own, so
        the feed's reader is not held up by a build)."""
        if getattr(event, "kind", None) != FEED_KIND or self._closed:
            return
        if (getattr(event, "data", None) or {}).get("origin") == self._origin:
            return  # applied before it was announced
        task = asyncio.get_running_loop().create_task(self._quiet_reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _quiet_reload(self) -> None:
        try:
            await self.reload()
        except CurationUnavailable:
            pass
        except Exception:
            log.exception("faq curation: reload failed; keeping the current FAQ")

    # ------------------------------------------------------------------ reading
    def entries(self) -> list[FaqEntry]:
        """The entries this process answers from now (base with the log applied, pinned ones included)."""
        return list(self._entries)

    def get(self, faq_id: str) -> FaqEntry | None:
        return next((e for e in self._entries if e.id == faq_id), None)

    def search(self, query: str, k: int = 10) -> list[tuple[FaqEntry, float]]:
        """What the customer would get for ``query``, best first, then entries whose id, question, paraphrases
        or answer contain it literally (an agent looking for "400-820" wants the answers that give it)."""
        query = query.strip() if isinstance(query, str) else ""
        if not query or _SURROGATE.search(query) or k <= 0:
            return []
        index = self.services.answerer.faq
        found = [(hit.entry, hit.score) for hit in index.search(query, k=k)]
        seen = {entry.id for entry, _ in found}
        needle = query.lower()
        for entry in self._entries:
            if len(found) >= k:
                break
            texts = (entry.id, entry.question, entry.answer, *entry.paraphrases)
            if entry.id not in seen and any(needle in t.lower() for t in texts):
                found.append((entry, 0.0))
                seen.add(entry.id)
        return found[:k]

    async def history(self, limit: int = 100, faq_id: str | None = None) -> list[FaqChange]:
        """Newest first: who changed what, when."""
        limit = max(1, min(int(limit), HISTORY_MAX))
        return await self._call(lambda db: _history(db, limit, faq_id))

    # ------------------------------------------------------------------ writing
    async def edit_answer(self, faq_id: str, answer: str, agent: str) -> FaqChange:
        text = clean_text(answer, "答案", ANSWER_CHARS, multiline=True)
        await self._require(faq_id)
        return await self._record("edit_answer", faq_id, text, None, agent)

    async def add_paraphrase(self, faq_id: str, text: str, agent: str) -> FaqChange:
        phrasing = clean_text(text, "问法", PHRASE_CHARS)
        entry = await self._require(faq_id)
        if phrasing_key(phrasing) in {phrasing_key(p) for p in (entry.question, *entry.paraphrases)}:
            raise InvalidChange("该问法已存在")
        return await self._record("add_paraphrase", faq_id, phrasing, None, agent)

    async def remove_paraphrase(self, faq_id: str, text: str, agent: str) -> FaqChange:
        phrasing = clean_text(text, "问法", PHRASE_CHARS)
        entry = await self._require(faq_id)
        key = phrasing_key(phrasing)
        if not any(phrasing_key(p) == key for p in entry.paraphrases):
            raise KeyError(faq_id)  # no such paraphrase on this entry (the question itself stays)
        return await self._record("remove_paraphrase", faq_id, phrasing, None, agent)

    async def pin(self, question: str, answer: str, agent: str) -> FaqChange:
        asked = clean_text(question, "问题", PHRASE_CHARS)
        text = clean_text(answer, "答案", ANSWER_CHARS, multiline=True)
        return await self._record("pin", PIN_PREFIX, text, asked, agent)

    async def unpin(self, faq_id: str, agent: str) -> FaqChange:
        if isinstance(faq_id, str) and not is_pin(faq_id) and faq_id in {e.id for e in self._base}:
            raise InvalidChange("只能取消置顶的答案")
        await self._require(faq_id)
        return await self._record("unpin", faq_id, "", None, agent)

    async def _require(self, faq_id: str) -> FaqEntry:
        """The entry, also one pinned on another process a moment ago (reloaded once before saying no)."""
        if not isinstance(faq_id, str):
            raise KeyError(faq_id)
        entry = self.get(faq_id)
        if entry is None:
            self._need_archive()
            await self.reload()
            entry = self.get(faq_id)
        if entry is None:
            raise KeyError(faq_id)
        return entry

    async def _record(self, action: str, faq_id: str, text: str, question: str | None, agent: str) -> FaqChange:
        who = clean_text(agent, "坐席", AGENT_CHARS)
        at = dt.datetime.now(dt.UTC)
        row = {"created_at": at, "agent": who, "action": action, "faq_id": faq_id, "question": question,
               "text": text}
        change_id = await self._call(lambda db: _insert(db, row))
        if action == "pin":
            faq_id = f"{PIN_PREFIX}{change_id}"
        change = FaqChange(id=change_id, at=at, agent=who, action=action, faq_id=faq_id, text=text,
                           question=question)
        log.info("faq curation: change %d: %s on %s", change_id, action, faq_id)
        try:
            await self.reload()
        except CurationUnavailable:  # written but not read back: apply what we know, the poll catches up
            async with self._lock:
                await self._apply([*self._changes_known, change], None)
        await self._announce(change)
        return change

    async def _announce(self, change: FaqChange) -> None:
        feed = getattr(self.services, "feed", None)
        if feed is None:
            return
        try:
            await feed.publish(FEED_KIND, "", action=change.action, faq_id=change.faq_id, agent=change.agent,
                               origin=self._origin)
        except Exception as exc:  # the other processes still see it at their next poll
            log.warning("faq curation: could not announce change %d (%s)", change.id, type(exc).__name__)

    # ------------------------------------------------------------------ applying
    async def reload(self) -> bool:
        """Read the log and apply it when it changed; True when a new index was swapped in. Callers that
        arrive while a reload runs wait for the next one, which reads the log after they asked (so a change
        written before asking is in it); any number of them share that one."""
        self._requested += 1
        wanted = self._requested
        async with self._lock:
            if self._served >= wanted:
                return False
            target = self._requested
            known = self._applied
            result = await self._call(lambda db: _read_log(db, known))
            changed = False
            if result is not None:
                signature, changes = result
                await self._apply(changes, signature)
                changed = True
            self._served = target
            return changed

    async def _apply(self, changes: list[FaqChange], signature: tuple[int, int] | None) -> None:
        entries, skipped = fold(self._base, changes)
        for change in skipped:
            if change.faq_id not in self._warned:
                self._warned.add(change.faq_id)
                log.warning("faq curation: changes to FAQ entry %s skipped: it is not in %s (the file changed?)",
                            change.faq_id, self.config.faq.path)
        cfg = self.config.faq
        index = await asyncio.to_thread(FaqIndex, entries, cfg.threshold, self._synonyms, floor=cfg.floor,
                                        margin=cfg.margin, reranking=self.services.answerer.faq.reranking)
        self._swap(index, entries)
        self._changes_known = changes
        if signature is not None:
            self._applied = signature

    def _swap(self, index: FaqIndex, entries: list[FaqEntry]) -> None:
        """On the loop, between turns' awaits: the next FAQ lookup of any turn here uses the new index."""
        self.services.answerer.faq = index
        self.services.faq = index
        self._entries = entries
        output = getattr(self.services, "output_filter", None)
        if output is not None:
            output.set_operator_texts([e.answer for e in entries] + list(self.config.privacy.keep))

    # ------------------------------------------------------------------ the database
    def _need_archive(self) -> None:
        if self.archive is None:
            raise CurationUnavailable("存档数据库未启用，FAQ 修改不可用")

    async def _call(self, fn: Any) -> Any:
        from bot.archive.writer import ArchiveUnavailable

        self._need_archive()
        assert self.archive is not None
        try:
            result = await self.archive.run(fn)
        except ArchiveUnavailable as exc:
            if not self._down:
                self._down = True
                log.warning("faq curation: the archive database cannot be reached (%s); the FAQ stays as it is "
                            "and changes are refused until it is back", exc)
            raise CurationUnavailable("存档数据库暂时无法连接，FAQ 修改未保存，请稍后再试") from None
        if self._down:
            self._down = False
            log.info("faq curation: the archive database answers again")
        return result
