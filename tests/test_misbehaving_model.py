"""A model that misbehaves, through the whole stack: the hub with the OpenAI-compatible engine pointed at
loopback fakes that echo their whole prompt (system prompt and dialogue instructions included), invent a
phone or ID number the customer never gave, or stream a blocked phrase one character at a time. Over
``POST /chat`` (whole answers) and the web widget's SSE stream (every event read): nothing of the
instructions and no invented personal data reaches the customer; an answer that repeats the customer's
own phone number is delivered, and so is an ordinary one, unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bot.config import Config
from bot.messages import text as fixed_text
from bot.pipeline import Dialogue
from bot.safety.blocklist import Blocklist
from bot.safety.normalize import squeeze
from bot.safety.output_filter import OutputFilter, internal_texts
from bot.services import Services
from tests.adapters.web.conftest import SECRET, auth, new_session, read_sse
from tests.conftest import make_config, start_server
from tests.fakes.openai_server import FakeOpenAI

UNSURE = "帮我看看这个保温杯能不能装开水"  # the FAQ is unsure: the dialogue's llm node asks the model
MINE = "13812345678"
INVENTED_PHONE = ["好的，", "这个", "问题", "请直接", "联系", "我们", "经理", "，", "手机", " 139", "1234", "5678",
                  "，", "他会", "为您", "处理。"]
INVENTED_ID = ["已为您", "查到", "登记", "信息：", "身份证号 ", "110105", "19491231", "002X", "，", "请核对。"]
BLOCKED = "代开发票"
ORDINARY = ["您好，", "保温杯", "可以", "装开水，", "建议", "不要", "装满，", "以免", "烫伤。"]
FALLBACK = fixed_text("safety_fallback", "zh")


def pieces(text: str, size: int) -> list[str]:
    """Runs of ``size`` significant characters of ``text``: if any reached the customer, so did a leak."""
    squeezed = squeeze(text)
    return [squeezed[i : i + size] for i in range(0, max(1, len(squeezed) - size + 1))]


@pytest.fixture(params=["memory", "redis"])
def store_overrides(request: pytest.FixtureRequest, redis_url: str, key_prefix: str) -> dict[str, Any]:
    return {} if request.param == "memory" else {"state.url": redis_url, "state.key_prefix": key_prefix}


class Hub:
    """A running server whose turns go ``stream guard -> dialogue -> output filter``."""

    def __init__(self, server: TestServer, services: Services, llm: FakeOpenAI) -> None:
        self.server, self.services, self.llm = server, services, llm

    @property
    def instructions(self) -> list[str]:
        handler = self.services.hub.handler
        return internal_texts(self.services.config.engine.system_prompt, getattr(handler, "graph", None))

    def system_prompt_sent(self) -> str:
        return self.llm.requests[-1]["messages"][0]["content"]


@pytest.fixture
async def hub_with(store_overrides: dict[str, Any]) -> AsyncIterator[Any]:
    running: list[tuple[TestServer, FakeOpenAI]] = []

    async def start(**fake: Any) -> Hub:
        llm = await FakeOpenAI(model="test", **fake).start()
        config: Config = make_config({
            "engine.kind": "openai", "engine.openai.base_url": llm.base_url, "engine.openai.model": "test",
            "engine.openai.retries": 0, "engine.openai.timeout_s": 5, "hub.engine_deadline_s": 10,
            "web.session_secret": SECRET, **store_overrides,
        })
        services = Services(config)
        out = OutputFilter(config.safety.output, services.metrics, blocklist=Blocklist([BLOCKED]),
                           internal=internal_texts(config.engine.system_prompt,
                                                   getattr(services.hub.handler, "graph", None)),
                           operator_texts=[entry.answer for entry in services.faq.by_id.values()])
        services.hub.pipeline.deciding = (out.stream_step(), Dialogue(services.hub.handler), out)
        server = await start_server(config, services)
        running.append((server, llm))
        return Hub(server, services, llm)

    yield start
    for server, llm in running:
        await server.close()
        await llm.close()


async def chat(hub: Hub, query: str, user_id: str = "visitor-1") -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.post(
        hub.server.make_url("/chat"), json={"query": query, "user_id": user_id}
    ) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def widget(hub: Hub, texts: Sequence[str]) -> list[list[dict[str, Any]]]:
    """Each message sent from one widget session, with every SSE event up to its ``done``."""
    answers: list[list[dict[str, Any]]] = []
    async with aiohttp.ClientSession() as http:
        s = await new_session(http, hub.server)
        async with http.get(hub.server.make_url("/api/web/stream"), headers=auth(s["token"])) as stream:
            for i, text in enumerate(texts):
                async with http.post(hub.server.make_url("/api/web/messages"), headers=auth(s["token"]),
                                     json={"text": text, "client_id": f"msg-{i:04d}"}) as resp:
                    assert resp.status == 202, await resp.text()
                events: list[dict[str, Any]] = []
                while not events or events[-1]["type"] != "done":
                    got = await read_sse(stream, 1)
                    assert got, "the stream ended before the answer was done"
                    events.append(got[0][1])
                answers.append(events)
    return answers


def screen(events: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """What the widget showed while streaming (deltas put together at their offsets) and the final reply."""
    shown = ""
    final = ""
    for ev in events:
        if ev["type"] == "delta":
            if ev["offset"] == 0:
                shown = ""
            if ev["offset"] == len(shown):
                shown += ev["text"]
        elif ev["type"] == "reply":
            final = ev["text"]
    return shown, final


def everything(events: Sequence[dict[str, Any]]) -> str:
    """Every text any event carried, joined: what a client could have read, however it renders."""
    return "\n".join(str(ev.get("text", "")) for ev in events)


def assert_no_leak(hub: Hub, seen: str) -> None:
    flat = squeeze(seen)
    for text in hub.instructions:
        for piece in pieces(text, 8):
            assert piece not in flat, f"a piece of the instructions reached the customer: {piece}"


# ---------------------------------------------------------------- the system prompt


async def test_a_model_that_echoes_its_prompt_leaks_nothing_in_a_whole_answer(hub_with) -> None:
    hub = await hub_with(echo_prompt=True)
    body = await chat(hub, UNSURE)
    assert hub.services.config.engine.system_prompt in hub.system_prompt_sent()  # the fake did leak it
    assert body["answer"] == FALLBACK and body["source"] == "fallback"
    assert_no_leak(hub, str(body))


async def test_a_model_that_echoes_its_prompt_leaks_nothing_while_streaming(hub_with) -> None:
    hub = await hub_with(echo_prompt=True, piece_chars=2)
    (events,) = await widget(hub, [UNSURE])
    _shown, final = screen(events)
    assert final == FALLBACK
    assert_no_leak(hub, everything(events))
    assert "system" not in everything(events).lower()


# ---------------------------------------------------------------- invented personal data


@pytest.mark.parametrize("tokens,secret", [(INVENTED_PHONE, "13912345678"), (INVENTED_ID, "11010519491231002X")])
async def test_invented_personal_data_never_reaches_the_customer(hub_with, tokens: list[str], secret: str) -> None:
    hub = await hub_with(tokens=tokens)
    body = await chat(hub, UNSURE)
    assert body["answer"] == FALLBACK
    assert secret[:7] not in str(body).replace(" ", "")
    (events,) = await widget(hub, [UNSURE])
    _shown, final = screen(events)
    assert final == FALLBACK
    seen = everything(events).replace(" ", "")
    assert secret[:6] not in seen and secret[-4:] not in seen  # not even a part of the number was shown


async def test_the_customers_own_number_may_be_repeated_back(hub_with) -> None:
    hub = await hub_with(echo=True)  # answers "答：<the customer's message>#n"
    asked = f"{UNSURE}，不行的话打{MINE}找我"
    body = await chat(hub, asked)
    assert body["source"] == "llm" and MINE in body["answer"]
    (events,) = await widget(hub, [asked])
    _shown, final = screen(events)
    # delivered, not replaced; the widget's event log keeps every text redacted (bot/privacy), the number too
    assert final != FALLBACK and final.startswith("答：") and MINE in final.replace("[手机号]", MINE)


async def test_the_customers_number_from_an_earlier_message_may_be_repeated_later(hub_with) -> None:
    """The history keeps messages redacted; the digest on the earlier turn still knows the number."""
    hub = await hub_with(tokens=["好的，", "我们", "会致电 ", MINE, " 与您", "确认", "保温杯", "的问题。"])
    first = await chat(hub, f"{UNSURE}，不行的话打{MINE}找我", user_id="repeat-1")
    later = await chat(hub, UNSURE, user_id="repeat-1")
    assert first["source"] == later["source"] == "llm" and MINE in later["answer"]


# ---------------------------------------------------------------- the blocklist, streamed token by token


async def test_a_blocked_phrase_streamed_one_character_at_a_time_never_shows(hub_with) -> None:
    answer = (f"好的，感谢您的耐心等待，关于您咨询的问题，我们这边已经确认过了，可以帮您{BLOCKED}，"
              "请提供您的公司名称和税号，我们会尽快为您办理。")
    hub = await hub_with(tokens=list(answer))
    (events,) = await widget(hub, [UNSURE])
    shown, final = screen(events)
    assert final == FALLBACK
    assert shown and answer.startswith(shown)  # the answer's safe beginning was shown, then nothing more
    assert squeeze(BLOCKED) not in squeeze(everything(events))
    assert BLOCKED[:2] not in shown
    body = await chat(hub, UNSURE)
    assert body["answer"] == FALLBACK


# ---------------------------------------------------------------- an ordinary answer


async def test_an_ordinary_answer_is_delivered_unchanged(hub_with) -> None:
    hub = await hub_with(tokens=ORDINARY)
    body = await chat(hub, UNSURE)
    assert body["answer"] == "".join(ORDINARY) and body["source"] == "llm"
    (events,) = await widget(hub, [UNSURE])
    shown, final = screen(events)
    assert final == "".join(ORDINARY)
    assert final.startswith(shown)


async def test_the_metrics_count_what_was_replaced(hub_with) -> None:
    hub = await hub_with(echo_prompt=True)
    await chat(hub, UNSURE)
    async with aiohttp.ClientSession() as http, http.get(hub.server.make_url("/metrics")) as resp:
        text = await resp.text()
    assert 'kefu_safety_verdicts_total{action="replace",category="leak",stage="output"} 1.0' in text
