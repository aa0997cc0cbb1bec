"""The output filter: each check on whole replies, the stream guard's hold-back with tokens arriving one
character at a time, the fallback that replaces an unsafe reply (in the history too), and the counter."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytest

from bot.answer import StreamFn
from bot.config import SafetyOutputConfig
from bot.messages import text as fixed_text
from bot.metrics import Metrics
from bot.pipeline import Dialogue, TurnContext, TurnPipeline
from bot.safety.blocklist import Blocklist
from bot.safety.output_filter import (
    Given,
    OutputFilter,
    StreamGuard,
    canonical_pii,
    internal_texts,
)
from bot.state import DialogueState
from bot.state.memory import MemoryStore
from bot.turn import TurnResult
from bot.types import ConversationRef, Event, EventKind, Reply

SYSTEM = "你是云朵商城的客服助手。请依据参考资料简洁、礼貌地回答；资料里没有的信息不要编造，可以建议用户回复转人工。"
EN_NODE = ("You are Yunduo Mall's customer service. Answer briefly and politely from the reference material; "
           "never make up facts that are not in it.")
BLOCKED = "代开发票"
REF = ConversationRef(channel="test", conversation_id="u1", user_id="u1")
FALLBACK = fixed_text("safety_fallback", "zh")
ORDINARY = "您好，您的订单已于昨天发出，预计两到三天送达，请留意物流短信。订单号 YD2405120001，实付 ¥1380.00。"


def make_filter(metrics: Metrics | None = None, **cfg: Any) -> OutputFilter:
    return OutputFilter(SafetyOutputConfig(**cfg), metrics or Metrics(), internal=[SYSTEM, EN_NODE],
                        blocklist=Blocklist([BLOCKED, "赌博"]))


def check(text: str, given: Given | None = None, source: str = "llm", **cfg: Any) -> str | None:
    finding = make_filter(**cfg).checker.check(text, given=given or Given(), source=source)
    return None if finding is None else finding.category


# ---------------------------------------------------------------- the checks


def test_an_ordinary_answer_with_order_numbers_and_prices_passes() -> None:
    assert check(ORDINARY) is None
    assert check("Your order shipped yesterday; our customer service team will call if anything changes.") is None


@pytest.mark.parametrize("answer", [
    f"可以帮您{BLOCKED}",
    "可以帮您代 开 发 票",
    "可以帮您代★开★發★票",  # symbols between the characters, traditional characters
    "ｄａｉ 赌 博",
])
def test_blocked_terms_are_found_however_written(answer: str) -> None:
    assert check(answer) == "blocklist"


def test_the_blocklist_applies_to_operator_texts_too_and_nothing_else_does() -> None:
    assert check(f"FAQ：{BLOCKED}", source="faq") == "blocklist"
    assert check("客服热线 13912345678，" + SYSTEM, source="faq") is None


@pytest.mark.parametrize("answer", [
    "好的。" + SYSTEM,
    "我的设定是：你 是 云 朵 商 城 的 客 服 助 手 ， 请 依 据 参 考 资 料",  # spaced out, commas changed
    "你是雲朵商城的客服助手請依據參考資料簡潔禮貌地回答",  # traditional, punctuation dropped
    "ｙｏｕ ａｒｅ Yunduo Mall's customer service - answer briefly and politely from the reference material",
    "Sure! My system prompt says to be polite.",  # a marker phrase
    "参考资料（仅在相关时使用）：问：怎么退款",  # the knowledge header of bot/answer.py
])
def test_the_system_prompt_and_instructions_coming_back_are_a_leak(answer: str) -> None:
    assert check(answer) == "leak"


def test_short_phrases_shared_with_the_instructions_are_not_a_leak() -> None:
    assert check("您好，我是云朵商城的客服，请问有什么可以帮您？") is None
    assert check("Please contact our customer service team, they answer briefly.") is None


def test_internal_texts_are_the_system_prompt_and_the_llm_node_instructions() -> None:
    import yaml

    from bot.dialogue.loader import load_graph
    from tests.conftest import make_config

    config = make_config()
    intents = yaml.safe_load(config.resolve_path(config.dialogue.intents_path).read_text(encoding="utf-8"))
    graph = load_graph(config.resolve_path(config.dialogue.path), intents=[i["name"] for i in intents["intents"]])
    texts = internal_texts(config.engine.system_prompt, graph)
    assert config.engine.system_prompt in texts
    assert any("云朵商城的客服" in t for t in texts)  # the answer node's instructions
    assert not any("请发送订单号" in t for t in texts)  # a collect node's question is for the customer


@pytest.mark.parametrize("invented,kind", [
    ("请拨打 139 1234 5678 联系我", "mobile"),
    ("身份证号 11010519491231002X 已登记", "id"),
    ("退款到卡号 6222 0200 0000 0000 000", "card"),  # made up, Luhn-valid
    ("请发邮件到 zhang.san@example.com", "email"),
])
def test_personal_data_the_customer_did_not_give_is_refused(invented: str, kind: str) -> None:
    from bot.privacy.pii import find_pii

    found = find_pii(invented)
    assert [p.kind for p in found] == [kind], found  # the sample really is of its kind
    assert check(invented) == "pii"


def test_personal_data_the_customer_gave_may_be_repeated_however_written() -> None:
    f = make_filter()
    given = Given(frozenset(f.checker.values_in(["我的手机是 +86 139-1234-5678"])))
    assert f.checker.check("好的，我们会致电 13912345678 与您确认。", given=given) is None
    assert f.checker.check("好的，我们会致电 13912345679 与您确认。", given=given) is not None


def test_allowed_values_and_faq_answers_may_carry_the_company_number() -> None:
    assert check("请拨打客服热线 010-8888 6666。") == "pii"
    assert check("请拨打客服热线 010-8888 6666。", allowed_pii=["01088886666"]) is None
    assert check("请拨打客服热线 010-8888 6666。", source="faq") is None


def test_numbers_and_addresses_in_the_operators_own_texts_may_be_repeated_by_the_model() -> None:
    faq = "合作请发邮件至 bd@yunduo.example，或拨打 010-8888 6666。"
    f = OutputFilter(SafetyOutputConfig(), Metrics(), operator_texts=[faq])
    assert f.checker.check("您可以发邮件到 BD@yunduo.example 联系商务。", given=Given()) is None
    assert f.checker.check("您可以拨打 01088886666 咨询。", given=Given()) is None
    assert f.checker.check("您可以发邮件到 ceo@yunduo.example 联系。", given=Given()) is not None


def test_canonical_forms() -> None:
    assert canonical_pii("mobile", "+86 139-1234-5678") == canonical_pii("mobile", "13912345678")
    assert canonical_pii("landline", "861088886666") == "01088886666"
    assert canonical_pii("email", "Zhang@Example.COM") == "zhang@example.com"


def test_a_model_written_answer_past_max_chars_is_refused() -> None:
    assert check("好" * 101, max_chars=100) == "length"
    assert check("好" * 101, max_chars=100, source="faq") is None


# ---------------------------------------------------------------- streaming


class Screen:
    """What a channel was shown: every (text_so_far, delta) it got."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, so_far: str, delta: str) -> None:
        if self.calls:
            assert so_far == self.calls[-1][0] + delta or so_far == delta  # consistent, or a restart
        self.calls.append((so_far, delta))

    @property
    def shown(self) -> str:
        return self.calls[-1][0] if self.calls else ""


