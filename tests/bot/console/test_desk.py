"""The agent desk against the real hub and dialogue: handoffs land on the inbox of every process, agents race
to take, reply through the customer's channel, release to the bot; with Redis (two "processes", each its own
Services) and in memory."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.archive.schema import turns
from bot.console.board import Waiting
from bot.console.canned import Canned, load_canned
from bot.console.desk import AgentDesk, DeliveryFailed, NotWaiting, Taken, display_name, reason_text
from bot.console.feed import RESYNC, FeedEvent
from bot.services import Services
from bot.types import ConversationRef, Event, EventKind, Reply
from tests.conftest import make_config

ALWAYS_OPEN = {f"handoff.hours.{day}": "00:00-24:00" for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
CHANNELS = ("wecom", "dingtalk", "web", "api")


class Sink:
    """Stands in for a channel's sender: records what it was asked to deliver."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.fail = False

    async def deliver(self, event: Event | None, replies: Sequence[Reply]) -> None:
        if self.fail:
            raise RuntimeError("POST https://qyapi.weixin.qq.com/cgi-bin/message/send?access_token=SECRET-TOKEN")
        self.replies += replies


class Process:
    """One hub process: its own Services (own Redis clients), test sinks for every channel."""

    def __init__(self, overrides: dict[str, Any]) -> None:
        self.services = Services(make_config({**ALWAYS_OPEN, **overrides}))
        self.sinks = {channel: Sink() for channel in CHANNELS}
        for channel, sink in self.sinks.items():
            self.services.hub.register(channel, sink)
        self.n = 0

    @property
    def desk(self) -> AgentDesk:
        return self.services.desk

    async def say(self, ref: ConversationRef, text: str, **event: Any) -> list[Reply]:
        self.n += 1
        sink = self.sinks[ref.channel]
        before = len(sink.replies)
        ev = Event(id=f"m-{uuid.uuid4().hex[:8]}-{self.n}", kind=EventKind.MESSAGE, ref=ref, text=text, **event)
        assert await self.services.hub.accept(ev)
        assert await self.services.hub.drain(10)
        return sink.replies[before:]


def customer(channel: str = "wecom", user: str | None = None) -> ConversationRef:
    user = user or f"u{uuid.uuid4().hex[:10]}"
    return ConversationRef(channel=channel, conversation_id=user, user_id=user, tenant="corp1" if channel == "wecom"
                           else "")


@pytest.fixture(params=["memory", "redis"])
async def pair(request: pytest.FixtureRequest, redis_url: str, key_prefix: str, redis_client: aioredis.Redis
               ) -> AsyncIterator[tuple[Process, Process]]:
    """(where the customer's turns run, where an agent watches): two processes sharing Redis, or in memory the
    one process that does everything."""
    if request.param == "memory":
        one = Process({})
        await one.services.start()
        yield one, one
        await one.services.close()
        return
    overrides = {"state.url": redis_url, "state.key_prefix": key_prefix}
    here, there = Process(overrides), Process(overrides)
    await here.services.start()
    await there.services.start()
    yield here, there
    for p in (here, there):
        await p.services.close()


@pytest.fixture
async def procs(redis_url: str, key_prefix: str, redis_client: aioredis.Redis
                ) -> AsyncIterator[tuple[Process, Process]]:
    overrides = {"state.url": redis_url, "state.key_prefix": key_prefix}
    made = (Process(overrides), Process(overrides))
    for p in made:
        await p.services.start()
    yield made
    for p in made:
        await p.services.close()


async def next_kind(sub: AsyncIterator[FeedEvent], *kinds: str, within_s: float = 15.0) -> FeedEvent:
    """The next event of one of ``kinds`` (others, and resyncs, are skipped)."""
    async with asyncio.timeout(within_s):
        async for event in sub:
            if event.kind in kinds:
                return event
    raise AssertionError(f"the feed ended before {kinds}")


async def only_row(desk: AgentDesk, key: str) -> Waiting:
    rows = [r for r in await desk.waiting() if r.key == key]
    assert len(rows) == 1, rows
    return rows[0]


