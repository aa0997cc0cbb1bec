"""The conversation archive: turns through the real hub land in it once, redacted, with their fields; it
survives a restart on SQLite and PostgreSQL; its migrations match the tables; a database that is down costs
counted rows, never a turn; retention and erasure delete what they should."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

import aiohttp
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from prometheus_client import CollectorRegistry

from bot.app import SERVICES_KEY
from bot.archive.db import ArchiveDb, database_url
from bot.archive.migrate import upgrade
from bot.archive.schema import feedback, metadata, turns
from bot.config import ROOT, ConfigError
from bot.metrics import Metrics
from bot.pipeline import Dialogue, TurnContext, TurnPipeline
from bot.services import Services
from bot.state import DialogueState
from bot.state.memory import MemoryStore
from bot.turn import TurnResult
from bot.types import ConversationRef, Event, EventKind, Reply
from tests.conftest import make_config, start_server
from tests.services import free_port

from .helpers import PHONE, RESIDENT_ID, archived, eventually

ADMIN = "archive-admin-token"


def counter(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def ask(http: aiohttp.ClientSession, server: Any, query: str, user: str) -> dict[str, Any]:
    async with http.post(server.make_url("/chat"), json={"query": query, "user_id": user}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def hub_config(url: str, **over: Any) -> Any:
    return make_config({"archive.url": url, "archive.flush_interval_s": 0.05, "admin.token": ADMIN, **over})


# ---------------------------------------------------------------- schema


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_migrations_head_matches_the_tables(backend: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "postgres_clean")
    db = ArchiveDb.open(database_url(url, ROOT))  # runs every migration
    try:
        upgrade(db.engine)  # a second run at the next start changes nothing
        with db.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": "archive_alembic_version",
                                                             "compare_type": True,
                                                             "compare_server_default": True})
            assert compare_metadata(context, metadata) == []
    finally:
        db.close()


# ---------------------------------------------------------------- through the hub


async def test_a_turn_through_the_hub_is_archived_with_its_fields_and_redacted(
    sqlite_url: str, http: aiohttp.ClientSession
) -> None:
    config = hub_config(sqlite_url)
    server = await start_server(config)
    services: Services = server.app[SERVICES_KEY]
    try:
        answer = await ask(http, server, f"怎么退货？我的手机号是{PHONE}", "ada")
        assert services.archive is not None
        (row,) = await archived(services.archive, 1)
        assert row["channel"] == "api" and row["conversation"] == "api::ada" and row["kind"] == "message"
        assert row["event_id"] == answer["message_id"]
        assert row["question"].startswith("怎么退货") and PHONE not in row["question"]
        assert row["answer"] == answer["answer"] and row["replies"] >= 1
        assert row["source"] == answer["source"] and row["outcome"] == "ok"
        assert row["latency_ms"] >= 0 and row["created_at"] is not None
        assert row["intent"] is not None and row["lang"] == "zh"  # from the dialogue's reply meta and state
        assert row["adapter"] is None and row["arm"] is None  # no LoRA adapter, no A/B test yet
        registry = services.metrics.registry
        assert counter(registry, "kefu_archive_written_total", table="turns") == 1
    finally:
        await server.close()


async def test_a_vote_in_the_widget_is_archived_linked_to_the_rated_turn(
    sqlite_url: str, http: aiohttp.ClientSession
) -> None:
    config = hub_config(sqlite_url)
    server = await start_server(config)
    services: Services = server.app[SERVICES_KEY]
    assert services.archive is not None
    try:
        async with http.post(server.make_url("/api/web/session"), json={}) as resp:
            session = await resp.json()
        headers = {"Authorization": f"Bearer {session['token']}"}
        async with http.post(server.make_url("/api/web/messages"), headers=headers,
                             json={"text": "运费怎么算", "client_id": "msg-00001"}) as resp:
            assert resp.status == 202, await resp.text()
        (turn,) = await archived(services.archive, 1)
        assert turn["channel"] == "web" and turn["event_id"].endswith(":msg-00001")
        async with http.post(server.make_url("/api/web/feedback"), headers=headers,
                             json={"answer_id": "msg-00001", "rating": "down"}) as resp:
            assert resp.status == 200, await resp.text()
        (vote,) = await archived(services.archive, 1, "feedback")
        assert vote["rating"] == "down" and vote["answer_id"] == "msg-00001"
        assert vote["rated_event_id"] == turn["event_id"] and vote["conversation"] == turn["conversation"]
        assert len(await archived(services.archive, 1)) == 1  # the vote is no turn of its own
    finally:
        await server.close()


# ---------------------------------------------------------------- once per event


class Answering:
    async def handle(self, event: Event, state: DialogueState, stream: Any) -> TurnResult:
        reply = Reply(event.ref, f"答：{event.text}", in_reply_to=event.id, source="faq",
                      meta={"faq_id": "refund", "node": "faq"})
        return TurnResult(state.with_turn("user", event.text or "", 10), (reply,))


async def test_a_resent_or_redelivered_event_is_archived_once(sqlite_url: str, writer_for: Any) -> None:
    writer = writer_for(sqlite_url)
    store = MemoryStore(60, 86400)
    ref = ConversationRef(channel="test", conversation_id="u1", user_id="u1")
    event = Event(id="m1", kind=EventKind.MESSAGE, ref=ref, text="能退款吗")
    sent: list[str] = []

    async def crash(_e: Event, _r: Sequence[Reply]) -> None:
        raise SystemExit  # the process dies after the answer was decided and saved, before it went out

    async def deliver(_e: Event, replies: Sequence[Reply]) -> None:
        sent.extend(r.text for r in replies)

    first = TurnPipeline(store, [Dialogue(Answering())], crash, Metrics(), ledger=True)
    first.after.append(writer.after_turn)
    with pytest.raises(SystemExit):
        await first.run(TurnContext(event), 5)
    again = TurnPipeline(store, [Dialogue(Answering())], deliver, Metrics(), ledger=True)
    again.after.append(writer.after_turn)
    resent = TurnContext(event, redelivered=True)
    await again.run(resent, 5)
    duplicate = TurnContext(event, redelivered=True)
    await again.run(duplicate, 5)
    assert resent.outcome == "resent" and duplicate.outcome == "duplicate" and sent == ["答：能退款吗"]
    writer.after_turn(resent)  # the same event handed over twice (another worker ran it too)
    (row,) = await archived(writer, 1)
    await writer.flush()
    assert len(await archived(writer, 1)) == 1
    assert row["outcome"] == "resent" and row["faq_id"] == "refund" and row["source"] == "faq"


# ---------------------------------------------------------------- durability


async def test_the_archive_survives_a_restart(archive_url: str, writer_for: Any) -> None:
    ref = ConversationRef(channel="test", conversation_id="keep", user_id="keep")
    before = writer_for(archive_url)
    for i in range(3):
        ctx = TurnContext(Event(id=f"k{i}", kind=EventKind.MESSAGE, ref=ref, text=f"问题{i}"))
        ctx.replies = (Reply(ref, f"回答{i}", source="llm", meta={"adapter": "zh-lora"}),)
        before.after_turn(ctx)
    await before.close()  # what is buffered is written at shutdown

    after = writer_for(archive_url)
    rows = await archived(after, 3)
    assert [r["question"] for r in rows] == ["问题0", "问题1", "问题2"]
    assert {r["adapter"] for r in rows} == {"zh-lora"}


async def test_a_turn_through_the_hub_reaches_postgresql(postgres_clean: str, http: aiohttp.ClientSession) -> None:
    server = await start_server(hub_config(postgres_clean))
    services: Services = server.app[SERVICES_KEY]
    try:
        answer = await ask(http, server, f"身份证{RESIDENT_ID}能改吗", "pg-user")
        assert services.archive is not None
        (row,) = await archived(services.archive, 1)
        assert row["event_id"] == answer["message_id"] and RESIDENT_ID not in row["question"]
        assert row["created_at"].tzinfo is not None  # timestamptz
    finally:
        await server.close()


# ---------------------------------------------------------------- a database that is away


async def test_a_database_that_is_down_costs_rows_not_turns(
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    config = hub_config(f"postgresql+psycopg://kefu:s3cr3t-pw@127.0.0.1:{port}/archive", **{
        "archive.buffer_max": 3})
    caplog.set_level(logging.INFO)
    server = await start_server(config)
    services: Services = server.app[SERVICES_KEY]
    registry = services.metrics.registry
    try:
        for i in range(6):
            answer = await ask(http, server, f"第{i}个问题：怎么退货", f"down-{i}")
            assert answer["answer"]
        # the sixth row is handed over just after its answer went out
        await eventually(lambda: counter(registry, "kefu_archive_dropped_total", reason="buffer_full") >= 3)
        assert services.archive is not None and services.archive.pending == 3
        assert counter(registry, "kefu_archive_dropped_total", reason="buffer_full") == 3
    finally:
        await server.close()
    assert counter(registry, "kefu_archive_dropped_total", reason="shutdown") == 3
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"127.0.0.1:{port}" in logged and "s3cr3t-pw" not in logged


def test_a_url_that_can_never_work_is_a_config_error_without_its_password() -> None:
    with pytest.raises(ConfigError) as bad_scheme:
        make_config({"archive.url": "mysql://kefu:s3cr3t-pw@db.example/archive"})
    assert "archive.url" in str(bad_scheme.value) and "s3cr3t-pw" not in str(bad_scheme.value)
    with pytest.raises(ConfigError) as bad_url:
        Services(make_config({"archive.url": "postgresql+psycopg://kefu:s3cr3t-pw@db.example:notaport/x"}))
    assert "s3cr3t-pw" not in str(bad_url.value)


# ---------------------------------------------------------------- retention and erasure


async def test_retention_deletes_old_rows_only(archive_url: str, writer_for: Any) -> None:
    writer = writer_for(archive_url, retention_days=30)
    db = await writer.open_db()
    now = dt.datetime.now(dt.UTC)
    base = {"channel": "test", "tenant": "", "conversation": "test::old", "kind": "message", "source": "faq",
            "outcome": "ok", "replies": 1}
    await asyncio.to_thread(db.insert, turns, [
        {**base, "event_id": "old", "created_at": now - dt.timedelta(days=31)},
        {**base, "event_id": "new", "created_at": now - dt.timedelta(days=29)},
    ])
    await asyncio.to_thread(db.insert, feedback, [
        {"channel": "test", "tenant": "", "conversation": "test::old", "event_id": "v-old", "rating": "up",
         "created_at": now - dt.timedelta(days=40)},
    ])
    assert await writer.apply_retention() == 2
    assert [r["event_id"] for r in await asyncio.to_thread(db.rows, turns)] == ["new"]
    assert await asyncio.to_thread(db.count, feedback) == 0
    keeps = writer_for(archive_url, retention_days=0)
    assert await keeps.apply_retention() == 0


async def test_erasure_reaches_the_archive_also_rows_not_yet_written(
    archive_url: str, http: aiohttp.ClientSession
) -> None:
    # a long flush interval: the second turn of "gone" is still in memory when the erasure comes
    server = await start_server(hub_config(archive_url, **{"archive.flush_interval_s": 3600}))
    services: Services = server.app[SERVICES_KEY]
    archive = services.archive
    assert archive is not None
    headers = {"Authorization": f"Bearer {ADMIN}"}
    try:
        await ask(http, server, "你好", "gone")
        await ask(http, server, "你好", "kept")
        await archived(archive, 2)
        await ask(http, server, "怎么退货", "gone")
        await eventually(lambda: archive.pending >= 1)
        async with http.delete(server.make_url("/api/admin/conversations/api/gone"), headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        assert body["deleted_archive_rows"] == 2  # one written, one waiting
        await archive.flush()
        rows = await archived(archive, 1)
        assert [r["conversation"] for r in rows] == ["api::kept"]
        async with http.delete(server.make_url("/api/admin/conversations/api/gone"), headers=headers) as resp:
            assert (await resp.json())["deleted_archive_rows"] == 0
    finally:
        await server.close()


async def test_erasure_says_so_when_the_archive_cannot_be_reached(http: aiohttp.ClientSession) -> None:
    server = await start_server(hub_config(f"postgresql+psycopg://kefu@127.0.0.1:{free_port()}/archive"))
    try:
        async with http.delete(server.make_url("/api/admin/conversations/api/someone"),
                               headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
            assert resp.status == 503 and (await resp.json())["error"] == "archive_unavailable"
    finally:
        await server.close()
