"""The archive's database work, synchronous (it runs on the writer's own thread, never on the event loop).

A sync engine in a thread rather than an async engine: the writes are batched and off the turn's path, so a
thread costs nothing a turn would feel; SQLite needs no extra async driver (aiosqlite); Alembic is sync
anyway; and one code path serves both backends.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Table, create_engine, delete, event, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError

from bot.archive import migrate
from bot.archive.schema import feedback, turns
from bot.logsafe import redact_url

CONNECT_TIMEOUT_S = 5


class ArchiveUrlError(ValueError):
    """``archive.url`` cannot be used; the message names the host, never the password."""


def database_url(url: str, root: Path) -> URL:
    """The URL SQLAlchemy gets: ``postgres(ql)://`` uses psycopg 3 (the driver we ship), a relative SQLite path
    is under the project root (not the cwd) and its directory is created."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is no number
        raise ArchiveUrlError(f"archive.url {redact_url(url)} is not a database URL") from None
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ArchiveUrlError("archive.url: an in-memory SQLite archive would keep nothing; name a file")
        path = Path(parsed.database)
        path = path if path.is_absolute() else root / path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArchiveUrlError(f"archive.url: cannot create {path.parent} ({exc.strerror})") from None
        parsed = parsed.set(database=str(path))
    elif parsed.drivername != "postgresql+psycopg":
        raise ArchiveUrlError(f"archive.url {redact_url(url)}: only sqlite and postgresql+psycopg are supported")
    return parsed


def describe(url: URL) -> str:
    """What a log line may say about the database: backend and host or file, never the password."""
    if url.drivername == "sqlite":
        return f"sqlite file {url.database}"
    return f"{url.get_backend_name()} at {url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"


def open_engine(url: URL) -> Engine:
    if url.drivername == "sqlite":
        engine = create_engine(url, connect_args={"timeout": CONNECT_TIMEOUT_S})

        @event.listens_for(engine, "connect")
        def _wal(dbapi_connection: Any, _record: Any) -> None:
            # WAL: an export (a reader) never blocks the hub writing; NORMAL sync is durable enough with WAL.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(url, pool_size=2, max_overflow=2, pool_pre_ping=True, pool_recycle=1800,
                         connect_args={"connect_timeout": CONNECT_TIMEOUT_S})


class ArchiveDb:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = (postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert)

    @classmethod
    def open(cls, url: URL, *, migrate_schema: bool = True) -> ArchiveDb:
        engine = open_engine(url)
        try:
            if migrate_schema:
                migrate.upgrade(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    def insert(self, table: Table, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert-or-ignore on the event's unique key: a redelivered or resent event is stored once.
        Returns the rows new to the table."""
        if not rows:
            return 0
        stmt = self._insert(table).on_conflict_do_nothing(index_elements=["channel", "tenant", "event_id"])
        with self.engine.begin() as conn:
            result = conn.execute(stmt, list(rows))
        return result.rowcount if result.rowcount is not None and result.rowcount >= 0 else len(rows)

    def delete_older_than(self, days: int, now: dt.datetime | None = None) -> int:
        if days <= 0:
            return 0
        cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=days)
        removed = 0
        with self.engine.begin() as conn:
            for table in (turns, feedback):
                removed += conn.execute(delete(table).where(table.c.created_at < cutoff)).rowcount or 0
        return removed

    def erase(self, conversation: str) -> int:
        """Every turn and vote of one conversation (the right to erasure)."""
        removed = 0
        with self.engine.begin() as conn:
            for table in (turns, feedback):
                removed += conn.execute(delete(table).where(table.c.conversation == conversation)).rowcount or 0
        return removed

    def count(self, table: Table) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())

    def rows(self, table: Table, **where: Any) -> list[dict[str, Any]]:
        """For admin tools and tests: rows matching column == value, oldest first."""
        stmt = select(table)
        for name, value in where.items():
            stmt = stmt.where(table.c[name] == value)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt.order_by(table.c.id))]

    def stream(self, stmt: Any, batch: int = 1000) -> Iterator[dict[str, Any]]:
        with self.engine.connect() as conn:
            for row in conn.execution_options(yield_per=batch).execute(stmt):
                yield dict(row._mapping)

    def latest_votes(self) -> dict[tuple[str, str, str], str]:
        """(channel, tenant, rated event id) -> the last vote on that turn, ``up`` or ``down``; a vote taken back
        (``none``) leaves the turn unrated. For the training export and the A/B report alike."""
        latest: dict[tuple[str, str, str], str] = {}
        stmt = (select(feedback.c.channel, feedback.c.tenant, feedback.c.rated_event_id, feedback.c.rating)
                .where(feedback.c.rated_event_id.is_not(None))
                .order_by(feedback.c.created_at, feedback.c.id))
        for row in self.stream(stmt):
            latest[(row["channel"], row["tenant"], row["rated_event_id"])] = row["rating"]
        return {key: rating for key, rating in latest.items() if rating in ("up", "down")}
