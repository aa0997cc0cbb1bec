"""End to end in a real headless Chromium: the demo page, the widget, streaming, reload, XSS, tokens.

Debian's ``/usr/bin/chromium`` driven by Playwright for Python (``make test`` installs it with
``scripts/browser-deps.sh``; Playwright's own browser download is never used). Screenshots of the open
widget land in ``artifacts/`` for a person to look at.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.types import ConversationRef, Event, EventKind, Reply, ReplyChunk

from .conftest import WebServerFactory

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("KEFU_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
BOT = ".kf-row.kf-bot[data-answer-id]"
ROOT = Path(__file__).resolve().parents[3]
WIDGET_JS = ROOT / "adapters" / "web" / "static" / "widget.js"
OWN_PAGE = "/own-page.html"  # answered by the browser itself, see open_page


def widget_page(html_lang: str | None, attrs: str = "") -> str:
    """A bare page on the hub's origin that embeds the widget, in the given ``<html lang>`` (None: no lang)."""
    lang = "" if html_lang is None else f' lang="{html_lang}"'
    return (f'<!doctype html><html{lang}><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1"><title>Shop</title></head><body>'
            f'<script src="/widget.js" {attrs}></script></body></html>')


# Every text the widget shows or reads out, except the bubbles of the conversation itself (the greeting counts).
UI_TEXTS = """() => {
    const root = document.querySelector('[data-kefu-widget]').shadowRoot.querySelector('.kf').cloneNode(true);
    root.querySelectorAll('.kf-row:not(.kf-greeting) .kf-bubble').forEach(b => b.remove());
    const out = [root.textContent];
    root.querySelectorAll('*').forEach(e => ['aria-label', 'placeholder', 'title'].forEach(a => {
        if (e.getAttribute(a)) out.push(e.getAttribute(a));
    }));
    return out.join(' ');
}"""


def english_words(text: str) -> list[str]:
    return [w for w in re.findall(r"[A-Za-z]{2,}", text) if w not in {"kefu", "hub"}]


def chinese(text: str) -> list[str]:
    return re.findall(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]", text)


async def labels(page: Any) -> dict[str, str | None]:
    """The labels a visitor meets first, as the widget shows them."""
    return {
        "launcher": await page.locator(".kf-launcher").get_attribute("aria-label"),
        "title": await page.locator(".kf-title").inner_text(),
        "status": await page.locator(".kf-status").inner_text(),
        "placeholder": await page.locator(".kf-input").get_attribute("placeholder"),
        "input": await page.locator(".kf-input").get_attribute("aria-label"),
        "send": await page.locator(".kf-send").get_attribute("aria-label"),
        "close": await page.locator(".kf-close").get_attribute("aria-label"),
        "footer": await page.locator(".kf-footer").inner_text(),
    }


async def open_widget(page: Any) -> None:
    await page.locator(".kf-launcher").click()
    await page.locator(".kf-panel").wait_for(state="visible")
    # connected: the status line shows the online text, not the reconnecting one
    await page.wait_for_function(
        "() => !document.querySelector('[data-kefu-widget]').shadowRoot.querySelector('.kf-offline') && "
        "window.KefuWidget", timeout=15_000)


