"""The archive writer: turns are handed over in memory and written in batches by a background task.

``record`` never waits and never raises: a full buffer drops the row and counts it
(``kefu_archive_dropped_total{reason="buffer_full"}``). The task writes up to ``batch_size`` rows whenever
that many are waiting or ``flush_interval_s`` has passed, on a thread of its own (the database driver is
synchronous, see ``db.py``); a batch that fails is tried again a few times with backoff, then dropped and
counted (``write_failed``). A database that is away at start is tried again in the background with a
growing pause, logged once per outage; turns are answered all the while. ``close`` writes what is left
within a bound and counts the rest (``shutdown``). Rows older than ``retention_days`` are deleted after
connecting and then hourly.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from bot.archive.db import ArchiveDb, database_url, describe
from bot.archive.rows import feedback_row, turn_row
from bot.archive.schema import feedback, turns
from bot.config import ArchiveConfig
from bot.metrics import Metrics
from bot.pipeline import TurnContext
from bot.privacy import pii

log = logging.getLogger(__name__)

T = TypeVar("T")
TABLES = {"turns": turns, "feedback": feedback}
WRITE_ATTEMPTS = 3
WRITE_BACKOFF_S = 0.5  # doubled per attempt
CONNECT_BACKOFF_S = (1.0, 60.0)  # first and longest pause between connection attempts
RETENTION_EVERY_S = 3600.0
CLOSE_TIMEOUT_S = 10.0
_REDACTED = ("question", "answer")


class ArchiveUnavailable(Exception):
    """The archive database cannot be reached now (erasure must say so rather than report success)."""


def _redacted(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for name in _REDACTED:
        if out.get(name):
            out[name] = pii.redact(out[name])
    return out


def _write(db: ArchiveDb, table: str, rows: list[dict[str, Any]]) -> int:
    return db.insert(TABLES[table], [_redacted(r) for r in rows])


class ArchiveWriter:
    def __init__(self, cfg: ArchiveConfig, metrics: Metrics, root: Path) -> None:
        """Raises :class:`~bot.archive.db.ArchiveUrlError` for a URL that can never work (the caller makes it
        a ConfigError); an unreachable database is no error here."""
        self.cfg = cfg
        self.metrics = metrics
        self.url = database_url(cfg.url, root)
        self.where = describe(self.url)
        self._buffer: deque[tuple[str, dict[str, Any]]] = deque()
        self._inflight: list[tuple[str, dict[str, Any]]] = []
        self._db: ArchiveDb | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kefu-archive")
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closing = False
        self._next_connect = 0.0
        self._connect_wait = CONNECT_BACKOFF_S[0]
        self._down = False
        self._next_retention = 0.0
        self._dropped = {r: metrics.archive_dropped.labels(r) for r in ("buffer_full", "write_failed", "shutdown")}

    # ------------------------------------------------------------------ hand-over (on the turn's path)
    def after_turn(self, ctx: TurnContext) -> None:
        """The pipeline's after-deliver hook: one row per event, with its outcome."""
        row = feedback_row(ctx.event)
        if row is not None:
            self.record("feedback", row)
            return
        row = turn_row(ctx)
        if row is not None:
            self.record("turns", row)

    def record(self, table: str, row: dict[str, Any]) -> bool:
        """Take a row for writing; False when it was dropped (buffer full or closing). Never waits."""
        if self._closing:
            self._dropped["shutdown"].inc()
            return False
        if len(self._buffer) >= self.cfg.buffer_max:
            self._dropped["buffer_full"].inc()
            return False
        self._buffer.append((table, row))
        self._ensure_task()
        if len(self._buffer) >= self.cfg.batch_size:
            self._wake.set()
        return True

    @property
    def pending(self) -> int:
        return len(self._buffer) + len(self._inflight)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._ensure_task()

    def _ensure_task(self) -> None:
        if self._task is not None or self._closing:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: the rows wait for start() or close()
        self._task = loop.create_task(self._run(), name="kefu-archive-writer")

    async def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Write what is left (within ``timeout_s``), count what could not be, let the database go."""
        if self._closing:
            return
        self._closing = True
        self._stop.set()
        self._wake.set()
        try:
            async with asyncio.timeout(timeout_s):
                if self._task is not None:
                    await self._task
                else:
                    await self._drain(attempts=1)
        except TimeoutError:
            log.warning("archive: %d rows not written by shutdown", self.pending)
        finally:
            if self._task is not None and not self._task.done():
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
            left = self.pending
            if left:
                self._dropped["shutdown"].inc(left)
                self._buffer.clear()
                self._inflight = []
            db, self._db = self._db, None
            if db is not None:
                with contextlib.suppress(Exception):
                    await self._call(db.close)
            self._executor.shutdown(wait=False)

    async def _run(self) -> None:
        try:
            while not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.cfg.flush_interval_s)
                self._wake.clear()
                await self._drain(attempts=WRITE_ATTEMPTS)
                await self._retention_due()
            await self._drain(attempts=1)  # closing: what is left, once
        except asyncio.CancelledError:
            raise
        except Exception:  # never let the writer die silently
            log.exception("archive writer stopped")

    # ------------------------------------------------------------------ writing
    async def flush(self) -> None:
        """Write everything waiting now (tests, and the CLI)."""
        await self._drain(attempts=WRITE_ATTEMPTS)

    async def _drain(self, attempts: int) -> None:
        async with self._lock:
            while self._buffer:
                db = await self._connect()
                if db is None:
                    return  # rows wait (and the buffer bound counts what does not fit)
                batch = [self._buffer.popleft() for _ in range(min(self.cfg.batch_size, len(self._buffer)))]
                self._inflight = batch
                try:
                    written = await self._write_batch(db, attempts)
                finally:
                    self._inflight = []
                if not written:
                    return  # the rest waits for the next round rather than failing in a row

    async def _write_batch(self, db: ArchiveDb, attempts: int) -> bool:
        wait = WRITE_BACKOFF_S
        for attempt in range(1, attempts + 1):
            by_table: dict[str, list[dict[str, Any]]] = {}
            for table, row in self._inflight:  # read again each time: an erasure may have taken rows out
                by_table.setdefault(table, []).append(row)
            try:
                for table, rows in by_table.items():
                    await self._call(_write, db, table, rows)
                    self.metrics.archive_written.labels(table).inc(len(rows))
                    self._inflight = [item for item in self._inflight if item[0] != table]
                return True
            except Exception as exc:
                # the class only: a database error's text can quote the statement's parameters
                log.warning("archive: writing %d rows to %s failed (%s), attempt %d of %d", len(self._inflight),
                            self.where, type(exc).__name__, attempt, attempts)
                if attempt < attempts and not await self._pause(wait):
                    wait *= 2
                    continue
                break
        if self._inflight:
            log.error("archive: dropped %d rows that could not be written to %s", len(self._inflight), self.where)
            self._dropped["write_failed"].inc(len(self._inflight))
        return False

    async def _pause(self, seconds: float) -> bool:
        """Sleep, unless closing (True: closing, stop waiting)."""
        if self._closing:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        return self._closing

    async def _connect(self, *, force: bool = False) -> ArchiveDb | None:
        """The database, opened (and migrated) on first use; while it is away, tried again with a growing
        pause (at once when closing), logged at the start and the end of an outage."""
        if self._db is not None:
            return self._db
        if time.monotonic() < self._next_connect and not (self._closing or force):
            return None
        try:
            self._db = await self._call(ArchiveDb.open, self.url)
        except Exception as exc:
            if not self._down:
                log.error("archive: cannot open %s (%s); turns are still answered, rows wait in memory "
                          "(up to archive.buffer_max, then kefu_archive_dropped_total counts them); retrying",
                          self.where, type(exc).__name__)
                self._down = True
            self._next_connect = time.monotonic() + self._connect_wait
            self._connect_wait = min(CONNECT_BACKOFF_S[1], self._connect_wait * 2)
            return None
        log.info("archive: writing to %s%s", self.where, " again" if self._down else "")
        self._down, self._connect_wait = False, CONNECT_BACKOFF_S[0]
        return self._db

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    # ------------------------------------------------------------------ retention and erasure
    async def _retention_due(self) -> None:
        if self.cfg.retention_days <= 0 or self._db is None or time.monotonic() < self._next_retention:
            return
        self._next_retention = time.monotonic() + RETENTION_EVERY_S
        try:
            await self.apply_retention()
        except ArchiveUnavailable:
            self._next_retention = 0.0
        except Exception as exc:
            log.warning("archive: retention on %s failed (%s); again in an hour", self.where, type(exc).__name__)

    async def apply_retention(self, now: dt.datetime | None = None) -> int:
        """Delete rows older than ``retention_days`` (0 keeps everything); returns how many went."""
        db = await self._connect(force=True)
        if db is None:
            raise ArchiveUnavailable(self.where)
        removed = await self._call(db.delete_older_than, self.cfg.retention_days, now)
        if removed:
            log.info("archive: deleted %d rows older than %d days", removed, self.cfg.retention_days)
        return removed

    async def erase(self, conversation: str) -> int:
        """Every archived row of one conversation, also those still waiting to be written. Raises
        :class:`ArchiveUnavailable` when the database cannot be reached (the erasure is then not done)."""
        waiting = len(self._buffer)
        self._buffer = deque(item for item in self._buffer if item[1].get("conversation") != conversation)
        inflight = len(self._inflight)
        self._inflight = [item for item in self._inflight if item[1].get("conversation") != conversation]
        purged = waiting - len(self._buffer) + inflight - len(self._inflight)
        db = await self._connect(force=True)
        if db is None:
            raise ArchiveUnavailable(self.where)
        try:
            # on the writer's thread: after a batch being written now, so that batch is erased too
            return purged + await self._call(db.erase, conversation)
        except Exception as exc:
            raise ArchiveUnavailable(f"{self.where} ({type(exc).__name__})") from None

    async def run(self, fn: Callable[[ArchiveDb], T]) -> T:
        """``fn(db)`` on the archive's own thread, for the console's reads and its FAQ change log (a blocking
        database call never runs on the event loop). Raises :class:`ArchiveUnavailable` when the database
        cannot be reached or the call fails; only the error's class is kept (its text can quote parameters)."""
        db = await self._connect(force=True)
        if db is None:
            raise ArchiveUnavailable(self.where)
        try:
            return await self._call(fn, db)
        except Exception as exc:
            raise ArchiveUnavailable(f"{self.where} ({type(exc).__name__})") from None

    async def open_db(self) -> ArchiveDb:
        """The database for readers in this process (tests, admin tools)."""
        db = await self._connect(force=True)
        if db is None:
            raise ArchiveUnavailable(self.where)
        return db
