"""FAQ curation (bot/faq/curation.py): an agent's change is the next answer without a restart, on this process
at once and on every other one after its poll (or at once through the console feed); the log in the archive
database says who changed what; bad input and a database that is away are refused clearly; the migration that
adds the log upgrades an archive made before it; rebuilt indexes do not pile up in memory."""

from __future__ import annotations

import asyncio
import gc
import logging
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from alembic import command
from sqlalchemy import create_engine, delete, insert, inspect, select, text

from bot.app import SERVICES_KEY
from bot.archive.db import ArchiveDb, database_url
from bot.archive.migrate import alembic_config
from bot.archive.schema import faq_changes, turns
from bot.config import ROOT
from bot.faq.curation import CurationUnavailable, FaqChange, FaqCuration, InvalidChange, fold
from bot.faq.model import FaqEntry
from bot.safety.output_filter import Given
from bot.services import Services
from tests.bot.archive.conftest import postgres_url  # noqa: F401  (the session's own PostgreSQL database)
from tests.bot.archive.helpers import eventually
from tests.conftest import make_config, start_server
from tests.services import free_port

RESET = "account-reset-password"
RESET_QUESTION = "如何重置密码?"
COOPERATION = "general-business-cooperation"
AGENT_PHRASING = "你们招不招代理"  # matches nothing confidently in config/faq.yaml
MASCOT = "你们的吉祥物叫什么名字"  # nor does this
MASCOT_ANSWER = "我们的吉祥物叫「云朵宝宝」，在 App 首页右下角就能看到它。"
NEW_RESET = "重置密码的新办法：在 App 里点“我的-设置-找回密码”，按提示验证手机号即可。"


# ---------------------------------------------------------------- fixtures and helpers


def _empty_log(url: str) -> None:
    db = ArchiveDb.open(database_url(url, ROOT))
    try:
        with db.engine.begin() as conn:
            conn.execute(delete(faq_changes))
    finally:
        db.close()


@pytest.fixture
def sqlite_archive(tmp_path: Any) -> str:
    """An archive of the test's own: the run's shared archive file must never carry curated answers into
    other tests' FAQ."""
    return f"sqlite:///{tmp_path / 'archive.db'}"


@pytest.fixture
def postgres_archive(postgres_url: str) -> Iterator[str]:  # noqa: F811
    _empty_log(postgres_url)
    yield postgres_url
    _empty_log(postgres_url)


@pytest.fixture(params=["sqlite", "postgresql"])
def archive_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_archive" if request.param == "sqlite" else "postgres_archive")


def curation_config(url: str, **over: Any) -> Any:
    return make_config({"archive.url": url, "archive.flush_interval_s": 0.05, "console.faq_poll_s": 0.2, **over})