@pytest.fixture
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"!!! BROWSER TEST SKIPPED: {CHROMIUM} is missing. Run `bash scripts/browser-deps.sh` "
                    "(apt-get install chromium fonts-noto-cjk; `make test` does it) to test the web widget !!!")
    return CHROMIUM


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Any]:
    """Request it after ``web_server``: it then closes first, so no open stream holds the server's shutdown."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("!!! BROWSER TEST SKIPPED: the playwright package is missing (pip install -e '.[dev]') !!!")
    async with async_playwright() as pw:
        # Playwright gives every launch a fresh temporary profile (user-data dir).
        browser = await pw.chromium.launch(executable_path=chromium, args=FLAGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


async def open_page(
    browser: Any, url: str, *, locale: str = "zh-CN", html: str | None = None, **context: Any
) -> tuple[Any, Any, list]:
    """Open ``url`` in a fresh context. With ``html``, that page is the given HTML on the hub's own origin: the
    hub's router is frozen once it runs, so the browser answers for this one page itself, while widget.js and every
    API call still go to the real hub."""
    ctx = await browser.new_context(locale=locale, **context)
    if html is not None:
        async def fulfill(route: Any) -> None:
            await route.fulfill(status=200, content_type="text/html; charset=utf-8", body=html)

        await ctx.route(url, fulfill)
    page = await ctx.new_page()
    problems: list[str] = []
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    await page.goto(url)
    return ctx, page, problems


async def stored_session(page: Any) -> dict[str, Any]:
    raw = await page.evaluate("() => localStorage.getItem('kefu-hub:' + location.origin)")
    return json.loads(raw)


async def ask(page: Any, text: str) -> Any:
    """Type a question, press Enter, and return the locator of its answer once complete."""
    before = await page.locator(BOT).count()
    box = page.locator(".kf-input")
    await box.fill(text)
    await box.press("Enter")
    answer = page.locator(BOT).nth(before)
    await answer.wait_for(state="visible", timeout=15_000)
    await page.wait_for_function(
        "() => !document.querySelector('[data-kefu-widget]').shadowRoot.querySelector('.kf-streaming, .kf-typing')",
        timeout=15_000)
    return answer


async def test_widget_end_to_end(
    web_server: WebServerFactory, browser: Any, redis_url: str, key_prefix: str, artifacts_dir: Path
) -> None:
    server, web = await web_server({"state.url": redis_url, "state.key_prefix": key_prefix})
    ctx, page, problems = await open_page(browser, str(server.make_url("/")), viewport={"width": 1280, "height": 820})
    assert "云朵商城" in await page.title()

    # open the widget: a floating button, a panel with the greeting, focus in the input
    launcher = page.locator(".kf-launcher")
    assert await launcher.get_attribute("aria-label") == "打开在线客服"
    await launcher.click()
    panel = page.locator(".kf-panel")
    await panel.wait_for(state="visible")
    assert await launcher.get_attribute("aria-expanded") == "true"
    assert await panel.get_attribute("role") == "dialog"
    assert "云朵商城智能客服" in await page.locator(".kf-greeting").inner_text()
    focused = await page.evaluate(
        "() => document.querySelector('[data-kefu-widget]').shadowRoot.activeElement?.className")
    assert focused == "kf-input"
    # host page styles do not reach inside (the page's body font size is 15px, its links have no underline)
    assert await page.locator(".kf-title").evaluate("e => getComputedStyle(e).fontSize") == "16px"

    # ask the FAQ; the answer is streamed into its bubble piece by piece, then rendered as safe markdown
    answer = await ask(page, "如何重置密码？")
    assert await page.locator(".kf-row.kf-user .kf-bubble").last.inner_text() == "如何重置密码？"
    bubble = answer.locator(".kf-bubble")
    assert "忘记密码" in await bubble.inner_text()
    assert int(await answer.get_attribute("data-streamed")) >= 2

    # answers render a small, safe markdown subset
    formatted = (await ask(page, "挂件格式演示")).locator(".kf-bubble")
    assert await formatted.locator("strong").inner_text() == "手机号或邮箱"
    assert await formatted.locator("li").count() == 2
    link = formatted.locator("a")
    assert await link.get_attribute("href") == "https://help.yunduo.example/password"
    assert await link.get_attribute("rel") == "noopener noreferrer nofollow"

    # thumbs up: pressed, and stored as a feedback event for training
    up = answer.locator(".kf-thumb-up")
    assert await up.get_attribute("aria-label") == "有帮助"
    await up.click()
    await page.locator(".kf-notice.kf-ok").wait_for(state="visible")
    assert await up.get_attribute("aria-pressed") == "true"
    keys = web.services.keys
    records = await web.services.redis.xrange(keys.feedback_stream())
    assert [(r[1]["rating"], r[1]["question"]) for r in records] == [("up", "如何重置密码？")]

    await page.screenshot(path=str(artifacts_dir / "widget.png"))

    # reload: the panel reopens with the history from the server, the thumb still pressed
    await page.reload()
    await page.locator(".kf-panel").wait_for(state="visible")
    restored = page.locator(BOT).first
    await restored.wait_for(state="visible")
    assert "忘记密码" in await restored.locator(".kf-bubble").inner_text()
    assert await page.locator(".kf-row.kf-user .kf-bubble").first.inner_text() == "如何重置密码？"
    assert await restored.locator(".kf-thumb-up").get_attribute("aria-pressed") == "true"
    assert await page.locator(BOT).count() == 2

    # markup in an answer and in the visitor's own text shows as text and runs nothing
    evil_answer = await ask(page, "网页测试暗号是什么？")
    text = await evil_answer.locator(".kf-bubble").inner_text()
    assert "<img src=x onerror=alert(1)>" in text and "<script>window.__pwned=1</script>" in text
    user_markup = "<b>粗体</b><img src=x onerror=alert(2)>"
    await ask(page, user_markup)
    assert await page.locator(".kf-row.kf-user .kf-bubble").last.inner_text() == user_markup
    messages = page.locator(".kf-messages")
    assert await messages.locator("img").count() == 0
    assert await messages.locator("script").count() == 0
    assert await messages.locator("b").count() == 0
    assert await page.evaluate("() => window.__pwned") is None

    # a dropped connection: the widget reconnects with Last-Event-ID; nothing lost, nothing twice
    session = await stored_session(page)
    sid = session["session_id"]
    for conn in list(server.runner.server.connections):
        conn.force_close()
        if conn.transport is not None:
            conn.transport.close()
    ref = ConversationRef(channel="web", conversation_id=sid, user_id=sid)
    event = Event(id=f"{sid}:after-drop-1", kind=EventKind.MESSAGE, ref=ref, text="断线测试")
    pieces = ["网络", "断开", "期间", "生成的", "回答", "一个字", "也不少。"]
    so_far = ""
    for piece in pieces:
        so_far += piece
        await web.sender.stream(ReplyChunk(ref, event.id, so_far, piece))
    await web.sender.deliver(event, [Reply(ref, so_far, in_reply_to=event.id, source="llm",
                                        quick_replies=("多少钱包邮？", "转人工"))])
    resumed = page.locator('.kf-row[data-answer-id="after-drop-1"]')
    await resumed.wait_for(state="visible", timeout=15_000)
    assert await resumed.locator(".kf-bubble").inner_text() == so_far
    assert await resumed.get_attribute("data-streamed") == str(len(pieces))

    # quick replies offered with that answer: one click asks it
    quick = resumed.locator(".kf-quick button")
    assert await quick.all_inner_texts() == ["多少钱包邮？", "转人工"]
    before = await page.locator(BOT).count()
    await quick.first.click()
    await page.locator(BOT).nth(before).wait_for(state="visible", timeout=15_000)
    assert await page.locator(".kf-row.kf-user .kf-bubble").last.inner_text() == "多少钱包邮？"
    await page.wait_for_function(
        "() => document.querySelector('[data-kefu-widget]').shadowRoot"
        ".querySelectorAll('.kf-row.kf-bot[data-answer-id]').length > 0 && "
        "[...document.querySelector('[data-kefu-widget]').shadowRoot.querySelectorAll('.kf-bot .kf-bubble')]"
        ".some(b => b.textContent.includes('59 元') && b.textContent.includes('包邮'))", timeout=15_000)
    assert await page.locator(".kf-quick").count() == 0

    # a forged token is refused; the real one works
    version, _, exp, sig = session["token"].split(".")
    forged = ".".join([version, "0" * 32, exp, sig])
    statuses = await page.evaluate(
        """async ([good, bad]) => {
            const get = t => fetch('/api/web/history', {headers: {Authorization: 'Bearer ' + t}}).then(r => r.status);
            return [await get(good), await get(bad), await get('v1.nonsense')];
        }""", [session["token"], forged])
    assert statuses == [200, 401, 401]

    # Esc closes and gives focus back to the launcher
    await page.locator(".kf-input").press("Escape")
    await panel.wait_for(state="hidden")
    assert await launcher.get_attribute("aria-expanded") == "false"
    assert await page.evaluate(
        "() => document.querySelector('[data-kefu-widget]').shadowRoot.activeElement?.className") == "kf-launcher"

    assert problems == []
    await ctx.close()


async def test_widget_on_a_phone_in_english_with_rate_limit(
    web_server: WebServerFactory, browser: Any, artifacts_dir: Path
) -> None:
    server, _ = await web_server({"web.rate_per_session_per_min": 1})
    ctx, page, problems = await open_page(
        browser, str(server.make_url(OWN_PAGE)), html=widget_page("en"), locale="en-US",
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, device_scale_factor=2,
        reduced_motion="reduce")
    launcher = page.locator(".kf-launcher")
    assert await launcher.get_attribute("aria-label") == "Open customer service chat"
    await launcher.click()
    panel = page.locator(".kf-panel")
    await panel.wait_for(state="visible")
    box = await panel.bounding_box()
    assert box is not None and box["width"] == 390  # full screen on a phone
    assert await page.locator(".kf-input").get_attribute("placeholder") == "Type your question, Enter to send"

    await ask(page, "如何重置密码？")
    await page.screenshot(path=str(artifacts_dir / "widget-mobile.png"))

    # over the per-session limit: the server answers 429, the widget says so kindly and keeps the text
    box_input = page.locator(".kf-input")
    await box_input.fill("多少钱包邮？")
    await box_input.press("Enter")
    notice = page.locator(".kf-notice")
    await notice.wait_for(state="visible")
    assert await notice.inner_text() == "You're sending messages a bit fast. Please wait a moment."
    failed = page.locator(".kf-row.kf-user.kf-failed")
    assert await failed.locator(".kf-bubble").inner_text() == "多少钱包邮？"
    assert await failed.locator(".kf-retry").inner_text() == "Send again"
    assert problems == []
    await ctx.close()


HOST_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Partner shop</title>
<style>* {{ color: red !important; font-size: 40px !important; }} button {{ display: none !important; }}</style>
</head><body><h1>Partner shop</h1>
<script src="{hub}/widget.js" data-bot-url="{hub}" data-title="Help" data-lang="en" data-position="left"></script>
</body></html>"""