# ---------------------------------------------------------------------------------------------------- inbox
async def test_a_handoff_reaches_every_inbox_and_messages_bump_unread(pair: tuple[Process, Process]) -> None:
    here, there = pair
    zhang = customer("wecom")
    async with there.services.feed.subscribe() as feed:
        said = await here.say(zhang, "转人工")
        assert "转接人工客服" in said[0].text
        event = await next_kind(feed, "handoff")
        assert event.key == zhang.key and dict(event.data) == {"reason": "requested"}
        row = await only_row(there.desk, zhang.key)
        assert (row.reason, row.reason_text, row.name, row.ref) == ("requested", "客户要求转人工", zhang.user_id, zhang)
        assert (row.unread, row.last_text, row.taken_by) == (1, "转人工", None)
        assert row.since > 0 and row.waiting_since == row.since

        quiet = await here.say(zhang, "我的快递三天没动了，电话 13812345678")
        assert quiet == []  # a person has it: the bot stays quiet
        event = await next_kind(feed, "message")
        assert event.key == zhang.key and "text" not in event.data  # the feed never carries customer text
        row = await only_row(there.desk, zhang.key)
        assert row.unread == 2 and "快递三天没动了" in row.last_text and "13812345678" not in row.last_text
        assert row.waiting_since == row.since  # still waiting since the handoff: nobody answered


async def test_an_ordinary_conversation_never_reaches_the_board(pair: tuple[Process, Process]) -> None:
    here, there = pair
    li = customer("wecom")
    assert await here.say(li, "如何重置密码?")
    assert await there.desk.waiting() == []


async def test_repeated_anger_is_handed_off_with_reason_anger(pair: tuple[Process, Process]) -> None:
    here, there = pair
    ivy = customer("dingtalk")
    await here.say(ivy, "气死我了，怎么还没发货", sender_name="钉钉小艾")
    await here.say(ivy, "垃圾，到底什么时候发货！！", sender_name="钉钉小艾")
    row = await only_row(there.desk, ivy.key)
    assert (row.reason, row.reason_text, row.name) == ("anger", "客户情绪激动（多次愤怒）", "钉钉小艾")


async def test_a_failed_slot_says_so(pair: tuple[Process, Process]) -> None:
    here, there = pair
    bob = customer("web")
    await here.say(bob, "我要退款")
    for text in ("不知道", "不知道", "还是不知道"):
        await here.say(bob, text)
    row = await only_row(there.desk, bob.key)
    assert (row.reason, row.reason_text) == ("order_number", "未填完信息")
    assert row.name == "访客 " + bob.conversation_id[-6:]


async def test_the_customer_choosing_the_bot_takes_the_row_away(pair: tuple[Process, Process]) -> None:
    here, there = pair
    mei = customer("api")
    async with there.services.feed.subscribe() as feed:
        await here.say(mei, "转人工")
        assert (await only_row(there.desk, mei.key)).name == "API " + mei.user_id[:12]
        await here.say(mei, "继续咨询机器人")
        event = await next_kind(feed, "released")
        assert event.key == mei.key
    assert await there.desk.waiting() == []


# ---------------------------------------------------------------------------------------------------- take
async def test_two_agents_racing_to_take_exactly_one_wins(procs: tuple[Process, Process]) -> None:
    here, there = procs
    zhao = customer("wecom")
    await here.say(zhao, "转人工")
    got = await asyncio.gather(here.desk.take(zhao.key, "alice"), there.desk.take(zhao.key, "bob"),
                               return_exceptions=True)
    won = [g for g in got if isinstance(g, Waiting)]
    lost = [g for g in got if isinstance(g, Taken)]
    assert len(won) == 1 and len(lost) == 1, got
    winner = won[0].taken_by
    assert winner in ("alice", "bob") and lost[0].agent == winner
    loser = "bob" if winner == "alice" else "alice"
    state = await there.desk.conversation(zhao.key)
    assert state is not None and state.handoff is not None and state.handoff.agent == winner
    row = await only_row(here.desk, zhao.key)
    assert row.taken_by == winner and row.taken_at > 0

    with pytest.raises(Taken) as again:
        await here.desk.take(zhao.key, loser)
    assert again.value.agent == winner and winner in str(again.value)
    assert (await there.desk.take(zhao.key, winner)).taken_by == winner  # taking one's own again is fine
    forced = await here.desk.take(zhao.key, loser, force=True)  # an admin may
    assert forced.taken_by == loser


async def test_taken_rows_sort_after_waiting_ones_and_feed_says_taken(pair: tuple[Process, Process]) -> None:
    here, there = pair
    first, second = customer("wecom"), customer("wecom")
    await here.say(first, "转人工")
    await here.say(second, "转人工")
    assert [r.key for r in await there.desk.waiting()] == [first.key, second.key]  # the longest wait first
    async with there.services.feed.subscribe() as feed:
        await here.desk.take(first.key, "alice")
        event = await next_kind(feed, "taken")
        assert event.key == first.key and dict(event.data) == {"agent": "alice"}
    assert [r.key for r in await there.desk.waiting()] == [second.key, first.key]