async def ask(http: aiohttp.ClientSession, server: Any, query: str) -> dict[str, Any]:
    """One /chat turn as a new customer each time (no dialogue state carried between the checks)."""
    body = {"query": query, "user_id": f"cur-{uuid.uuid4().hex[:8]}"}
    async with http.post(server.make_url("/chat"), json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


@pytest.fixture
async def servers() -> AsyncIterator[Callable[..., Any]]:
    """start_server(config) for as many "processes" as a test needs, all closed after it."""
    started: list[Any] = []

    async def start(config: Any) -> tuple[Any, Services]:
        server = await start_server(config)
        started.append(server)
        return server, server.app[SERVICES_KEY]

    yield start
    for server in started:
        await server.close()


def curation_of(services: Services) -> FaqCuration:
    assert services.curation is not None
    return services.curation


def entry(services: Services, faq_id: str) -> FaqEntry | None:
    return next((e for e in curation_of(services).entries() if e.id == faq_id), None)


# ---------------------------------------------------------------- the next turn, without a restart


async def test_an_edited_answer_is_the_next_answer_without_a_restart(
    archive_url: str, servers: Any, http: aiohttp.ClientSession
) -> None:
    server, services = await servers(curation_config(archive_url))
    before = await ask(http, server, RESET_QUESTION)
    assert before["source"] == "faq" and "忘记密码" in before["answer"]

    change = await curation_of(services).edit_answer(RESET, NEW_RESET, "alice")

    assert change.action == "edit_answer" and change.faq_id == RESET and change.agent == "alice"
    after = await ask(http, server, RESET_QUESTION)
    assert after["source"] == "faq" and after["answer"] == NEW_RESET
    assert entry(services, RESET) is not None and entry(services, RESET).answer == NEW_RESET  # type: ignore[union-attr]
    assert services.answerer.faq.by_id[RESET].answer == NEW_RESET


async def test_an_added_paraphrase_makes_a_phrasing_match_its_entry(
    sqlite_archive: str, servers: Any, http: aiohttp.ClientSession
) -> None:
    server, services = await servers(curation_config(sqlite_archive))
    cooperation = services.answerer.faq.by_id[COOPERATION].answer
    assert services.answerer.faq.best(AGENT_PHRASING) is None
    assert (await ask(http, server, AGENT_PHRASING))["answer"] != cooperation

    await curation_of(services).add_paraphrase(COOPERATION, AGENT_PHRASING, "bob")

    answer = await ask(http, server, AGENT_PHRASING)
    assert answer["source"] == "faq" and answer["answer"] == cooperation
    assert AGENT_PHRASING in entry(services, COOPERATION).paraphrases  # type: ignore[union-attr]
    (top, _score), *_ = curation_of(services).search(AGENT_PHRASING)
    assert top.id == COOPERATION

    # the same phrasing again, however it is punctuated or spaced, is no second paraphrase
    with pytest.raises(InvalidChange):
        await curation_of(services).add_paraphrase(COOPERATION, "你们招不招 代理？", "bob")
    await curation_of(services).remove_paraphrase(COOPERATION, AGENT_PHRASING, "bob")
    assert AGENT_PHRASING not in entry(services, COOPERATION).paraphrases  # type: ignore[union-attr]
    assert services.answerer.faq.best(AGENT_PHRASING) is None


async def test_a_base_paraphrase_can_be_removed(sqlite_archive: str, servers: Any) -> None:
    _server, services = await servers(curation_config(sqlite_archive))
    paraphrase = entry(services, RESET).paraphrases[0]  # type: ignore[union-attr]
    await curation_of(services).remove_paraphrase(RESET, paraphrase, "alice")
    assert paraphrase not in entry(services, RESET).paraphrases  # type: ignore[union-attr]
    assert paraphrase not in services.answerer.faq.by_id[RESET].paraphrases


async def test_a_pinned_answer_answers_a_new_question_until_unpinned(
    sqlite_archive: str, servers: Any, http: aiohttp.ClientSession
) -> None:
    server, services = await servers(curation_config(sqlite_archive))
    assert (await ask(http, server, MASCOT))["answer"] != MASCOT_ANSWER

    pin = await curation_of(services).pin(MASCOT, MASCOT_ANSWER, "carol")

    assert pin.faq_id == f"pin-{pin.id}" and pin.question == MASCOT and pin.text == MASCOT_ANSWER
    pinned = entry(services, pin.faq_id)
    assert pinned is not None and pinned.category == "curated" and pinned.lang == "zh"
    answer = await ask(http, server, MASCOT)
    assert answer["source"] == "faq" and answer["answer"] == MASCOT_ANSWER

    # a pinned entry is edited like any other
    await curation_of(services).edit_answer(pin.faq_id, "吉祥物叫云朵宝宝。", "carol")
    assert (await ask(http, server, MASCOT))["answer"] == "吉祥物叫云朵宝宝。"

    await curation_of(services).unpin(pin.faq_id, "carol")
    assert entry(services, pin.faq_id) is None and pin.faq_id not in services.answerer.faq.by_id
    assert (await ask(http, server, MASCOT))["answer"] != "吉祥物叫云朵宝宝。"
    with pytest.raises(KeyError):
        await curation_of(services).unpin(pin.faq_id, "carol")


async def test_an_english_question_is_pinned_as_english(sqlite_archive: str, servers: Any) -> None:
    _server, services = await servers(curation_config(sqlite_archive))
    pin = await curation_of(services).pin("Do you ship to Antarctica?", "Not yet, sorry.", "dave")
    assert entry(services, pin.faq_id).lang == "en"  # type: ignore[union-attr]


# ---------------------------------------------------------------- every process


async def test_a_change_on_one_process_reaches_another_after_its_poll(
    archive_url: str, servers: Any, http: aiohttp.ClientSession
) -> None:
    config = curation_config(archive_url)
    _one, here = await servers(config)
    other_server, there = await servers(config)
    assert (await ask(http, other_server, RESET_QUESTION))["answer"] != NEW_RESET

    await curation_of(here).edit_answer(RESET, NEW_RESET, "alice")
    pin = await curation_of(here).pin(MASCOT, MASCOT_ANSWER, "alice")

    await eventually(lambda: entry(there, pin.faq_id) is not None
                     and there.answerer.faq.by_id[RESET].answer == NEW_RESET, within_s=15)
    assert (await ask(http, other_server, RESET_QUESTION))["answer"] == NEW_RESET
    assert (await ask(http, other_server, MASCOT))["answer"] == MASCOT_ANSWER
    # the other process edits what this one pinned (it knows the entry from the log)
    await curation_of(there).edit_answer(pin.faq_id, "云朵宝宝！", "bob")
    await eventually(lambda: here.answerer.faq.by_id[pin.faq_id].answer == "云朵宝宝！", within_s=15)


async def test_a_process_that_starts_later_answers_from_the_log(
    sqlite_archive: str, servers: Any, http: aiohttp.ClientSession
) -> None:
    config = curation_config(sqlite_archive)
    _first, services = await servers(config)
    await curation_of(services).edit_answer(RESET, NEW_RESET, "alice")
    late_server, _late = await servers(config)
    assert (await ask(http, late_server, RESET_QUESTION))["answer"] == NEW_RESET


async def test_the_console_feed_reloads_other_processes_at_once(
    sqlite_archive: str, redis_url: str, key_prefix: str
) -> None:
    """With a poll far too slow to matter, the feed's "faq" event is what brings the change over."""
    config = curation_config(sqlite_archive, **{"state.url": redis_url, "state.key_prefix": key_prefix,
                                                "console.faq_poll_s": 3600})
    made: list[Services] = []
    try:
        for _ in range(2):
            services = Services(config)
            made.append(services)
            await services.start()
        here, there = made
        async with there.feed.subscribe():  # its reader is reading the stream now
            pass
        await curation_of(here).edit_answer(RESET, NEW_RESET, "alice")
        await eventually(lambda: there.answerer.faq.by_id[RESET].answer == NEW_RESET, within_s=15)
        assert here.answerer.faq.by_id[RESET].answer == NEW_RESET
    finally:
        for services in made:
            await services.close()


# ---------------------------------------------------------------- the log


async def test_history_says_who_changed_what_newest_first(sqlite_archive: str, servers: Any) -> None:
    _server, services = await servers(curation_config(sqlite_archive))
    curation = curation_of(services)
    first = await curation.edit_answer(RESET, NEW_RESET, "alice")
    second = await curation.add_paraphrase(COOPERATION, AGENT_PHRASING, "bob")
    third = await curation.pin(MASCOT, MASCOT_ANSWER, "小王")

    history = await curation.history()
    assert [c.id for c in history] == [third.id, second.id, first.id]
    assert [(c.agent, c.action, c.faq_id) for c in history] == [
        ("小王", "pin", third.faq_id), ("bob", "add_paraphrase", COOPERATION), ("alice", "edit_answer", RESET)]
    assert history[0].question == MASCOT and history[0].text == MASCOT_ANSWER
    assert history[2].text == NEW_RESET and history[2].at.tzinfo is not None
    assert history[2] == first  # what the write returned is what the log holds
    assert await curation.history(faq_id=COOPERATION) == [second]
    assert await curation.history(limit=1) == [third]


def test_the_log_folds_in_id_order_and_skips_entries_that_are_gone(caplog: pytest.LogCaptureFixture) -> None:
    import datetime as dt

    base = [FaqEntry("a", "general", "问题甲", "答甲", ("问法一",)), FaqEntry("b", "general", "问题乙", "答乙")]
    at = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)

    def change(i: int, action: str, faq_id: str, text: str, question: str | None = None) -> FaqChange:
        return FaqChange(i, at, "alice", action, faq_id, text, question)

    entries, skipped = fold(base, [
        change(4, "edit_answer", "a", "第二次"),
        change(2, "edit_answer", "a", "第一次"),
        change(3, "add_paraphrase", "b", "问法二"),
        change(5, "add_paraphrase", "b", "问法 二！"),  # the same after normalisation
        change(6, "remove_paraphrase", "a", "问法一"),
        change(7, "edit_answer", "gone", "x"),
        change(8, "pin", "pin-8", "钉住的答案", "钉住的问题"),
        change(9, "unpin", "pin-8", ""),
    ])
    by_id = {e.id: e for e in entries}
    assert by_id["a"].answer == "第二次" and by_id["a"].paraphrases == ()
    assert by_id["b"].paraphrases == ("问法二",)
    assert "pin-8" not in by_id and [c.id for c in skipped] == [7]