async def host_site(hub: dict[str, str]) -> TestServer:
    """Another site (another origin) that embeds the widget, with hostile global CSS.
    ``hub["url"]`` is read per request: the hub starts after this site, whose origin it must allow."""
    app = web.Application()

    async def page(_request: web.Request) -> web.Response:
        return web.Response(text=HOST_PAGE.format(hub=hub["url"]), content_type="text/html")

    app.router.add_get("/", page)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def test_widget_embedded_on_another_site(web_server: WebServerFactory, browser: Any) -> None:
    hub: dict[str, str] = {}
    allowed = await host_site(hub)
    refused = await host_site(hub)
    try:
        partner = f"http://127.0.0.1:{allowed.port}"
        server, _ = await web_server({"web.allowed_origins": f"[{partner}]"})
        hub["url"] = f"http://127.0.0.1:{server.port}"

        ctx, page, problems = await open_page(browser, partner + "/")
        launcher = page.locator(".kf-launcher")
        await launcher.click()  # the host page hides every button; not ours
        assert await page.locator(".kf-title").inner_text() == "Help"
        assert await page.locator(".kf-title").evaluate("e => getComputedStyle(e).fontSize") == "16px"
        assert await page.locator(".kf-title").evaluate("e => getComputedStyle(e).color") != "rgb(255, 0, 0)"
        box = await launcher.bounding_box()
        assert box is not None and box["x"] < 100  # data-position="left"
        answer = await ask(page, "如何重置密码？")  # cross-origin: preflights for Authorization and Last-Event-ID
        assert "忘记密码" in await answer.locator(".kf-bubble").inner_text()
        assert await answer.locator(".kf-bubble").evaluate("e => getComputedStyle(e).fontSize") == "14px"
        assert problems == []
        await ctx.close()

        ctx, page, _ = await open_page(browser, f"http://127.0.0.1:{refused.port}/")
        await page.locator(".kf-launcher").click()
        notice = page.locator(".kf-notice")
        await notice.wait_for(state="visible")
        assert await notice.inner_text() == "Something went wrong with the connection. Please try again."
        await ctx.close()
    finally:
        await allowed.close()
        await refused.close()


