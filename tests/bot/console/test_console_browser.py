"""The agent console end to end in a real headless Chromium, against the whole hub with Redis and the fake WeCom API.

What the product owner does by hand: sign in, watch a handoff arrive from a WeCom callback without reloading, take
it, answer (the customer's WeCom gets it), give it back to the bot (the bot answers the next question), and see that
a second agent cannot answer the same customer; that writes need the CSRF token and a same-site cookie, that an idle
session signs out, that an FAQ edit changes the very next answer, that customer text is shown as text, and that the
dashboard counts today's turns. Screenshots land in ``artifacts/`` for a person to look at.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.dialogue.handoff import REASONS, released_text

from .conftest import (
    BOSS,
    LI,
    RESET_ANSWER,
    RESET_ID,
    RESET_QUESTION,
    WANG,
    Agent,
    ConsoleHub,
    ConsoleHubFactory,
    eventually,
    session_keys,
    sign_in,
)

pytestmark = pytest.mark.browser

WAIT_MS = 15_000  # the bound on every wait for the page: it only stops a broken test from hanging


def expect(locator: Any) -> Any:
    from playwright.async_api import expect as pw_expect

    return pw_expect(locator)


async def handed_off(hub: ConsoleHub, user: str) -> None:
    """The customer asks for a person (the dialogue's handoff command) and the turn is done."""
    await hub.say(user, "转人工")
    await hub.settle()


async def open_row(agent: Agent, user: str) -> str:
    """Open the inbox row of ``user``'s conversation; returns its conversation key."""
    page = agent.page
    if "/console/inbox" not in page.url:
        await page.goto("/console/inbox")
    row = page.locator(f'.inbox-item[data-key$=":{user}"]')
    await row.wait_for(state="visible", timeout=WAIT_MS)
    key = await row.get_attribute("data-key")
    assert key
    await row.locator("a.open").click()
    await page.wait_for_url(re.compile(r"/console/c\?key="), timeout=WAIT_MS)
    await page.locator("#history").wait_for(timeout=WAIT_MS)
    return key


async def csrf_token(page: Any) -> str:
    token = await page.locator('meta[name="csrf-token"]').get_attribute("content")
    assert token
    return token


async def test_agent_takes_a_live_handoff_replies_and_releases(
    console_hub: ConsoleHubFactory, browser: Any, artifacts_dir: Any
) -> None:
    hub = await console_hub()
    wang = await sign_in(browser, hub, WANG)
    page = wang.page
    await expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    await expect(page.locator("#me")).to_contain_text(WANG.display)
    await expect(page.locator("#inbox .empty")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator(".inbox-item")).to_have_count(0)

    # a WeCom customer asks for a person: the row appears live, no reload
    await hub.say("zhangsan", "转人工")
    row = page.locator('.inbox-item[data-key$=":zhangsan"]')
    await row.wait_for(state="visible", timeout=WAIT_MS)
    await expect(row.locator(".channel")).to_contain_text("企业微信")
    await expect(row.locator(".reason")).to_contain_text(REASONS["requested"])
    await expect(row.locator(".who")).not_to_be_empty()
    await expect(row.locator(".taken-by")).to_have_text(re.compile(r"^\s*$"))
    await expect(page.locator("#inbox .empty")).to_have_count(0)
    await hub.settle()
    handoff_sends = len(hub.sent("zhangsan"))
    assert handoff_sends >= 1  # the customer heard about the handoff (and the service hours)

    await row.locator("a.open").click()
    await page.wait_for_url(re.compile(r"/console/c\?key="), timeout=WAIT_MS)
    conversation_url = page.url
    await expect(page.locator('#history .turn[data-role=user] .text').last).to_contain_text("转人工")
    await expect(page.locator("#state")).not_to_be_empty()

    await page.click("button#take")
    await expect(page.locator("#owner")).to_contain_text(re.compile(f"{WANG.display}|{WANG.name}"), timeout=WAIT_MS)

    reply = "您好，我是客服小王，请问有什么可以帮您？"
    await page.fill("textarea#reply-text", reply)
    await page.click("button#send")
    sent = await hub.received("zhangsan", reply)
    assert sent == reply  # delivered as written, through the customer's own channel
    agent_turn = page.locator("#history .turn[data-role=agent] .text", has_text=reply)
    await expect(agent_turn).to_have_count(1, timeout=WAIT_MS)
    await expect(page.locator("textarea#reply-text")).to_have_value("")

    # the customer writes again while a person has the conversation: it shows up in the open view, live
    follow_up = "我的订单三天了还没发货，麻烦帮我查一下"
    await hub.say("zhangsan", follow_up)
    await expect(page.locator("#history .turn[data-role=user] .text", has_text=follow_up)).to_have_count(
        1, timeout=WAIT_MS)
    await hub.settle()

    # canned answers fill the reply box (and are not sent by themselves)
    canned = page.locator("button.canned[data-text]")
    if await canned.count():
        text = await canned.first.get_attribute("data-text")
        await canned.first.click()
        await expect(page.locator("textarea#reply-text")).to_have_value(text or "")
        await page.fill("textarea#reply-text", "")

    await page.screenshot(path=str(artifacts_dir / "console-conversation.png"))

    # the same agent on a phone: the inbox shows the row as taken, and nothing scrolls sideways
    phone = await sign_in(browser, hub, WANG, viewport={"width": 375, "height": 812}, is_mobile=True,
                          has_touch=True, device_scale_factor=2)
    phone_row = phone.page.locator('.inbox-item[data-key$=":zhangsan"]')
    await phone_row.wait_for(state="visible", timeout=WAIT_MS)
    await expect(phone_row.locator(".taken-by")).to_contain_text(re.compile(f"{WANG.display}|{WANG.name}"))
    await phone.page.screenshot(path=str(artifacts_dir / "console-inbox-phone.png"), full_page=True)
    overflow = await phone.page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert overflow[0] <= overflow[1], f"the phone inbox scrolls sideways: {overflow}"
    await phone.ctx.close()

    # release to the bot: the customer is told, the row leaves the inbox, the bot answers the next question
    before = len(hub.sent("zhangsan"))
    await page.click("button#release")
    await hub.received("zhangsan", released_text("zh"))
    await page.goto("/console/inbox")
    await expect(page.locator('.inbox-item[data-key$=":zhangsan"]')).to_have_count(0, timeout=WAIT_MS)
    await hub.say("zhangsan", RESET_QUESTION)
    await eventually(lambda: RESET_ANSWER in hub.sent("zhangsan")[before:], what="the bot's FAQ answer")
    # the whole history stays readable after the release, the bot's answer marked as from the FAQ
    await page.goto(conversation_url)
    faq_turn = page.locator("#history .turn[data-role=assistant]", has_text=RESET_ANSWER.splitlines()[0])
    await expect(faq_turn.locator('.source[data-source="faq"]')).to_have_count(1, timeout=WAIT_MS)
    assert not wang.problems, wang.problems


async def test_second_agent_cannot_take_a_taken_conversation(
    console_hub: ConsoleHubFactory, browser: Any
) -> None:
    hub = await console_hub()
    await handed_off(hub, "lisi")
    wang = await sign_in(browser, hub, WANG)
    li = await sign_in(browser, hub, LI)

    key = await open_row(wang, "lisi")
    await wang.page.click("button#take")
    await expect(wang.page.locator("#owner")).to_contain_text(re.compile(f"{WANG.display}|{WANG.name}"),
                                                              timeout=WAIT_MS)

    assert await open_row(li, "lisi") == key
    await expect(li.page.locator("#owner")).to_contain_text(re.compile(f"{WANG.display}|{WANG.name}"),
                                                            timeout=WAIT_MS)
    await li.page.click("button#take")
    error = li.page.locator(".flash-error")
    await expect(error).to_be_visible(timeout=WAIT_MS)
    await expect(error).to_contain_text("已被")
    await expect(error).to_contain_text(re.compile(f"{WANG.display}|{WANG.name}"))

    before = hub.sent("lisi")
    li_text = "我是小李，我来接待您"
    await li.page.evaluate("() => document.querySelectorAll('.flash-error').forEach(e => e.remove())")
    await li.page.fill("textarea#reply-text", li_text)
    await li.page.click("button#send")
    await expect(li.page.locator(".flash-error")).to_be_visible(timeout=WAIT_MS)
    await expect(li.page.locator(".flash-error")).to_contain_text(re.compile(f"{WANG.display}|{WANG.name}"))
    # the same refusal from the API itself, with the holder's name: nothing was delivered for 小李
    resp = await li.page.request.post("/console/api/reply", data=json.dumps({"key": key, "text": li_text}),
                                      headers={"X-CSRF-Token": await csrf_token(li.page),
                                               "Content-Type": "application/json"})
    assert resp.status == 409
    body = await resp.json()
    assert body["error"] == "taken" and body["agent"] in (WANG.name, WANG.display)
    await hub.settle()
    assert li_text not in hub.sent("lisi") and hub.sent("lisi") == before

    # 小王 still answers
    wang_text = "您好，我是小王"
    await wang.page.fill("textarea#reply-text", wang_text)
    await wang.page.click("button#send")
    await hub.received("lisi", wang_text)
    assert not wang.problems and not li.problems, wang.problems + li.problems


@pytest.fixture
async def foreign_site() -> AsyncIterator[TestServer]:
    """Another site (http://localhost:<port>, not the hub's 127.0.0.1) whose page posts a form to the hub."""
    async def page(request: web.Request) -> web.Response:
        target, key = request.query["target"], request.query["key"]
        html = ('<!doctype html><html><body><form id="evil" method="POST" action="' + target + '">'
                '<input name="key" value="' + key + '"><input name="text" value="跨站伪造的回复">'
                '<input name="csrf" value="guess"></form>'
                '<script>document.getElementById("evil").submit()</script></body></html>')
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


async def test_writes_without_csrf_are_refused_and_expired_sessions_sign_out(
    console_hub: ConsoleHubFactory, browser: Any, redis_client: aioredis.Redis, key_prefix: str,
    foreign_site: TestServer,
) -> None:
    hub = await console_hub()
    await handed_off(hub, "zhaoliu")
    wang = await sign_in(browser, hub, WANG)
    key = await open_row(wang, "zhaoliu")
    page = wang.page
    token = await csrf_token(page)
    body = json.dumps({"key": key})
    as_json = {"Content-Type": "application/json"}

    resp = await page.request.post("/console/api/take", data=body, headers=as_json)
    assert resp.status == 403 and (await resp.json())["error"] == "csrf"
    resp = await page.request.post("/console/api/take", data=body,
                                   headers={**as_json, "X-CSRF-Token": "not-the-token"})
    assert resp.status == 403
    resp = await page.request.post("/console/api/take", data=body,
                                   headers={**as_json, "X-CSRF-Token": token, "Origin": "http://evil.example"})
    assert resp.status == 403 and (await resp.json())["error"] == "csrf"
    await expect(page.locator("#owner")).not_to_contain_text(re.compile(f"{WANG.display}|{WANG.name}"))
    # the same call with the token from the page and no foreign origin is accepted: the refusals were the CSRF check
    resp = await page.request.post("/console/api/take", data=body, headers={**as_json, "X-CSRF-Token": token})
    assert resp.status == 200, await resp.text()

    # a page on another site submits a form to the reply API: the SameSite=Strict cookie stays home
    cookie = next(c for c in await wang.ctx.cookies() if c["name"] == "kefu_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    evil = await wang.ctx.new_page()
    seen: list[tuple[dict[str, str], int]] = []

    target = hub.url("/console/api/reply")

    async def on_response(response: Any) -> None:
        if response.url == target and response.request.method == "POST":
            seen.append((await response.request.all_headers(), response.status))

    evil.on("response", on_response)
    await evil.goto(f"http://localhost:{foreign_site.port}/?target={target}&key={key}")
    await eventually(lambda: seen, what="the forged form post")
    headers, status = seen[0]
    assert "kefu_console=" not in headers.get("cookie", "")
    assert status in (401, 403)
    await hub.settle()
    assert not any("跨站伪造" in t for t in hub.sent("zhaoliu"))
    await evil.close()

    # an idle session ends: a second process configured with a 2 s idle limit
    short = await console_hub({"console.session_idle_s": 2})
    before = set(await session_keys(redis_client, key_prefix))
    brief = await sign_in(browser, short, LI)
    await brief.page.goto("/console/inbox")
    stale = await csrf_token(brief.page)
    new_keys = set(await session_keys(redis_client, key_prefix)) - before
    assert len(new_keys) == 1
    session_key = new_keys.pop()
    assert 0 < await redis_client.ttl(session_key) <= 2
    await brief.page.goto("about:blank")  # nothing in the background keeps the session alive
    await eventually(lambda: _gone(redis_client, session_key), within_s=10, what="the idle session's key expiring")
    await brief.page.goto(short.url("/console/inbox"))
    await brief.page.wait_for_url(re.compile(r"/console/login"), timeout=WAIT_MS)
    await expect(brief.page.locator("form#login input[name=name]")).to_be_visible()
    resp = await brief.page.request.post("/console/api/take", data=body, headers={**as_json, "X-CSRF-Token": stale})
    assert resp.status == 401
    assert not wang.problems, wang.problems


async def _gone(redis: aioredis.Redis, key: str) -> bool:
    return not await redis.exists(key)


async def test_faq_edit_changes_the_next_answer_without_restart(
    console_hub: ConsoleHubFactory, browser: Any, artifacts_dir: Any
) -> None:
    hub = await console_hub()
    # a question the FAQ cannot answer yet: the archive keeps it, the FAQ page offers it as a candidate to pin
    question, pinned = "蓝色火烈鸟活动什么时候开始", "蓝色火烈鸟活动将于下周一上午十点开始，敬请关注。"
    await hub.say("zhouba", question)
    await hub.settle()
    unanswered = hub.sent("zhouba")
    assert unanswered and pinned not in unanswered
    boss = await sign_in(browser, hub, BOSS)
    page = boss.page
    await page.goto("/console/faq")
    await page.fill("form#faq-search input[name=q]", "重置密码")
    await page.press("form#faq-search input[name=q]", "Enter")
    entry = page.locator(f'.faq-entry[data-id="{RESET_ID}"]')
    await entry.wait_for(state="visible", timeout=WAIT_MS)
    await expect(entry.locator("textarea[name=answer]")).to_have_value(RESET_ANSWER)

    new_answer = "【新版】请打开云朵App“我的-设置-账号与安全-重置密码”，验证手机号后即可设置新密码。"
    await entry.locator("textarea[name=answer]").fill(new_answer)
    await entry.locator("button.save-answer").click()
    await expect(page.locator(".flash-ok")).to_be_visible(timeout=WAIT_MS)

    await hub.say("sunqi", RESET_QUESTION)
    await hub.received("sunqi", new_answer)
    assert RESET_ANSWER not in hub.sent("sunqi")

    # a paraphrase customers use, added to the entry: it now finds the (edited) answer
    paraphrase = "紫色独角兽口令找不回来了"
    await page.goto("/console/faq?q=" + "重置密码")
    entry = page.locator(f'.faq-entry[data-id="{RESET_ID}"]')
    await entry.wait_for(state="visible", timeout=WAIT_MS)
    await entry.locator("input[name=paraphrase]").fill(paraphrase)
    await entry.locator("button.add-paraphrase").click()
    await expect(page.locator(".flash-ok")).to_be_visible(timeout=WAIT_MS)
    await page.goto("/console/faq?q=" + "重置密码")
    await expect(page.locator(f'.faq-entry[data-id="{RESET_ID}"] .paraphrase', has_text=paraphrase)).to_have_count(
        1, timeout=WAIT_MS)
    before = len(hub.sent("sunqi"))
    await hub.say("sunqi", paraphrase)
    await eventually(lambda: new_answer in hub.sent("sunqi")[before:], what="the answer found by the paraphrase")

    # a curated answer pinned to the question the bot could not answer: picked from the candidates
    candidate = page.locator(".candidate", has_text=question)

    async def offered() -> bool:  # the archive writes in batches: reload until the question is in
        await page.goto("/console/faq")
        return await candidate.count() > 0

    await eventually(offered, what="the unanswered question among the FAQ page's candidates")
    await candidate.first.click()
    await expect(page.locator("form#pin input[name=question]")).to_have_value(question)
    await page.fill("form#pin textarea[name=answer]", pinned)
    await page.click("form#pin button[type=submit]")
    await expect(page.locator(".flash-ok")).to_be_visible(timeout=WAIT_MS)
    await hub.say("zhouba", question)
    await hub.received("zhouba", pinned)
    assert hub.sent("zhouba")[-1] == pinned
    await page.goto("/console/faq")
    await expect(page.locator("#faq-history li")).not_to_have_count(0, timeout=WAIT_MS)
    await expect(page.locator("#faq-history")).to_contain_text(re.compile(f"{BOSS.display}|{BOSS.name}"))
    await page.screenshot(path=str(artifacts_dir / "console-faq.png"))
    assert not boss.problems, boss.problems


async def test_customer_text_is_shown_as_text(console_hub: ConsoleHubFactory, browser: Any) -> None:
    hub = await console_hub()
    markup = '<img src=x onerror="window.__xss=1">'
    await handed_off(hub, "wuxian")
    wang = await sign_in(browser, hub, WANG)
    page = wang.page
    row = page.locator('.inbox-item[data-key$=":wuxian"]')
    await row.wait_for(state="visible", timeout=WAIT_MS)
    await hub.say("wuxian", markup)  # arrives while the inbox is open: the live update must not render it either
    await expect(row).to_contain_text("onerror", timeout=WAIT_MS)
    assert markup in await row.text_content()
    assert await page.locator("#inbox img").count() == 0
    await hub.settle()
    await page.reload()  # and the server-rendered inbox
    await expect(row).to_contain_text("onerror", timeout=WAIT_MS)
    assert markup in await row.text_content()
    assert await page.locator("#inbox img").count() == 0
    await open_row(wang, "wuxian")
    turn = page.locator("#history .turn[data-role=user] .text", has_text="onerror")
    await expect(turn).to_have_count(1, timeout=WAIT_MS)
    assert markup in await turn.text_content()
    assert await page.locator("#history img").count() == 0
    await page.wait_for_timeout(300)  # an image error handler, had one been created, runs by now
    assert await page.evaluate("() => window.__xss") is None
    assert not wang.problems, wang.problems


async def test_dashboard_shows_todays_numbers(
    console_hub: ConsoleHubFactory, browser: Any, artifacts_dir: Any
) -> None:
    hub = await console_hub()
    for user in ("qian1", "qian2"):
        await hub.say(user, RESET_QUESTION)
    await handed_off(hub, "qian3")
    await hub.received("qian1", RESET_ANSWER)
    # a thumbs down from the web widget, on an FAQ answer
    async with aiohttp.ClientSession() as http:
        async with http.post(hub.url("/api/web/session"), json={}) as resp:
            assert resp.status == 200, await resp.text()
            token = (await resp.json())["token"]
        auth = {"Authorization": f"Bearer {token}"}
        async with http.post(hub.url("/api/web/messages"), json={"text": RESET_QUESTION, "client_id": "dash-0001"},
                             headers=auth) as resp:
            assert resp.status in (200, 202), await resp.text()
        await hub.settle()
        async with http.post(hub.url("/api/web/feedback"), json={"answer_id": "dash-0001", "rating": "down"},
                             headers=auth) as resp:
            assert resp.status == 200, await resp.text()
    await hub.settle()

    boss = await sign_in(browser, hub, BOSS)
    page = boss.page

    async def value(name: str) -> int:
        text = await page.locator(f".stat[data-name={name}] .value").inner_text()
        digits = re.sub(r"[^\d]", "", text)
        return int(digits) if digits else 0

    async def counted() -> bool:  # the archive writes in batches: reload until today's rows are in
        await page.goto("/console/dashboard")
        return await value("conversations") >= 4 and await value("down") >= 1

    await eventually(counted, within_s=15, what="today's turns on the dashboard")
    assert await value("faq") > 0
    assert await value("handoffs") >= 1
    await expect(page.locator("svg#chart")).to_have_count(1)
    await page.screenshot(path=str(artifacts_dir / "console-dashboard.png"), full_page=True)
    assert not boss.problems, boss.problems