# ---------------------------------------------------------------- refused


async def test_unknown_ids_are_key_errors_and_bad_texts_are_refused(sqlite_archive: str, servers: Any) -> None:
    _server, services = await servers(curation_config(sqlite_archive))
    curation = curation_of(services)
    for call in (lambda: curation.edit_answer("no-such-entry", "答案", "alice"),
                 lambda: curation.add_paraphrase("no-such-entry", "一个问法", "alice"),
                 lambda: curation.remove_paraphrase(RESET, "从来没有这个问法", "alice"),
                 lambda: curation.unpin("pin-999", "alice")):
        with pytest.raises(KeyError):
            await call()
    for call in (lambda: curation.edit_answer(RESET, "", "alice"),
                 lambda: curation.edit_answer(RESET, "长" * 2001, "alice"),
                 lambda: curation.edit_answer(RESET, "坏\ud800字", "alice"),
                 lambda: curation.add_paraphrase(RESET, "短", "alice"),
                 lambda: curation.add_paraphrase(RESET, "问" * 201, "alice"),
                 lambda: curation.pin("\x00\x01", "答案", "alice"),
                 lambda: curation.unpin(RESET, "alice"),  # only pinned entries are unpinned
                 lambda: curation.edit_answer(RESET, "答案", "")):
        with pytest.raises(InvalidChange) as refused:
            await call()
        assert "\ud800" not in str(refused.value)
    assert await curation.history() == []

    # control characters are stripped; an answer keeps its lines, a paraphrase becomes one line
    change = await curation.edit_answer(RESET, "第一行\x00\u202e\r\n第二行\x07", "alice")
    assert change.text == "第一行\n第二行" and entry(services, RESET).answer == "第一行\n第二行"  # type: ignore[union-attr]
    change = await curation.add_paraphrase(RESET, " 密码\t彻底\n忘光了 ", "alice")
    assert change.text == "密码 彻底 忘光了"


