"""Customer text in team notices stays text: a link, image, tag or mention a customer writes arrives in the
support group as the characters typed, through every notifier (WeCom group robot, DingTalk group robot,
the generic handoff webhook), each against a real loopback endpoint; and a failing endpoint's error names
neither its URL nor its token."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.dingtalk.robot import GroupRobotError, GroupRobotNotifier
from adapters.wecom.api import CallPolicy
from adapters.wecom.robot import RobotNotifier
from bot.dialogue import handoff
from bot.notify import ZWSP, NotifyError, WebhookNotifier, literal_markdown, literal_title
from bot.state import DialogueState
from bot.state.keys import Keys
from bot.state.kv import MemoryKV
from bot.state.shared import WindowGate
from bot.types import ConversationRef
from tests.fakes.trap import Trap

LINK = "[点我领取退款](http://evil.example.com/phish)"
IMAGE = "![x](http://evil.example.com/p.png)"
HOSTILE = [
    LINK,
    IMAGE,
    "[点我]: http://evil.example.com\n[点我][]",  # reference definition and use
    "[客服中心][ref]\n[ref]: http://evil.example.com",
    '<font color="warning">系统通知：账户异常</font>',
    "<@all> <@zhangsan> 快来",  # WeCom markdown mentions
    "<http://evil.example.com/auto>",  # autolink
    '<img src="http://evil.example.com/p.png">',
    '<a href="http://evil.example.com">官网</a>',
    "<script>alert(1)</script>",
    "\n# 系统公告\n> 请立即转账",  # block markup on a line of its own
    "[嵌套 ![图](http://e.example.com/i.png)](http://evil.example.com)",
]

# what markdown would turn into something other than the characters typed
_MARKUP = re.compile(r"\]\(|\]\[|\]:|!\[|<[A-Za-z/@!?]|^[ \t]{0,3}[#>]", re.MULTILINE)


def visible(text: str) -> str:
    return text.replace(ZWSP, "")


@pytest.mark.parametrize("text", HOSTILE)
def test_markup_in_customer_text_is_broken_but_reads_the_same(text: str) -> None:
    out = literal_markdown(text)
    assert not _MARKUP.search(out), out
    assert visible(out) == text  # the team reads exactly what the customer typed


@pytest.mark.parametrize("text", HOSTILE)
def test_markup_in_customer_text_renders_as_text_in_commonmark(text: str) -> None:
    markdown_it = pytest.importorskip("markdown_it")
    html = markdown_it.MarkdownIt("commonmark").render(literal_markdown(text))
    assert "<a " not in html and "<img" not in html and "<font" not in html and "<script" not in html
    assert "<h1" not in html and "<blockquote" not in html


@given(st.text(alphabet=st.sampled_from(list("[]()!<>@#*_`:/\\ \nax1.-=|~")), max_size=60))
@settings(max_examples=300, deadline=None)
def test_no_text_becomes_a_link_image_or_tag(text: str) -> None:
    out = literal_markdown(text)
    assert visible(out) == text
    markdown_it = pytest.importorskip("markdown_it")
    html = markdown_it.MarkdownIt("commonmark").render(out)
    assert "<a " not in html and "<img" not in html
    assert not re.search(r"<(?!/?(p|em|strong|code|pre|br|hr|ul|ol|li|h[1-6]|blockquote)\b)[A-Za-z]", html), html


def test_ids_emails_and_plain_chinese_are_left_exactly_as_they_are() -> None:
    for text in ("客户 张三 需要人工客服：订单 YD2405120001 退款", "user_id=li_si@example.com", "价格 3*4=12 元",
                 '回复客户：POST /api/agent/reply {"channel": "wecom", "user_id": "zhang_san"}'):
        assert literal_markdown(text) == text


def test_a_title_is_one_literal_line() -> None:
    assert literal_title("【转人工】web 用户 x\n# 伪造标题\n" + LINK) == (
        "【转人工】web 用户 x # 伪造标题 [点我领取退款]" + ZWSP + "(http://evil.example.com/phish)")


class Endpoints:
    """The three notice endpoints on one loopback server: WeCom's group robot, DingTalk's, a webhook."""

    def __init__(self) -> None:
        self.received: dict[str, list[dict[str, Any]]] = {"wecom": [], "dingtalk": [], "webhook": []}
        app = web.Application()
        app.router.add_post("/cgi-bin/webhook/send", self.record("wecom"))
        app.router.add_post("/robot/send", self.record("dingtalk"))
        app.router.add_post("/hook", self.record("webhook"))
        self.server = TestServer(app, host="127.0.0.1")

    def record(self, name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            self.received[name].append(await request.json())
            return web.json_response({"errcode": 0, "errmsg": "ok"})

        return handler

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))


@pytest.fixture
async def endpoints() -> AsyncIterator[Endpoints]:
    e = Endpoints()
    await e.server.start_server()
    yield e
    await e.server.close()



def notifiers(endpoints: Endpoints, http: aiohttp.ClientSession) -> list[Any]:
    kv, keys = MemoryKV(), Keys("t")
    return [
        RobotNotifier(CallPolicy(lambda: http, 0, 0.01), WindowGate(kv, keys.rate, 20), endpoints.url(""), "KEY1"),
        GroupRobotNotifier(lambda: http, WindowGate(kv, keys.rate, 20), endpoints.url("/robot/send") +
                           "?access_token=TOKEN1", "SECsecret"),
        WebhookNotifier(endpoints.url("/hook"), lambda: http, 5),
    ]


def delivered(endpoints: Endpoints) -> dict[str, str]:
    """Each endpoint's notice as the team would see it: the markdown body, and for the webhook title + text."""
    wecom = "".join(m["markdown"]["content"] for m in endpoints.received["wecom"])
    dingtalk = "".join(m["markdown"]["title"] + "\n" + m["markdown"]["text"] for m in endpoints.received["dingtalk"])
    webhook = "".join(m["title"] + "\n" + m["text"] for m in endpoints.received["webhook"])
    return {"wecom": wecom, "dingtalk": dingtalk, "webhook": webhook}