async def test_only_a_handed_off_conversation_can_be_taken(pair: tuple[Process, Process]) -> None:
    here, there = pair
    wu = customer("wecom")
    with pytest.raises(NotWaiting):
        await there.desk.take(wu.key, "alice")  # nothing stored
    await here.say(wu, "你好")
    with pytest.raises(NotWaiting):
        await there.desk.take(wu.key, "alice")
    assert (await here.services.store.load(wu.key)).handoff is None


# ---------------------------------------------------------------------------------------------------- reply
async def test_reply_delivers_through_the_channel_records_and_archives(pair: tuple[Process, Process]) -> None:
    here, there = pair
    zhou = customer("wecom")
    await here.say(zhou, "转人工")
    async with there.services.feed.subscribe() as feed:
        state = await there.desk.reply(zhou.key, "alice", "  您好，我是客服小王，请问有什么可以帮您？ ", display="小王")
        event = await next_kind(feed, "reply")
        assert event.key == zhou.key and event.data["agent"] == "alice"
    sent = there.sinks["wecom"].replies[-1]
    hello = "您好，我是客服小王，请问有什么可以帮您？"
    assert (sent.to, sent.text, sent.source, dict(sent.meta)) == (zhou, hello, "agent", {"agent": "alice"})
    last = state.history[-1]
    assert last.role == "agent" and dict(last.meta) == {"agent": "alice", "display": "小王"}
    assert state.handoff is not None and state.handoff.agent == "alice" and state.handoff.agent_at > 0
    row = await only_row(here.desk, zhou.key)
    assert (row.taken_by, row.unread, row.waiting_since) == ("alice", 0, 0.0)  # untaken: the reply took it

    await here.say(zhou, "好的，订单号 YD2405120001")
    row = await only_row(there.desk, zhou.key)
    assert row.unread == 1 and row.waiting_since > 0 and row.taken_by == "alice"

    with pytest.raises(Taken) as taken:
        await here.desk.reply(zhou.key, "bob", "我来吧")
    assert taken.value.agent == "alice"

    archive = there.services.archive
    assert archive is not None
    await archive.flush()
    rows = await archive.run(lambda db: db.rows(turns, conversation=zhou.key))
    agent_rows = [r for r in rows if r["source"] == "agent"]
    assert len(agent_rows) == 1
    assert agent_rows[0]["answer"] == "您好，我是客服小王，请问有什么可以帮您？" and agent_rows[0]["question"] is None
    assert agent_rows[0]["event_id"].startswith("agent:") and agent_rows[0]["outcome"] == "ok"


async def test_reply_refuses_empty_or_too_long_text(pair: tuple[Process, Process]) -> None:
    here, there = pair
    qian = customer("wecom")
    await here.say(qian, "转人工")
    for text in ("", "   ", "答" * 4001):
        with pytest.raises(ValueError):
            await there.desk.reply(qian.key, "alice", text)
    assert not [r for r in there.sinks["wecom"].replies if r.source == "agent"]


async def test_a_failed_delivery_names_the_kind_never_the_platform_url(pair: tuple[Process, Process]) -> None:
    here, there = pair
    sun = customer("wecom")
    await here.say(sun, "转人工")
    there.sinks["wecom"].fail = True
    with pytest.raises(DeliveryFailed) as failed:
        await there.desk.reply(sun.key, "alice", "您好")
    assert (failed.value.channel, failed.value.kind) == ("wecom", "RuntimeError")
    assert "SECRET" not in str(failed.value) and "access_token" not in str(failed.value)
    row = await only_row(here.desk, sun.key)  # the turn is recorded and held all the same
    assert row.taken_by == "alice" and row.unread == 0


async def test_reply_to_an_unknown_conversation_by_key_is_not_waiting(pair: tuple[Process, Process]) -> None:
    _, there = pair
    with pytest.raises(NotWaiting):
        await there.desk.reply("wecom:corp1:nobody", "alice", "您好")


# ---------------------------------------------------------------------------------------------------- release
async def test_release_by_the_holder_gives_the_bot_back(pair: tuple[Process, Process]) -> None:
    here, there = pair
    feng = customer("wecom")
    await here.say(feng, "转人工")
    await there.desk.take(feng.key, "alice")
    with pytest.raises(Taken):
        await here.desk.release(feng.key, "bob")
    async with here.services.feed.subscribe() as feed:
        assert await there.desk.release(feng.key, "alice") is True
        event = await next_kind(feed, "released")
        assert event.key == feng.key and dict(event.data) == {"agent": "alice"}
    notice = there.sinks["wecom"].replies[-1]
    assert notice.source == "system" and "智能客服将继续为您服务" in notice.text and notice.to == feng
    assert await here.desk.waiting() == []
    back = await here.say(feng, "如何重置密码?")
    assert back and back[-1].source == "faq"
    assert await there.desk.release(feng.key, "alice") is False
    assert await here.desk.waiting() == []  # an answered turn after the release puts nothing back