ZH_LABELS = {
    "launcher": "打开在线客服", "title": "在线客服", "status": "在线 · 通常几秒内回复",
    "placeholder": "请输入您的问题，按回车发送", "input": "输入您的问题", "send": "发送", "close": "关闭对话窗口",
    "footer": "由 kefu-hub 提供智能客服",
}
EN_LABELS = {
    "launcher": "Open customer service chat", "title": "Customer service",
    "status": "Online · usually replies in seconds",
    "placeholder": "Type your question, Enter to send", "input": "Type your question", "send": "Send",
    "close": "Close chat", "footer": "Customer service by kefu-hub",
}


async def test_widget_speaks_the_page_language(
    web_server: WebServerFactory, browser: Any, artifacts_dir: Path
) -> None:
    server, _ = await web_server()

    # the demo page is lang="zh-CN": Chinese everywhere, even for a browser set to English
    ctx, page, problems = await open_page(browser, str(server.make_url("/")), locale="en-US")
    await open_widget(page)
    assert await page.evaluate("() => KefuWidget.lang") == "zh"
    assert await labels(page) == ZH_LABELS
    assert await page.locator(".kf").get_attribute("lang") == "zh-CN"
    assert english_words(await page.evaluate(UI_TEXTS)) == []
    answer = await ask(page, "如何重置密码？")  # an answer brings the thumbs and their group
    assert await answer.locator(".kf-thumb-up").get_attribute("title") == "有帮助"
    assert await answer.locator(".kf-thumb-down").get_attribute("aria-label") == "没有帮助"
    assert await answer.locator(".kf-actions").get_attribute("aria-label") == "这个回答有帮助吗？"
    assert english_words(await page.evaluate(UI_TEXTS)) == []
    await page.screenshot(path=str(artifacts_dir / "widget-zh-on-english-browser.png"))
    assert problems == []
    await ctx.close()

    # an English page: English everywhere, even for a browser set to Chinese
    ctx, page, problems = await open_page(browser, str(server.make_url(OWN_PAGE)), html=widget_page("en-GB"))
    await open_widget(page)
    assert await labels(page) == EN_LABELS
    assert await page.locator(".kf-greeting .kf-bubble").inner_text() == "Hi! How can we help you today?"
    answer = await ask(page, "如何重置密码？")
    assert await answer.locator(".kf-thumb-up").get_attribute("aria-label") == "Helpful"
    ui = await page.evaluate(UI_TEXTS)
    assert chinese(ui) == [], ui
    await page.screenshot(path=str(artifacts_dir / "widget-en.png"))
    assert problems == []
    await ctx.close()

    # data-lang beats the page's lang; a page without a (known) lang gets Chinese
    for html_lang, attrs, locale, want in [("zh-CN", 'data-lang="en"', "zh-CN", EN_LABELS),
                                           ("en", 'data-lang="zh-Hans"', "en-US", ZH_LABELS),
                                           (None, "", "en-US", ZH_LABELS),
                                           ("fr", "", "en-US", ZH_LABELS)]:
        ctx, page, problems = await open_page(
            browser, str(server.make_url(OWN_PAGE)), html=widget_page(html_lang, attrs), locale=locale)
        await page.locator(".kf-launcher").wait_for(state="attached")
        assert await page.locator(".kf-launcher").get_attribute("aria-label") == want["launcher"], (html_lang, attrs)
        assert await page.locator(".kf-input").get_attribute("placeholder") == want["placeholder"], (html_lang, attrs)
        assert problems == []
        await ctx.close()