async def test_a_handoff_notice_with_hostile_customer_text_arrives_as_text_everywhere(
    endpoints: Endpoints, http: aiohttp.ClientSession
) -> None:
    """Everything describe() quotes is the customer's: messages, slots, and the user id a /chat caller picks."""
    ref = ConversationRef(channel="api", conversation_id="c1", user_id=f"u1 {IMAGE}", tenant="")
    state = DialogueState(key=ref.key, version=1, slots={"order_id": LINK})
    for text in HOSTILE:
        state = state.with_turn("user", text, 50)
    notice = handoff.HandoffNotifier(lambda: notifiers(endpoints, http), MemoryKV(), Keys("t"), timeout_s=5)
    assert await notice.notify(ref, state, "requested", "api::m1") == 3
    title, text = handoff.describe(ref, state, "requested")
    for name, shown in delivered(endpoints).items():
        assert not _MARKUP.search(shown.replace("#### ", "", 1)), (name, shown)  # the robot's own heading aside
        assert " ".join(title.split()) in visible(shown), name
        for line in text.splitlines():  # nothing lost: every line of the notice reads as written
            assert line.strip() in visible(shown), (name, line)
        assert "order_id=" + LINK in visible(shown), name


@pytest.mark.parametrize("text", [LINK, IMAGE, "<@all> 请处理"])
async def test_each_notifier_sends_customer_markup_as_text(endpoints: Endpoints, http: aiohttp.ClientSession,
                                                           text: str) -> None:
    for notifier in notifiers(endpoints, http):
        await notifier.notify(f"转人工 {text}", f"客户：{text}")
    for name, shown in delivered(endpoints).items():
        assert not _MARKUP.search(shown.replace("#### ", "", 1)), (name, shown)
        assert f"客户：{text}" in visible(shown), name


async def test_a_failing_webhook_error_names_neither_url_nor_token(http: aiohttp.ClientSession) -> None:
    trap = await Trap().start()
    try:
        for path in ("redirect", "html502"):
            trap.elsewhere = trap.url("collect")
            hook = WebhookNotifier(trap.url(path, query="token=HOOKSECRET"), lambda: http, 5)
            with pytest.raises(NotifyError) as err:
                await hook.notify("t", "x")
            assert "HOOKSECRET" not in str(err.value) and "127.0.0.1" not in str(err.value)
        assert "collect" not in trap.calls  # the redirect was not followed
        unreachable = WebhookNotifier("http://127.0.0.1:9/hook?token=HOOKSECRET", lambda: http, 5)
        with pytest.raises(NotifyError) as err:
            await unreachable.notify("t", "x")
        assert "HOOKSECRET" not in str(err.value) and err.value.__cause__ is None
    finally:
        await trap.close()


async def test_a_webhook_that_hangs_fails_with_a_timeout(http: aiohttp.ClientSession) -> None:
    trap = await Trap().start()
    try:
        hook = WebhookNotifier(trap.url("hang"), lambda: http, 0.3)
        with pytest.raises(NotifyError, match="timed out"):
            await hook.notify("t", "x")
        trap.release.set()
        await WebhookNotifier(trap.url("ok"), lambda: http, 5).notify("t", "x")  # still works afterwards
    finally:
        await trap.close()


async def test_a_dingtalk_robot_that_hangs_or_redirects_fails_without_its_token() -> None:
    trap = await Trap().start()
    kv, keys = MemoryKV(), Keys("t")
    try:
        from bot.outbound import http_timeout

        async with aiohttp.ClientSession(timeout=http_timeout(0.3)) as slow:
            robot = GroupRobotNotifier(lambda: slow, WindowGate(kv, keys.rate, 20),
                                       trap.url("hang", query="access_token=TOKEN1"), "SECx")
            with pytest.raises(GroupRobotError, match="TimeoutError") as err:
                await robot.notify("t", "x")
            assert "TOKEN1" not in str(err.value) and err.value.__cause__ is None
            trap.release.set()
            trap.elsewhere = trap.url("collect")
            redirected = GroupRobotNotifier(lambda: slow, WindowGate(kv, keys.rate, 20),
                                            trap.url("redirect", query="access_token=TOKEN1"), "SECx")
            with pytest.raises(GroupRobotError, match="HTTP 302"):
                await redirected.notify("t", "x")
            assert "collect" not in trap.calls
    finally:
        await trap.close()
