"""Online A/B tests (bot/ab/): a user's arm is a stable function of the test and the user, in every
process; the arms' shares follow the weights; the arm's adapter is the one the model is asked for (an arm
overrides a node's adapter, the base arm included); the arm rides on the replies and into the archive; turns,
latency, fallbacks and votes per arm are in /metrics; a wrong test is a ConfigError naming it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.ab.assign import ArmChoice, bucket, choose, current_arm, pick, user_key
from bot.ab.step import AbAssign, AbTag
from bot.answer import Answerer
from bot.app import SERVICES_KEY
from bot.config import ConfigError
from bot.metrics import Metrics
from bot.pipeline import Dialogue, TurnContext
from bot.services import Services
from bot.state import DialogueState
from bot.turn import TurnResult
from bot.types import ConversationRef, Event, EventKind, Reply
from engine.base import GenerationRequest
from engine.config import AbArm, AbTest
from tests.bot.archive.helpers import archived
from tests.conftest import make_config, start_server
from tests.fakes.openai_server import FakeOpenAI

ROOT = Path(__file__).resolve().parents[2]
TEST = AbTest(name="lora-v2", arms=[AbArm(name="base", adapter=None, weight=0.7),
                                    AbArm(name="v2", adapter="zh_v2", weight=0.3)])


def ab_tests(*tests: dict[str, Any]) -> str:
    return json.dumps(list(tests))


LORA = {"name": "lora-v2", "arms": [{"name": "base", "adapter": None, "weight": 1},
                                    {"name": "v2", "adapter": "zh_v2", "weight": 1}]}


def ref(user: str, channel: str = "api", tenant: str = "") -> ConversationRef:
    return ConversationRef(channel=channel, conversation_id=user, user_id=user, tenant=tenant)


def users_in(test: AbTest, arm: str, count: int, channel: str = "api") -> list[str]:
    found = [u for u in (f"user-{i}" for i in range(1000)) if choose(test, ref(u, channel)).arm == arm]
    return found[:count]


# ---------------------------------------------------------------- assignment


def test_assignment_is_stable_across_calls_conversations_and_processes() -> None:
    users = [f"user-{i}" for i in range(300)]
    here = [pick(TEST, user_key(ref(u))).name for u in users]
    assert here == [pick(TEST, user_key(ref(u))).name for u in users]
    # another conversation of the same user: the same arm (the conversation id is not in the key)
    other = [choose(TEST, ConversationRef("api", f"{u}-again", u)).arm for u in users]
    assert other == here
    # a fresh interpreter (its own hash seed) computes the same arms
    code = (
        "import json, sys\n"
        "from bot.ab.assign import pick, user_key\n"
        "from bot.types import ConversationRef\n"
        "from engine.config import AbTest\n"
        "test = AbTest.model_validate(json.loads(sys.argv[1]))\n"
        "print(json.dumps([pick(test, user_key(ConversationRef('api', u, u))).name for u in json.loads(sys.argv[2])]))"
    )
    out = subprocess.run([sys.executable, "-c", code, TEST.model_dump_json(), json.dumps(users)], cwd=ROOT,
                         capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "random"})
    assert json.loads(out.stdout) == here
    assert set(here) == {"base", "v2"}


@pytest.mark.parametrize("weights", [(0.7, 0.3), (7, 3), (1, 1, 2)])
def test_shares_over_ten_thousand_users_match_the_weights(weights: tuple[float, ...]) -> None:
    test = AbTest(name="shares", arms=[AbArm(name=f"a{i}", weight=w) for i, w in enumerate(weights)])
    counts = Counter(pick(test, user_key(ref(f"u{i}", tenant="corp"))).name for i in range(10_000))
    total = sum(weights)
    for i, w in enumerate(weights):
        assert abs(counts[f"a{i}"] / 10_000 - w / total) < 0.02, counts


def test_a_new_test_reshuffles_users_and_users_are_spread_uniformly() -> None:
    other = TEST.model_copy(update={"name": "lora-v3"})
    keys = [user_key(ref(f"u{i}")) for i in range(2000)]
    same = sum(pick(TEST, k).name == pick(other, k).name for k in keys)
    assert same < 0.7 * len(keys)  # independent 70/30 draws agree about 58 % of the time, never all
    positions = [bucket("lora-v2", k) for k in keys]
    assert all(0 <= p < 1 for p in positions)
    deciles = Counter(int(p * 10) for p in positions)
    assert all(abs(n - 200) < 60 for n in deciles.values()) and len(deciles) == 10


def test_the_user_not_the_channel_alone_decides() -> None:
    # the same user id on two channels or tenants is two users
    arms = {choose(TEST, ref("same", channel, tenant)).arm for channel in ("api", "web", "wecom")
            for tenant in ("", "t1", "t2", "t3")}
    assert arms == {"base", "v2"}


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(("tests", "adapters", "expected"), [
    ([{**LORA, "arms": [{"name": "base", "weight": 1}, {"name": "v2", "adapter": "nope", "weight": 1}]}],
     "{zh_v2: x}", "A/B test 'lora-v2' arm 'v2': adapter 'nope' is not in engine.adapters"),
    ([{**LORA, "arms": [{"name": "base", "weight": 0}, {"name": "v2", "adapter": "zh_v2", "weight": 1}]}],
     "{zh_v2: x}", "ab_tests.0.arms.0.weight: Input should be greater than 0"),
    ([{**LORA, "arms": [{"name": "v2", "weight": 1}, {"name": "v2", "adapter": "zh_v2", "weight": 1}]}],
     "{zh_v2: x}", "A/B test 'lora-v2': arm names must be unique (v2 twice)"),
    ([LORA, {**LORA, "enabled": False}], "{zh_v2: x}", "A/B test names must be unique: 'lora-v2' twice"),
    ([LORA, {**LORA, "name": "other"}], "{zh_v2: x}",
     "at most one A/B test may be enabled at a time; enabled: lora-v2, other"),
    ([{**LORA, "arms": LORA["arms"][:1]}], "{zh_v2: x}", "ab_tests.0.arms: List should have at least 2 items"),
    ([{**LORA, "name": "Bad Name"}], "{zh_v2: x}", "ab_tests.0.name: Value error, use lower-case letters"),
])
def test_a_wrong_test_is_a_config_error_naming_it(tests: list[dict[str, Any]], adapters: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config({"engine.adapters": adapters, "engine.ab_tests": ab_tests(*tests)})
    assert expected in str(caught.value)


def test_a_disabled_test_is_kept_but_not_run() -> None:
    config = make_config({"engine.adapters": "{zh_v2: x}",
                          "engine.ab_tests": ab_tests({**LORA, "enabled": False}, {**LORA, "name": "next"})})
    assert config.engine.ab_test is not None and config.engine.ab_test.name == "next"
    off = make_config({"engine.adapters": "{zh_v2: x}", "engine.ab_tests": ab_tests({**LORA, "enabled": False})})
    services = Services(off)
    assert services.ab is None and "ab" not in [s.name for s in services.hub.pipeline.deciding]


def test_the_steps_come_first_and_last() -> None:
    config = make_config({"engine.adapters": "{zh_v2: x}", "engine.ab_tests": ab_tests(LORA)})
    names = [s.name for s in Services(config).hub.pipeline.deciding]
    assert names[0] == "ab" and names[-1] == "ab_tag" and names.index("dialogue") > 0


# ---------------------------------------------------------------- the adapter the model gets


class RecordingEngine:
    name = "recording"

    def __init__(self) -> None:
        self.adapters: list[str | None] = []

    async def stream(self, request: GenerationRequest):
        self.adapters.append(request.adapter)
        yield "模型回答"


class NoFaq:
    """An FAQ that knows nothing: every question goes to the model."""

    floor = 0.5

    def search(self, _query: str, k: int = 3) -> list[Any]:
        return []

    async def asearch(self, query: str, k: int = 3) -> list[Any]:
        return self.search(query, k)

    def confident(self, _hits: Any) -> bool:
        return False

    def uncertain(self, _hits: Any) -> bool:
        return False


async def test_an_arm_overrides_the_node_adapter_and_the_base_arm_means_no_adapter() -> None:
    engine = RecordingEngine()
    answerer = Answerer(NoFaq(), engine, system_prompt="你好", deadline_s=5, metrics=Metrics())  # type: ignore[arg-type]

    async def ask(choice: ArmChoice | None, node_adapter: str | None) -> None:
        token = current_arm.set(choice)
        try:
            answer = await answerer.answer("问题", adapter=node_adapter)
            assert answer.source == "llm"
        finally:
            current_arm.reset(token)

    await ask(None, "zh")  # no test: the node's adapter
    await ask(ArmChoice("t", "v2", "zh_v2"), "zh")  # the arm's adapter wins
    await ask(ArmChoice("t", "base", None), "zh")  # the base arm: the base model, whatever the node says
    await ask(ArmChoice("t", "v2", "zh_v2"), None)
    assert engine.adapters == ["zh", "zh_v2", None, "zh_v2"]


class AnswerWithArm:
    """A turn handler that asks the model the way a dialogue ``llm`` node does (node adapter "zh")."""

    def __init__(self, answerer: Answerer) -> None:
        self.answerer = answerer

    async def handle(self, event: Event, state: DialogueState, stream: Any) -> TurnResult:
        await asyncio.sleep(0.01)  # let the other conversation's turn run in between
        answer = await self.answerer.answer(event.text or "", adapter="zh")
        return TurnResult(state, (Reply(event.ref, answer.text, in_reply_to=event.id, source=answer.source,
                                        meta={"node": "ask"}),))


async def test_concurrent_turns_each_use_their_own_arm_and_replies_carry_it() -> None:
    engine = RecordingEngine()
    answerer = Answerer(NoFaq(), engine, system_prompt="你好", deadline_s=5, metrics=Metrics())  # type: ignore[arg-type]
    steps = [AbAssign(TEST), Dialogue(AnswerWithArm(answerer)), AbTag()]
    (base_user,), (v2_user,) = users_in(TEST, "base", 1), users_in(TEST, "v2", 1)

    async def turn(user: str) -> TurnContext:
        ctx = TurnContext(Event(f"e-{user}", EventKind.MESSAGE, ref(user), text="在吗"),
                          state=DialogueState(key=user))
        for step in steps:
            await step.run(ctx)
        assert current_arm.get() is None  # cleared at the end of the turn
        return ctx

    base, v2 = await asyncio.gather(*(asyncio.create_task(turn(u)) for u in (base_user, v2_user)))
    assert sorted(engine.adapters, key=str) == sorted([None, "zh_v2"], key=str)
    assert (base.arm, base.ab_test, base.arm_adapter) == ("lora-v2/base", "lora-v2", None)
    assert (v2.arm, v2.arm_adapter) == ("lora-v2/v2", "zh_v2")
    (reply,) = v2.replies
    assert dict(reply.meta) == {"node": "ask", "arm": "lora-v2/v2", "ab_test": "lora-v2", "adapter": "zh_v2"}
    assert base.replies[0].meta["adapter"] is None and base.replies[0].meta["arm"] == "lora-v2/base"


# ---------------------------------------------------------------- through the hub


def sample(registry: Any, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_through_the_hub_the_model_gets_the_arm_adapter_and_the_arm_is_archived_and_measured(
    tmp_path: Path,
) -> None:
    test = AbTest.model_validate(LORA)
    base_users, v2_users = users_in(test, "base", 2), users_in(test, "v2", 2)
    async with FakeOpenAI(["您好，", "模型回答。"], script=["ok", "ok", "ok", "503"]) as llm:
        config = make_config({
            "engine.kind": "openai", "engine.openai.base_url": llm.base_url, "engine.openai.model": "base-model",
            "engine.openai.retries": 0, "engine.adapters": "{zh_v2: unused-by-openai}",
            "engine.ab_tests": ab_tests(LORA), "dialogue.enabled": "false", "faq.threshold": "1",
            "archive.url": f"sqlite:///{tmp_path}/archive.db", "archive.flush_interval_s": "0.05",
        })
        server = await start_server(config)
        services: Services = server.app[SERVICES_KEY]
        try:
            async with aiohttp.ClientSession() as http:
                async def ask(user: str) -> dict[str, Any]:
                    async with http.post(server.make_url("/chat"),
                                         json={"query": "这个保温杯能装开水吗", "user_id": user}) as resp:
                        assert resp.status == 200, await resp.text()
                        return await resp.json()

                first = await asyncio.gather(ask(base_users[0]), ask(v2_users[0]))
                assert [a["source"] for a in first] == ["llm", "llm"]
                assert sorted(r["model"] for r in llm.requests) == ["base-model", "zh_v2"]
                again = await ask(v2_users[0])  # a later turn of the same user: the same arm
                assert again["source"] == "llm" and llm.requests[-1]["model"] == "zh_v2"
                failed = await ask(base_users[1])  # the model answers 503: a fallback in the base arm
                assert failed["source"] in ("fallback", "unknown")
                async with http.get(server.make_url("/metrics")) as resp:
                    text = await resp.text()
            assert services.archive is not None
            rows = await archived(services.archive, 4)
        finally:
            await server.close()
    by_user = {r["conversation"].rsplit(":", 1)[1]: r for r in rows}
    assert {by_user[u]["arm"] for u in (base_users[0], base_users[1])} == {"lora-v2/base"}
    assert by_user[v2_users[0]]["arm"] == "lora-v2/v2" and by_user[v2_users[0]]["adapter"] == "zh_v2"
    assert by_user[base_users[0]]["adapter"] is None
    assert 'kefu_ab_turns_total{arm="base",test="lora-v2"} 2.0' in text
    assert 'kefu_ab_turns_total{arm="v2",test="lora-v2"} 2.0' in text
    assert 'kefu_ab_fallbacks_total{arm="base",test="lora-v2"} 1.0' in text
    assert 'kefu_ab_fallbacks_total{arm="v2",test="lora-v2"}' not in text
    assert 'kefu_ab_latency_seconds_count{arm="v2",test="lora-v2"} 2.0' in text
    assert 'kefu_ab_latency_seconds_count{arm="base",test="lora-v2"} 2.0' in text


async def test_a_vote_counts_for_the_voters_arm(tmp_path: Path) -> None:
    config = make_config({"engine.adapters": "{zh_v2: x}", "engine.ab_tests": ab_tests(LORA),
                          "archive.url": f"sqlite:///{tmp_path}/archive.db", "archive.flush_interval_s": "0.05"})
    server = await start_server(config)
    services: Services = server.app[SERVICES_KEY]
    assert services.archive is not None
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(server.make_url("/api/web/session"), json={}) as resp:
                session = await resp.json()
            headers = {"Authorization": f"Bearer {session['token']}"}
            async with http.post(server.make_url("/api/web/messages"), headers=headers,
                                 json={"text": "运费怎么算", "client_id": "msg-00001"}) as resp:
                assert resp.status == 202, await resp.text()
            (turn,) = await archived(services.archive, 1)
            async with http.post(server.make_url("/api/web/feedback"), headers=headers,
                                 json={"answer_id": "msg-00001", "rating": "down"}) as resp:
                assert resp.status == 200, await resp.text()
            await archived(services.archive, 1, "feedback")
            async with http.get(server.make_url("/metrics")) as resp:
                text = await resp.text()
    finally:
        await server.close()
    test, arm = turn["arm"].split("/")
    assert test == "lora-v2" and arm in ("base", "v2")
    assert f'kefu_ab_feedback_total{{arm="{arm}",rating="down",test="lora-v2"}} 1.0' in text
    assert sample(services.metrics.registry, "kefu_ab_turns_total", test="lora-v2", arm=arm) == 1