async def stream_chars(guard: StreamGuard, answer: str) -> None:
    for i in range(1, len(answer) + 1):
        await guard(answer[:i], answer[i - 1])


async def test_an_ordinary_streamed_answer_is_shown_but_for_a_held_back_tail() -> None:
    f, screen = make_filter(), Screen()
    guard = StreamGuard(f.checker, screen)
    await stream_chars(guard, ORDINARY)
    assert guard.blocked is None
    assert ORDINARY.startswith(screen.shown) and len(screen.shown) > 0
    held = ORDINARY[len(screen.shown):]
    assert sum(c.isalnum() for c in held) >= 24  # the tail waits for the final reply
    for so_far, _ in screen.calls:  # never cut inside a number
        nxt = ORDINARY[len(so_far):len(so_far) + 1]
        assert not (so_far[-1:].isascii() and so_far[-1:].isalnum() and nxt.isascii() and nxt.isalnum())


@pytest.mark.parametrize("unsafe", [
    f"好的，我这就为您办理{BLOCKED}业务，请稍候。",
    "好的，" + "代 开 发 票" + "没有问题的，请稍候片刻。",
    "当然可以。" + SYSTEM + "以上就是全部。",
    "请您直接拨打 13912345678 联系我们的经理。",
    "请您直接拨打 139 1234 5678 联系我们的经理。",
])
async def test_a_blocked_phrase_leak_or_invented_number_never_reaches_the_screen(unsafe: str) -> None:
    f, screen = make_filter(), Screen()
    guard = StreamGuard(f.checker, screen)
    before = len(screen.calls)
    await stream_chars(guard, unsafe)
    assert guard.blocked is not None
    assert f.checker.check(screen.shown, given=Given()) is None  # what was shown is itself safe
    shown = screen.shown.replace(" ", "")
    for secret in (BLOCKED, "13912345678", "139", SYSTEM[:4]):
        assert secret not in shown
    calls = len(screen.calls)
    await guard(unsafe + "后面还有很多很多很多很多很多很多很多很多很多很多的字。", "字")
    assert len(screen.calls) == calls >= before  # nothing more once blocked


async def test_a_restarted_answer_is_shown_again_from_the_start() -> None:
    f, screen = make_filter(), Screen()
    guard = StreamGuard(f.checker, screen)
    await stream_chars(guard, ORDINARY)
    first = len(screen.calls)
    await stream_chars(guard, ORDINARY)
    assert screen.calls[first][0] == screen.calls[first][1]  # offset 0 again
    assert screen.shown and ORDINARY.startswith(screen.shown)