async def test_an_unreachable_archive_refuses_changes_and_keeps_the_faq(
    servers: Any, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    url = f"postgresql+psycopg://kefu:s3cr3t-pw@127.0.0.1:{free_port()}/archive"
    server, services = await servers(curation_config(url))
    curation = curation_of(services)
    index = services.answerer.faq
    with pytest.raises(CurationUnavailable):
        await curation.edit_answer(RESET, NEW_RESET, "alice")
    with pytest.raises(CurationUnavailable):
        await curation.pin(MASCOT, MASCOT_ANSWER, "alice")
    with pytest.raises(CurationUnavailable):
        await curation.history()
    for _ in range(3):  # what the poll does every round
        with pytest.raises(CurationUnavailable):
            await curation.reload()
    assert services.answerer.faq is index
    assert "忘记密码" in (await ask(http, server, RESET_QUESTION))["answer"]
    warnings = [r for r in caplog.records if r.name == "bot.faq.curation" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "s3cr3t-pw" not in "\n".join(r.getMessage() for r in caplog.records)


def test_no_archive_means_no_curation() -> None:
    services = Services(make_config({"archive.enabled": "false"}))
    assert services.curation is None


# ---------------------------------------------------------------- the output filter


async def test_a_curated_number_is_the_companys_not_leaked_data(sqlite_archive: str, servers: Any) -> None:
    """A model that repeats a number from a curated answer is not replaced as if it leaked someone's."""
    _server, services = await servers(curation_config(sqlite_archive))
    assert services.output_filter is not None
    checker = services.output_filter.checker
    said = "您可以拨打 0571-88886666 咨询。"
    assert checker.check(said, given=Given(), source="llm") is not None
    await curation_of(services).edit_answer(RESET, "人工热线 0571-88886666，每天 9:00-21:00。", "alice")
    assert checker.check(said, given=Given(), source="llm") is None


# ---------------------------------------------------------------- reloads


async def test_reloads_coalesce_and_free_the_old_index(sqlite_archive: str, servers: Any) -> None:
    _server, services = await servers(curation_config(sqlite_archive, **{"console.faq_poll_s": 3600}))
    curation = curation_of(services)
    tokenizer = services.answerer.faq.analyzer.tokenizer
    old: list[weakref.ref[Any]] = []
    for i in range(5):
        old.append(weakref.ref(services.answerer.faq))
        await curation.edit_answer(RESET, f"第 {i} 版答案", "alice")
    assert services.answerer.faq.by_id[RESET].answer == "第 4 版答案"
    assert services.answerer.faq.analyzer.tokenizer is tokenizer  # one jieba dictionary for every index
    gc.collect()
    assert [ref() for ref in old] == [None] * 5

    # a change written by another process, then many reloads at once: one build serves them all
    db = ArchiveDb.open(database_url(sqlite_archive, ROOT))
    try:
        import datetime as dt

        with db.engine.begin() as conn:
            conn.execute(insert(faq_changes).values(created_at=dt.datetime.now(dt.UTC), agent="bob",
                                                    action="edit_answer", faq_id=RESET, text="别处改的答案"))
    finally:
        db.close()
    results = await asyncio.gather(*(curation.reload() for _ in range(6)))
    assert sum(results) == 1 and services.answerer.faq.by_id[RESET].answer == "别处改的答案"
    assert await curation.reload() is False  # nothing new


# ---------------------------------------------------------------- the migration


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """A database no migration ran on yet."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    import psycopg

    session_url = request.getfixturevalue("postgres_url")
    admin = session_url.replace("postgresql+psycopg://", "postgresql://")
    name = f"kefumig_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{session_url.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _migrate(url: str, revision: str, *, down: bool = False) -> None:
    engine = create_engine(database_url(url, ROOT))
    try:
        with engine.begin() as connection:
            cfg = alembic_config(engine)
            cfg.attributes["connection"] = connection
            (command.downgrade if down else command.upgrade)(cfg, revision)
    finally:
        engine.dispose()


def test_migration_0002_upgrades_an_archive_made_by_0001(empty_database: str) -> None:
    import datetime as dt

    _migrate(empty_database, "0001")
    engine = create_engine(database_url(empty_database, ROOT))
    try:
        assert "faq_changes" not in inspect(engine).get_table_names()
        with engine.begin() as conn:
            conn.execute(insert(turns).values(created_at=dt.datetime.now(dt.UTC), channel="api", tenant="",
                                              conversation="api::old", event_id="e1", kind="message",
                                              question="旧问题", answer="旧答案", replies=1, source="faq",
                                              outcome="ok"))
    finally:
        engine.dispose()

    db = ArchiveDb.open(database_url(empty_database, ROOT))  # what every start does: upgrade to head
    try:
        assert "faq_changes" in inspect(db.engine).get_table_names()
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM archive_alembic_version")).scalar_one() == "0002"
            assert conn.execute(select(turns.c.question)).scalars().all() == ["旧问题"]
        with db.engine.begin() as conn:
            conn.execute(insert(faq_changes).values(created_at=dt.datetime.now(dt.UTC), agent="alice",
                                                    action="edit_answer", faq_id=RESET, text="新答案"))
    finally:
        db.close()

    _migrate(empty_database, "0001", down=True)  # and back, for an operator who must
    engine = create_engine(database_url(empty_database, ROOT))
    try:
        assert "faq_changes" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()
