"""One conformance suite for the inbox board, run against the memory board and the Redis hash."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from bot.console.board import Board, MemoryBoard, RedisBoard, Waiting, open_board
from bot.state.keys import Keys
from bot.types import ConversationRef


def row(user: str, *, since: float = 1000.0, waiting_since: float | None = None, taken_by: str | None = None,
        channel: str = "wecom") -> Waiting:
    ref = ConversationRef(channel=channel, conversation_id=user, user_id=user, tenant="corp1")
    return Waiting(key=ref.key, ref=ref, name=user, reason="requested", reason_text="客户要求转人工", since=since,
                   last_text="转人工", last_at=since, waiting_since=since if waiting_since is None else waiting_since,
                   unread=1, taken_by=taken_by, taken_at=since + 5 if taken_by else 0.0)


@pytest.fixture(params=["memory", "redis"])
async def board(request: pytest.FixtureRequest, redis_client: aioredis.Redis, key_prefix: str
                ) -> AsyncIterator[Board]:
    if request.param == "memory":
        yield MemoryBoard()
    else:
        yield RedisBoard(redis_client, Keys(key_prefix))


async def test_upsert_says_whether_the_row_is_new_and_get_reads_it_back(board: Board) -> None:
    first = row("zhang")
    assert await board.upsert(first) is True
    assert await board.get(first.key) == first
    taken = first.replace(taken_by="alice", taken_at=1010.0, unread=0)
    assert await board.upsert(taken) is False
    assert await board.get(first.key) == taken
    assert await board.get("wecom:corp1:nobody") is None


async def test_remove_says_whether_there_was_a_row(board: Board) -> None:
    r = row("li")
    await board.upsert(r)
    assert await board.remove(r.key) is True
    assert await board.remove(r.key) is False
    assert await board.get(r.key) is None and await board.list() == []


async def test_untaken_first_then_the_longest_wait_ties_newest_handoff_first(board: Board) -> None:
    taken_long = row("taken-long", since=100.0, taken_by="alice")
    short = row("short", since=900.0)
    long = row("long", since=200.0)
    # an agent answered last (waiting_since 0): ordered by the handoff time
    answered = row("answered", since=500.0, waiting_since=0.0)
    # same wait: the newer handoff first
    tie_old = row("tie-old", since=300.0, waiting_since=700.0)
    tie_new = row("tie-new", since=400.0, waiting_since=700.0)
    for r in (taken_long, short, long, answered, tie_old, tie_new):
        await board.upsert(r)
    assert [r.name for r in await board.list()] == ["long", "answered", "tie-new", "tie-old", "short", "taken-long"]


async def test_rows_round_trip_with_group_chats_and_tenants(board: Board) -> None:
    ref = ConversationRef(channel="dingtalk", conversation_id="cid-9", user_id="u9", tenant="org", is_group=True)
    r = Waiting(key=ref.key, ref=ref, name="王小明", reason="order_number", reason_text="未填完信息", since=1.5,
                last_text="订单号 ***", last_at=2.5, waiting_since=2.5, unread=3, taken_by=None, taken_at=0.0)
    await board.upsert(r)
    assert await board.list() == [r]
    assert Waiting.from_json(r.to_json()) == r


async def test_a_damaged_row_is_left_out_not_an_error(redis_client: aioredis.Redis, key_prefix: str) -> None:
    keys = Keys(key_prefix)
    board = open_board(redis_client, keys)
    assert isinstance(board, RedisBoard) and isinstance(open_board(None, keys), MemoryBoard)
    good = row("good")
    await board.upsert(good)
    await redis_client.hset(keys.console_board(), mapping={"bad-json": "{not json", "no-ref": '{"key": "x"}',
                                                           "a-list": "[1, 2]"})
    assert await board.list() == [good]
    assert await board.get("bad-json") is None


def test_from_json_refuses_a_row_without_key_or_ref() -> None:
    with pytest.raises(ValueError):
        Waiting.from_json({"key": "k"})
    with pytest.raises(ValueError):
        Waiting.from_json({"ref": {"channel": "web", "conversation_id": "s", "user_id": "s"}})
