"""Archive fixtures: a SQLite file per test, and a private PostgreSQL database per test session.

PostgreSQL is the one on 127.0.0.1:5432 (trust auth, user postgres) when it answers, with a database of
this session's own (CREATE DATABASE with a random name, dropped after); else a server started here with
initdb + pg_ctl in a temporary directory on a free port; else the PostgreSQL tests skip, saying why.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.archive.db import ArchiveDb, database_url
from bot.archive.writer import ArchiveWriter
from bot.config import ROOT, ArchiveConfig
from bot.metrics import Metrics

PG_BIN = Path("/usr/local/bin")


def _pg_answers(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _private_server() -> Iterator[str]:
    """initdb + pg_ctl in a temporary directory (as the postgres user when we are root: initdb refuses root)."""
    initdb, pg_ctl = PG_BIN / "initdb", PG_BIN / "pg_ctl"
    if not initdb.exists() or not pg_ctl.exists():
        pytest.skip("ARCHIVE POSTGRESQL TESTS SKIPPED: nothing answers on 127.0.0.1:5432 and initdb/pg_ctl "
                    "are not in /usr/local/bin")
    prefix: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="kefu-pg-"))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("ARCHIVE POSTGRESQL TESTS SKIPPED: running as root without a postgres user for initdb")
        os.chown(workdir, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    data = workdir / "data"
    run = lambda *cmd: subprocess.run([*prefix, *map(str, cmd)], check=True, capture_output=True)  # noqa: E731
    try:
        run(initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
        run(pg_ctl, "-D", data, "-w", "-l", workdir / "log",
            "-o", f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1", "start")
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        pytest.skip(f"ARCHIVE POSTGRESQL TESTS SKIPPED: could not start a private server ({exc.stderr[-300:]!r})")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, str(pg_ctl), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL (postgresql+psycopg) to a database of this test session's own."""
    import psycopg

    shared = "postgresql://postgres@127.0.0.1:5432/test"
    servers = iter([shared]) if _pg_answers(shared) else _private_server()
    admin = next(servers)
    name = f"kefutest_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin.rsplit("/", 1)[0]
    try:
        yield f"postgresql+psycopg://{base.split('://', 1)[1]}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        for _ in servers:  # lets a private server stop
            pass


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'archive.db'}"


@pytest.fixture
def postgres_clean(postgres_url: str) -> Iterator[str]:
    """The session's PostgreSQL database, emptied of archive rows before and after the test."""
    _truncate(postgres_url)
    yield postgres_url
    _truncate(postgres_url)


def _truncate(url: str) -> None:
    from sqlalchemy import delete

    from bot.archive.schema import feedback, turns

    db = ArchiveDb.open(database_url(url, ROOT))
    with db.engine.begin() as conn:
        conn.execute(delete(turns))
        conn.execute(delete(feedback))
    db.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def archive_url(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    """Each backend in turn."""
    if request.param == "sqlite":
        return sqlite_url
    return request.getfixturevalue("postgres_clean")


WriterFactory = Callable[..., ArchiveWriter]


@pytest.fixture
async def writer_for() -> Any:
    """ArchiveWriter(url, **ArchiveConfig fields), closed after the test."""
    made: list[ArchiveWriter] = []

    def make(url: str, metrics: Metrics | None = None, **fields: Any) -> ArchiveWriter:
        writer = ArchiveWriter(ArchiveConfig(url=url, **fields), metrics or Metrics(), ROOT)
        made.append(writer)
        return writer

    yield make
    await asyncio.gather(*(w.close() for w in made))