async def test_an_untaken_conversation_may_be_released_by_anyone_and_quietly(pair: tuple[Process, Process]) -> None:
    here, there = pair
    chen = customer("wecom")
    await here.say(chen, "转人工")
    before = len(there.sinks["wecom"].replies)
    assert await there.desk.release(chen.key, "bob", notify=False) is True
    assert len(there.sinks["wecom"].replies) == before
    state = await here.services.store.load(chen.key)
    assert not state.handed_off and state.handoff is None


async def test_force_releases_what_another_agent_holds(pair: tuple[Process, Process]) -> None:
    here, there = pair
    han = customer("wecom")
    await here.say(han, "转人工")
    await here.desk.take(han.key, "alice")
    assert await there.desk.release(han.key, None, force=True) is True
    assert await there.desk.waiting() == []


# ---------------------------------------------------------------------------------------------------- upkeep
async def test_rows_of_expired_conversations_leave_the_inbox(pair: tuple[Process, Process]) -> None:
    here, there = pair
    gone, kept = customer("wecom"), customer("wecom")
    await here.say(gone, "转人工")
    await here.say(kept, "转人工")
    await here.services.store.delete(gone.key)  # what the idle TTL does
    assert {r.key for r in await there.desk.waiting()} == {gone.key, kept.key}  # recent rows are not checked
    ttl = there.services.config.state.idle_ttl_s
    later = AgentDesk(there.services, clock=lambda: time.time() + ttl + 60)
    assert [r.key for r in await later.waiting()] == [kept.key]  # still handed off: stays
    assert [r.key for r in await there.desk.waiting()] == [kept.key]


async def test_forget_removes_the_row_and_tells_inboxes_to_reload(pair: tuple[Process, Process]) -> None:
    here, there = pair
    tang = customer("wecom")
    await here.say(tang, "转人工")
    async with there.services.feed.subscribe() as feed:
        await here.desk.forget(tang.key)
        await next_kind(feed, RESYNC)
    assert await there.desk.waiting() == []
    redis = here.services.redis
    if redis is not None:
        entries = await redis.xrange(here.services.keys.console_feed())
        assert not [e for e in entries if e[1].get("key") == tang.key]


def test_names_and_reason_labels() -> None:
    web = ConversationRef(channel="web", conversation_id="s-0123456789abcdef", user_id="s-0123456789abcdef")
    assert display_name(web) == "访客 abcdef"
    api = ConversationRef(channel="api", conversation_id="user-0123456789abc", user_id="user-0123456789abc")
    assert display_name(api) == "API user-0123456"
    ding = ConversationRef(channel="dingtalk", conversation_id="cid", user_id="staff42")
    assert display_name(ding) == "staff42" and display_name(ding, "  王小明 ") == "王小明"
    assert reason_text("requested") == "客户要求转人工" and reason_text("safety").startswith("安全检查")
    assert reason_text("tech_unresolved") == "问题未解决" and reason_text("order_number") == "未填完信息"
    assert reason_text("custom_node", failed_slot=True) == "未填完信息" and reason_text("custom_node") == "custom_node"


# ---------------------------------------------------------------------------------------------------- canned
def test_the_shipped_canned_answers_load(tmp_path: Path) -> None:
    shipped = load_canned(Path(__file__).resolve().parents[3] / "config" / "canned.yaml")
    assert len(shipped) >= 8 and all(c.title and c.text for c in shipped)
    assert "问候" in [c.title for c in shipped]
    assert load_canned(tmp_path / "missing.yaml") == []
    (tmp_path / "ok.yaml").write_text("canned:\n  - {title: 问候, text: ' 您好 '}\n", encoding="utf-8")
    assert load_canned(tmp_path / "ok.yaml") == [Canned("问候", "您好")]


@pytest.mark.parametrize("body", ["canned: [", "canned: 5", "other: []", "canned:\n  - {title: 问候}",
                                  "canned:\n  - 只是文字", "- a\n- b"])
def test_a_malformed_canned_file_names_itself(tmp_path: Path, body: str) -> None:
    path = tmp_path / "canned.yaml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ValueError, match=r"canned\.yaml"):
        load_canned(path)