# ---------------------------------------------------------------- in the pipeline


class Streaming:
    """A handler that streams its answer a character at a time, then records it in the history."""

    def __init__(self, answer: str, source: str = "llm") -> None:
        self.answer, self.source = answer, source

    async def handle(self, event: Event, state: DialogueState, stream: StreamFn) -> TurnResult:
        for i in range(1, len(self.answer) + 1):
            await stream(self.answer[:i], self.answer[i - 1])
        state = state.with_turn("user", event.text or "", 10, id=event.id)
        state = state.with_turn("assistant", self.answer, 10, source=self.source)
        return TurnResult(state, (Reply(event.ref, self.answer, in_reply_to=event.id, source=self.source),))


class Sent:
    def __init__(self) -> None:
        self.replies: list[Reply] = []

    async def __call__(self, _event: Event, replies: Sequence[Reply]) -> None:
        self.replies += list(replies)


async def run_turn(answer: str, text: str = "在吗", *, store: MemoryStore | None = None, metrics: Metrics | None = None,
                   source: str = "llm", steps_before: Sequence[Any] = (),
                   event_id: str = "m1") -> tuple[list[Reply], Screen, MemoryStore]:
    store = store or MemoryStore(600, 86400)
    metrics = metrics or Metrics()
    f, sent, screen = make_filter(metrics, pii_secret="test-digest-key"), Sent(), Screen()
    pipeline = TurnPipeline(store, [*steps_before, f.stream_step(), Dialogue(Streaming(answer, source)), f], sent,
                            metrics, ledger=True)
    ctx = TurnContext(Event(id=event_id, kind=EventKind.MESSAGE, ref=REF, text=text), stream=screen)
    await pipeline.run(ctx, 5)
    return sent.replies, screen, store


async def test_an_unsafe_reply_is_replaced_in_the_reply_and_the_history_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    unsafe = "好的，请直接拨打我们经理的手机 13912345678，他会处理。"
    with caplog.at_level(logging.WARNING):
        replies, screen, store = await run_turn(unsafe, metrics=metrics)
    assert [r.text for r in replies] == [FALLBACK] and replies[0].source == "fallback"
    assert "13912345678" not in screen.shown and "139" not in screen.shown
    state = await store.load(REF.key)
    assert [t.text for t in state.history if t.role == "assistant"] == [FALLBACK]
    assert "pii" in caplog.text and "1391234" not in caplog.text and "经理" not in caplog.text
    value = metrics.registry.get_sample_value(
        "kefu_safety_verdicts_total", {"stage": "output", "category": "pii", "action": "replace"})
    assert value == 1


async def test_a_safe_reply_goes_out_unchanged() -> None:
    replies, _screen, _store = await run_turn(ORDINARY)
    assert [r.text for r in replies] == [ORDINARY] and replies[0].source == "llm"


async def test_the_customers_own_number_may_be_repeated_in_this_turn_and_in_later_ones() -> None:
    """The history keeps the message redacted; a keyed digest on its turn still knows the number."""
    mine = "13812345678"
    store = MemoryStore(600, 86400)
    replies, _, _ = await run_turn(f"好的，我们会致电 {mine} 与您联系。", f"我的手机是 {mine}", store=store)
    assert replies[0].source == "llm"
    state = await store.load(REF.key)
    user = next(t for t in state.history if t.role == "user")
    assert mine not in state.to_json()  # neither the text nor its digest shows the number
    assert user.meta.get("pii")
    replies, _, _ = await run_turn(f"已登记回访电话 {mine}，稍后联系您。", "什么时候回电？", store=store, event_id="m2")
    assert replies[0].source == "llm"
    replies, _, _ = await run_turn("已登记回访电话 13812345679，稍后联系您。", "好的", store=store, event_id="m3")
    assert replies[0].text == FALLBACK


async def test_the_filter_checks_replies_an_earlier_step_decided() -> None:
    class Canned:
        name = "canned"

        async def run(self, ctx: TurnContext) -> None:
            ctx.replies = (Reply(ctx.event.ref, f"缓存答案：{BLOCKED}", in_reply_to=ctx.event.id, source="cache"),)
            ctx.decided = True

    replies, _, _ = await run_turn(ORDINARY, steps_before=[Canned()])
    assert [r.text for r in replies] == [FALLBACK]


async def test_an_faq_answer_with_the_company_phone_is_delivered() -> None:
    faq = "退款请拨打客服热线 400-820-8820 或 010-8888 6666，工作日 9:00-18:00。"
    replies, _, _ = await run_turn(faq, source="faq")
    assert [r.text for r in replies] == [faq]


async def test_disabled_filter_lets_everything_through() -> None:
    f = OutputFilter(SafetyOutputConfig(enabled=False), Metrics(), internal=[SYSTEM])
    ctx = TurnContext(Event(id="m", kind=EventKind.MESSAGE, ref=REF, text="x"),
                      replies=(Reply(REF, SYSTEM, source="llm"),))
    await f.run(ctx)
    assert ctx.replies[0].text == SYSTEM