async def test_widget_texts_from_data_attributes(web_server: WebServerFactory, browser: Any) -> None:
    server, _ = await web_server()
    attrs = ('data-placeholder="说说您遇到的问题吧" data-status="客服小云在线" data-send-label="提交" '
             'data-title="云朵客服" data-greeting="" data-powered=""')
    ctx, page, problems = await open_page(browser, str(server.make_url(OWN_PAGE)), html=widget_page("zh-CN", attrs))
    await open_widget(page)
    assert await labels(page) == {**ZH_LABELS, "placeholder": "说说您遇到的问题吧", "status": "客服小云在线",
                                  "send": "提交", "title": "云朵客服"}  # an empty data-powered keeps the default
    assert await page.locator(".kf-greeting").count() == 0  # an empty data-greeting: no greeting
    assert problems == []
    await ctx.close()

    # an override wins over the English defaults too
    ctx, page, problems = await open_page(
        browser, str(server.make_url(OWN_PAGE)), html=widget_page("en", 'data-placeholder="Ask us anything"'))
    await page.locator(".kf-launcher").wait_for(state="attached")
    assert await page.locator(".kf-input").get_attribute("placeholder") == "Ask us anything"
    assert await page.locator(".kf-send").get_attribute("aria-label") == "Send"
    assert problems == []
    await ctx.close()


def test_every_widget_text_is_documented() -> None:
    """Each text key has both languages, and its data-* attribute is named in widget.js's header and the README."""
    source = WIDGET_JS.read_text(encoding="utf-8")
    tables = re.search(r"var STRINGS = \{\s*zh: \{(.*?)\},\s*en: \{(.*?)\}\s*\};", source, re.S)
    assert tables is not None
    zh, en = (re.findall(r"^\s*(\w+):", block, re.M) for block in tables.groups())
    assert zh == en and len(zh) > 20
    header = source[:source.index("(function")]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for key in zh:
        attr = "data-" + re.sub(r"[A-Z]", lambda m: "-" + m.group(0).lower(), key)
        assert attr in header, attr
        assert attr in readme, attr
