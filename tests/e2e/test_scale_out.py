"""Gateways and workers as real processes over the real RabbitMQ and Redis.

The test process plays WeCom (signed, encrypted callbacks to the gateway; a fake
``message/send`` that records every answer) and the model (an OpenAI-compatible
fake that echoes the question with a generation counter, so each answer names
its question and says whether it was generated once). Crashes are real:
``kill -9`` of worker processes at moments the test holds still.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from tests.adapters.wecom.fake_wecom import FakeWecom, Sender, new_aes_key, text_xml
from tests.e2e.processes import HubProcess
from tests.fakes.openai_server import FakeOpenAI
from tests.services import PrivateRabbit, PrivateRedis, delete_rabbit_objects, shared_rabbit_url

CORP_ID = "ww0123456789abcdef"
TOKEN = "kefuToken"
PARTITIONS = 8
ANSWER = re.compile(r"答：(?P<user>u\d+) 第(?P<n>\d+)条#(?P<gen>\d+)")


@dataclass
class Deployment:
    env: dict[str, str]
    wecom: FakeWecom
    llm: FakeOpenAI
    sender: Sender
    logs: Path
    redis: aioredis.Redis
    prefix: str
    http: aiohttp.ClientSession
    processes: list[HubProcess] = field(default_factory=list)
    gateway: HubProcess | None = None

    async def start(self, role: str, name: str) -> HubProcess:
        proc = HubProcess(role, self.env, self.logs, name)
        self.processes.append(proc)
        await asyncio.to_thread(proc.start)
        if role == "gateway":
            self.gateway = proc
        return proc

    async def say(self, user: str, n: int) -> None:
        """One customer message as WeCom sends it; WeCom retries until it gets a 200."""
        assert self.gateway is not None
        params, body = self.sender.app_post(text_xml(user, f"{user} 第{n}条", f"{user}-{n}-{uuid.uuid4().hex[:6]}"))
        for _ in range(150):  # WeCom retries for a while; a broker restart takes ~10 s
            try:
                async with self.http.post(f"{self.gateway.url}/wecom/callback", params=params,
                                          data=body.encode()) as r:
                    if r.status == 200:
                        return
                    assert r.status == 503, f"gateway answered {r.status}"
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.2)
        raise AssertionError(f"gateway kept refusing {user} #{n}")

    async def conversations(self, users: int, per_user: int) -> None:
        """Customers write at the same time; each sends the next message once WeCom took the previous one."""

        async def customer(u: int) -> None:
            for n in range(per_user):
                await self.say(f"u{u}", n)

        await asyncio.gather(*(customer(u) for u in range(users)))

    def answers(self) -> dict[str, list[tuple[int, int]]]:
        """user -> [(message number, generation number)] in the order WeCom received the sends."""
        out: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for text in self.wecom.texts():
            m = ANSWER.search(text)
            assert m, f"unexpected answer {text!r}"
            out[m["user"]].append((int(m["n"]), int(m["gen"])))
        return out

    async def wait_for_sends(self, count: int, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.wecom.sends) < count:
            if time.monotonic() > deadline:
                got = {u: [n for n, _ in a] for u, a in sorted(self.answers().items())}
                raise AssertionError(f"{len(self.wecom.sends)} of {count} answers sent: {got}; "
                                     f"{await self._queued()}\n" + self._logs())
            await asyncio.sleep(0.05)

    async def settled(self, expected: int, timeout_s: float = 30) -> None:
        """Nothing waits in any partition and every event's ledger says its answer left, so no
        late redelivery can still send a second copy after the test looks."""
        import aio_pika

        connection = await aio_pika.connect(self.env["BOT__QUEUE__URL"])
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                channel = await connection.channel()
                total = 0
                for i in range(PARTITIONS):
                    q = await channel.declare_queue(f"{self.env['BOT__QUEUE__NAME']}.p{i:03d}", passive=True)
                    total += q.declaration_result.message_count or 0
                await channel.close()
                values = [await self.redis.get(k) async for k in self.redis.scan_iter(match=f"{self.prefix}:reply:*")]
                if total == 0 and len(values) >= expected and all(v == "" for v in values):
                    return
                if time.monotonic() > deadline:
                    raise AssertionError(f"{total} events still queued, {len(values)} ledger entries")
                await asyncio.sleep(0.1)
        finally:
            await connection.close()

    async def _queued(self) -> str:
        """Where the unanswered events are, for the failure message."""
        import aio_pika

        try:
            connection = await aio_pika.connect(self.env["BOT__QUEUE__URL"])
        except Exception as exc:
            return f"broker unreachable: {exc!r}"
        try:
            channel = await connection.channel()
            name = self.env["BOT__QUEUE__NAME"]
            counts = {}
            for q in [f"{name}.p{i:03d}" for i in range(PARTITIONS)] + [f"{name}.dead"]:
                declared = await channel.declare_queue(q, passive=True)
                counts[q] = (declared.declaration_result.message_count, declared.declaration_result.consumer_count)
            return f"queues (ready, consumers): {counts}"
        finally:
            await connection.close()

    async def ledger_entries(self) -> int:
        return len([k async for k in self.redis.scan_iter(match=f"{self.prefix}:reply:*")])

    def _logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.log()}" for p in self.processes)


@pytest.fixture
async def deployment(redis_url: str, key_prefix: str, tmp_path: Path) -> AsyncIterator[Deployment]:
    async with open_deployment(redis_url, shared_rabbit_url(), key_prefix, tmp_path) as dep:
        yield dep


@contextlib.asynccontextmanager
async def open_deployment(redis_url: str, rabbit: str, key_prefix: str, tmp_path: Path) -> AsyncIterator[Deployment]:
    wecom = FakeWecom()
    wecom.server = TestServer(wecom.app(), host="127.0.0.1")
    await wecom.server.start_server()
    llm = await FakeOpenAI(echo=True).start()
    name = f"kefutest-{uuid.uuid4().hex[:8]}"
    aes = new_aes_key()
    env = {
        "BOT__STATE__URL": redis_url, "BOT__STATE__KEY_PREFIX": key_prefix,
        "BOT__QUEUE__URL": rabbit, "BOT__QUEUE__NAME": name, "BOT__QUEUE__PARTITIONS": str(PARTITIONS),
        "BOT__QUEUE__LEASE_S": "2",
        "BOT__ENGINE__KIND": "openai", "BOT__ENGINE__OPENAI__BASE_URL": llm.base_url,
        "BOT__ENGINE__OPENAI__RETRIES": "0", "BOT__HUB__ENGINE_DEADLINE_S": "60", "BOT__HUB__TURN_DEADLINE_S": "90",
        "BOT__DIALOGUE__ENABLED": "false", "BOT__FAQ__THRESHOLD": "1",
        "BOT__WECOM__CORP_ID": CORP_ID, "BOT__WECOM__TOKEN": TOKEN, "BOT__WECOM__AES_KEY": aes,
        "BOT__WECOM__SECRET": "app-secret", "BOT__WECOM__AGENT_ID": "1000002", "BOT__WECOM__API_BASE": wecom.url,
        "BOT__WECOM__REPLAY_WINDOW_S": "0", "BOT__WECOM__USER_RATE_PER_MIN": "10000",
        "BOT__WEB__ENABLED": "false",
        # the archive has its own tests (tests/bot/archive); here three processes would share one SQLite file
        "BOT__ARCHIVE__ENABLED": "false",
    }
    client = aioredis.from_url(redis_url, decode_responses=True)
    http = aiohttp.ClientSession()
    dep = Deployment(env, wecom, llm, Sender(TOKEN, aes, CORP_ID), tmp_path, client, key_prefix, http)
    try:
        yield dep
    finally:
        for proc in dep.processes:
            proc.close()
        await http.close()
        if wecom.token_gate is not None:
            wecom.token_gate.set()
        await wecom.server.close()
        await llm.close()
        keys = [k async for k in client.scan_iter(match=f"{key_prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        await delete_rabbit_objects(
            rabbit, queues=[f"{name}.p{i:03d}" for i in range(PARTITIONS)] + [f"{name}.dead"],
            exchanges=[f"{name}.in", f"{name}.dead", f"{name}.replies"])


async def until(condition: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


def held(gate: asyncio.Event) -> Callable[[int], Awaitable[object]]:
    async def pace(_i: int) -> object:
        return await gate.wait()

    return pace


def assert_once_in_order(answers: dict[str, list[tuple[int, int]]], users: int, per_user: int) -> None:
    assert sorted(answers) == sorted(f"u{u}" for u in range(users))
    for user, got in answers.items():
        assert [n for n, _ in got] == list(range(per_user)), f"{user}: answers out of order, missing or doubled"


async def test_kill_9_of_a_worker_mid_turn_loses_nothing_and_answers_once(deployment: Deployment) -> None:
    gate = asyncio.Event()
    deployment.llm.pace = held(gate)  # every turn stops inside the model until the crash is done
    await deployment.start("gateway", "gateway")
    victim = await deployment.start("worker", "worker-a")
    await deployment.start("worker", "worker-b")
    users, per_user = 8, 4
    await deployment.conversations(users, per_user)
    await until(lambda: len(deployment.llm.requests) >= users)  # one turn per conversation is inside the model
    await asyncio.to_thread(victim.kill)
    gate.set()
    await deployment.wait_for_sends(users * per_user)
    await deployment.settled(users * per_user)
    answers = deployment.answers()
    assert_once_in_order(answers, users, per_user)
    assert len(deployment.wecom.sends) == users * per_user


async def test_a_crash_after_the_answer_was_decided_sends_that_answer_once(deployment: Deployment) -> None:
    deployment.wecom.token_gate = asyncio.Event()  # turns are decided and saved, then wait for an access token
    await deployment.start("gateway", "gateway")
    workers = [await deployment.start("worker", f"worker-{i}") for i in range(2)]
    users, per_user = 4, 2
    await deployment.conversations(users, per_user)
    while await deployment.ledger_entries() < users:  # noqa: ASYNC110 (each conversation's first answer decided)
        await asyncio.sleep(0.05)
    generated_before = len(deployment.llm.requests)
    for w in workers:
        await asyncio.to_thread(w.kill)
    deployment.wecom.token_gate.set()
    await deployment.start("worker", "worker-after")
    await deployment.wait_for_sends(users * per_user)
    await deployment.settled(users * per_user)
    answers = deployment.answers()
    assert_once_in_order(answers, users, per_user)
    # the decided answers were sent as recorded, not generated again
    assert len(deployment.llm.requests) == users * per_user
    first = {user: got[0][1] for user, got in answers.items()}
    assert all(gen <= generated_before for gen in first.values())


async def test_a_thousand_messages_from_fifty_users_through_two_workers(deployment: Deployment) -> None:
    await deployment.start("gateway", "gateway")
    await deployment.start("worker", "worker-a")
    await deployment.start("worker", "worker-b")
    users, per_user = 50, 20
    await deployment.conversations(users, per_user)
    await deployment.wait_for_sends(users * per_user, timeout_s=240)
    await deployment.settled(users * per_user)
    assert_once_in_order(deployment.answers(), users, per_user)
    assert len(deployment.llm.requests) == users * per_user


async def test_sigterm_with_turns_in_flight_loses_nothing(deployment: Deployment) -> None:
    gate = asyncio.Event()
    deployment.llm.pace = held(gate)
    await deployment.start("gateway", "gateway")
    leaving = await deployment.start("worker", "worker-a")
    await deployment.start("worker", "worker-b")
    users, per_user = 6, 3
    await deployment.conversations(users, per_user)
    await until(lambda: len(deployment.llm.requests) >= users)
    stopping = asyncio.create_task(asyncio.to_thread(leaving.terminate, 60))
    await asyncio.sleep(1)  # the worker is draining: its turns are still inside the model
    gate.set()
    assert await stopping == 0
    await deployment.wait_for_sends(users * per_user)
    await deployment.settled(users * per_user)
    assert_once_in_order(deployment.answers(), users, per_user)


async def test_redis_and_rabbitmq_restarts_during_traffic_lose_nothing(
    private_redis: PrivateRedis, private_rabbit: PrivateRabbit, key_prefix: str, tmp_path: Path
) -> None:
    """Both services of our own are stopped and started again while customers write; the gateway
    answers 503 meanwhile (WeCom retries) and everything accepted is answered once the services are back."""
    async with open_deployment(private_redis.url, private_rabbit.url, key_prefix, tmp_path) as deployment:
        await deployment.start("gateway", "gateway")
        await deployment.start("worker", "worker-a")
        await deployment.start("worker", "worker-b")
        users, per_user = 6, 12
        traffic = asyncio.create_task(deployment.conversations(users, per_user))
        await until(lambda: len(deployment.wecom.sends) >= 10)
        await asyncio.to_thread(private_redis.restart)
        await until(lambda: len(deployment.wecom.sends) >= 25, timeout_s=90)
        await asyncio.to_thread(private_rabbit.restart)
        await asyncio.wait_for(traffic, 180)
        await deployment.wait_for_sends(users * per_user, timeout_s=120)
        await deployment.settled(users * per_user, timeout_s=60)
        assert_once_in_order(deployment.answers(), users, per_user)


async def test_a_poison_message_is_parked_in_the_dead_letter_queue_and_the_rest_flow(deployment: Deployment) -> None:
    import aio_pika

    await deployment.start("gateway", "gateway")
    worker = await deployment.start("worker", "worker-a")
    name = deployment.env["BOT__QUEUE__NAME"]
    connection = await aio_pika.connect(deployment.env["BOT__QUEUE__URL"])
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange(f"{name}.in")
        for i in range(PARTITIONS):  # whichever partition: a body that is no event of ours
            await exchange.publish(aio_pika.Message(b'{"f": 1, "id": ["not", "an", "event"]}'), routing_key=str(i))
        await deployment.conversations(3, 2)
        await deployment.wait_for_sends(6)

        async def parked() -> int:
            q = await channel.declare_queue(f"{name}.dead", passive=True)
            return q.declaration_result.message_count or 0

        deadline = time.monotonic() + 30
        while await parked() < PARTITIONS:
            assert time.monotonic() < deadline, "poison messages not dead-lettered"
            await asyncio.sleep(0.1)
    finally:
        await connection.close()
    async with deployment.http.get(f"{worker.url}/metrics") as resp:
        assert f"kefu_queue_dead_lettered_total {float(PARTITIONS)}" in await resp.text()
    assert_once_in_order(deployment.answers(), 3, 2)
