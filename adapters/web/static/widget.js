/*
 * kefu-hub web chat widget. Plain JavaScript, no build step, no dependencies.
 *
 * Embed with one tag:
 *   <script src="https://HOST/widget.js" data-bot-url="https://HOST" data-title="在线客服"
 *           data-greeting="您好，请问有什么可以帮您？" data-color="#1677ff" data-position="right"
 *           data-lang="zh" async></script>
 *
 * Language: data-lang ("zh" or "en"), else the page's <html lang> (zh*, en*), else Chinese. The browser's own
 * language is not used: the page decides, so a Chinese shop stays Chinese for every visitor.
 *
 * Every text can be replaced on the script tag (an empty data-greeting shows no greeting):
 *   data-title          header title                  data-status          status line while connected
 *   data-greeting       first bot bubble (markdown)   data-offline         status line while reconnecting
 *   data-placeholder    input placeholder             data-typing          "bot is typing" (screen readers)
 *   data-input-label    input aria-label              data-send-label      send button aria-label
 *   data-open-label     launcher aria-label           data-unread-label    launcher aria-label with unread answers
 *   data-close-label    close button aria-label       data-log-label       message list aria-label
 *   data-quick-label    quick replies aria-label      data-rate-label      thumbs group aria-label
 *   data-helpful        thumbs-up label/title         data-unhelpful       thumbs-down label/title
 *   data-thanks         after a vote                  data-failed          on a message not sent
 *   data-retry          the retry link                data-rate-limited    notice on 429
 *   data-busy           notice on 503                 data-too-long        too long ("{n}" is the limit)
 *   data-error          any other failure             data-powered         footer line
 *   data-you-says       "I said:" (screen readers)    data-bot-says        "Agent said:" (screen readers)
 *
 * Everything lives in an open shadow root, so the host page's CSS cannot reach in and ours cannot leak
 * out. Nothing received from the server or typed by the visitor is ever parsed as HTML: messages are
 * built from DOM nodes and text nodes only (see renderMarkdown), so markup in an answer shows as text.
 * Answers arrive over an SSE stream read with fetch (so the session token goes in a header and the
 * stream resumes from Last-Event-ID after a drop, losing and repeating nothing).
 */
(function () {
  "use strict";
  if (window.KefuWidget) return; // loaded twice: keep the first

  var VERSION = "1.0.0";
  var SVG_NS = "http://www.w3.org/2000/svg";

  /*
   * Every text a visitor can see or hear (labels, aria-labels, titles, notices) comes from this table, so the widget
   * never speaks English on a Chinese page. Each key can be overridden on the script tag by the data-* attribute of
   * the same name in kebab case (placeholder -> data-placeholder, rateLimited -> data-rate-limited); see the header.
   */
  var STRINGS = {
    zh: {
      title: "在线客服",
      greeting: "您好，请问有什么可以帮您？",
      status: "在线 · 通常几秒内回复",
      offline: "连接中断，正在重新连接…",
      openLabel: "打开在线客服",
      unreadLabel: "打开在线客服（有新消息）",
      closeLabel: "关闭对话窗口",
      logLabel: "聊天记录",
      inputLabel: "输入您的问题",
      placeholder: "请输入您的问题，按回车发送",
      sendLabel: "发送",
      typing: "客服正在输入…",
      quickLabel: "快捷回复",
      rateLabel: "这个回答有帮助吗？",
      helpful: "有帮助",
      unhelpful: "没有帮助",
      thanks: "感谢您的反馈！",
      rateLimited: "您发送得有点快，请稍等片刻再试。",
      busy: "当前咨询人数较多，请稍后重新发送。",
      failed: "发送失败",
      retry: "重新发送",
      tooLong: "消息太长了，请精简到 {n} 字以内。",
      error: "网络好像出了点问题，请稍后再试。",
      youSays: "我说：",
      botSays: "客服说：",
      powered: "由 kefu-hub 提供智能客服"
    },
    en: {
      title: "Customer service",
      greeting: "Hi! How can we help you today?",
      status: "Online · usually replies in seconds",
      offline: "Connection lost, reconnecting…",
      openLabel: "Open customer service chat",
      unreadLabel: "Open customer service chat (new message)",
      closeLabel: "Close chat",
      logLabel: "Conversation",
      inputLabel: "Type your question",
      placeholder: "Type your question, Enter to send",
      sendLabel: "Send",
      typing: "Agent is typing…",
      quickLabel: "Quick replies",
      rateLabel: "Was this answer helpful?",
      helpful: "Helpful",
      unhelpful: "Not helpful",
      thanks: "Thanks for your feedback!",
      rateLimited: "You're sending messages a bit fast. Please wait a moment.",
      busy: "We're very busy right now. Please send it again shortly.",
      failed: "Not sent",
      retry: "Send again",
      tooLong: "That message is too long; please keep it under {n} characters.",
      error: "Something went wrong with the connection. Please try again.",
      youSays: "You said: ",
      botSays: "Agent said: ",
      powered: "Customer service by kefu-hub"
    }
  };

  var ICONS = {
    chat: ["M21 11.5a8.5 8.5 0 0 1-12.3 7.6L3.5 20.5l1.4-4.8A8.5 8.5 0 1 1 21 11.5z", "M8.5 11.5h.01M12.5 11.5h.01M16.5 11.5h.01"],
    close: ["M6 6l12 12", "M18 6L6 18"],
    send: ["M4 12L20 4l-6.5 16-2.5-6.5z", "M11 13.5L20 4"],
    thumb: ["M7.5 10.5V20H4v-9.5z", "M7.5 10.5l3.8-6.3a1.9 1.9 0 0 1 3.4 1.5L14 9.5h5a2 2 0 0 1 2 2.4l-1.3 6.3A2.2 2.2 0 0 1 17.5 20h-10"],
    agent: ["M4.5 13.5V12a7.5 7.5 0 0 1 15 0v1.5", "M4.5 13.5h2.8v5H5.5a1 1 0 0 1-1-1zM19.5 13.5h-2.8v5h1.8a1 1 0 0 0 1-1z", "M16.7 18.5c0 1.2-1.9 2-4.2 2"]
  };

  var CSS = [
    ":host{all:initial;position:fixed;z-index:2147483000;bottom:0;right:0;left:auto;font-size:14px}",
    ":host([data-position=left]){left:0;right:auto}",
    "*,*::before,*::after{box-sizing:border-box}",
    // inherited properties are set again here: a host page's "* {...!important}" reaches :host, never past it
    ".kf{font-size:14px;font-weight:400;font-style:normal;letter-spacing:normal;word-spacing:normal;text-align:left;text-transform:none;text-indent:0;white-space:normal;visibility:visible;cursor:auto;direction:ltr}",
    ".kf{--kf-color:#1677ff;--kf-on-color:#fff;font-family:system-ui,-apple-system,'PingFang SC','Hiragino Sans GB','Microsoft YaHei','Noto Sans CJK SC','Source Han Sans SC',sans-serif;color:#1f2329;line-height:1.6;-webkit-font-smoothing:antialiased}",
    "button{font:inherit;color:inherit;cursor:pointer}",
    "svg{width:22px;height:22px;fill:none;stroke:currentColor;stroke-width:2;stroke-linecap:round;stroke-linejoin:round;flex:none}",
    ".kf-launcher{position:fixed;bottom:24px;right:24px;width:60px;height:60px;border:0;border-radius:50%;background:var(--kf-color);color:var(--kf-on-color);display:flex;align-items:center;justify-content:center;box-shadow:0 8px 24px rgba(0,0,0,.18),0 2px 6px rgba(0,0,0,.12);transition:transform .18s ease,box-shadow .18s ease}",
    ".kf[data-position=left] .kf-launcher{right:auto;left:24px}",
    ".kf-launcher:hover{transform:translateY(-2px) scale(1.03);box-shadow:0 12px 28px rgba(0,0,0,.22)}",
    ".kf-launcher svg{width:28px;height:28px}",
    ".kf-launcher:focus-visible,.kf button:focus-visible,.kf textarea:focus-visible,.kf a:focus-visible,.kf-messages:focus-visible{outline:3px solid color-mix(in srgb,var(--kf-color) 45%,transparent);outline-offset:2px}",
    ".kf-badge{position:absolute;top:2px;right:2px;width:14px;height:14px;border-radius:50%;background:#f5222d;border:2px solid #fff}",
    ".kf-panel{position:fixed;bottom:100px;right:24px;width:380px;height:min(620px,calc(100vh - 124px));display:flex;flex-direction:column;background:#fff;border-radius:16px;overflow:hidden;box-shadow:0 16px 48px rgba(15,23,42,.22),0 2px 8px rgba(15,23,42,.08);transform-origin:bottom right;animation:kf-in .2s ease-out}",
    ".kf[data-position=left] .kf-panel{right:auto;left:24px;transform-origin:bottom left}",
    ".kf-panel[hidden]{display:none}",
    "@keyframes kf-in{from{opacity:0;transform:translateY(12px) scale(.98)}to{opacity:1;transform:none}}",
    ".kf-header{display:flex;align-items:center;gap:12px;padding:16px 14px 16px 18px;background:linear-gradient(135deg,var(--kf-color),color-mix(in srgb,var(--kf-color) 70%,#000));color:var(--kf-on-color)}",
    ".kf-avatar{width:40px;height:40px;border-radius:50%;background:rgba(255,255,255,.2);display:flex;align-items:center;justify-content:center}",
    ".kf-titles{flex:1;min-width:0}",
    ".kf-title{margin:0;font-size:16px;font-weight:600;line-height:1.3;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}",
    ".kf-status{margin:2px 0 0;font-size:12px;opacity:.9;display:flex;align-items:center;gap:6px}",
    ".kf-dot{width:8px;height:8px;border-radius:50%;background:#52c41a;box-shadow:0 0 0 2px rgba(255,255,255,.35)}",
    ".kf-offline .kf-dot{background:#faad14}",
    ".kf-close{width:36px;height:36px;border:0;border-radius:10px;background:transparent;color:inherit;display:flex;align-items:center;justify-content:center}",
    ".kf-close:hover{background:rgba(255,255,255,.18)}",
    ".kf-messages{flex:1;overflow-y:auto;padding:18px 14px 8px;background:#f5f7fb;display:flex;flex-direction:column;gap:12px;overscroll-behavior:contain}",
    ".kf-row{display:flex;flex-direction:column;max-width:86%}",
    ".kf-user{align-self:flex-end;align-items:flex-end}",
    ".kf-bot{align-self:flex-start;align-items:flex-start}",
    ".kf-bubble{padding:10px 14px;border-radius:14px;word-wrap:break-word;overflow-wrap:anywhere;white-space:normal}",
    ".kf-user .kf-bubble{background:var(--kf-color);color:var(--kf-on-color);border-bottom-right-radius:4px;white-space:pre-wrap}",
    ".kf-bot .kf-bubble{background:#fff;border:1px solid #e8ebf2;border-bottom-left-radius:4px;box-shadow:0 1px 2px rgba(15,23,42,.04)}",
    ".kf-agent .kf-bubble{border-color:color-mix(in srgb,var(--kf-color) 35%,#e8ebf2)}",
    ".kf-bubble p{margin:0}.kf-bubble p+p,.kf-bubble p+ul,.kf-bubble p+ol,.kf-bubble ul+p,.kf-bubble ol+p{margin-top:8px}",
    ".kf-bubble ul,.kf-bubble ol{margin:4px 0;padding-left:20px}",
    ".kf-bubble code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.92em;background:#f2f4f8;border-radius:4px;padding:1px 4px}",
    ".kf-bubble a{color:var(--kf-color);text-decoration:underline;text-underline-offset:2px}",
    ".kf-bubble .kf-h{font-weight:600}",
    ".kf-streaming .kf-bubble::after{content:'';display:inline-block;width:7px;height:15px;margin-left:2px;vertical-align:-2px;background:currentColor;opacity:.55;animation:kf-blink 1s steps(2) infinite}",
    "@keyframes kf-blink{50%{opacity:0}}",
    ".kf-typing .kf-bubble{display:flex;gap:5px;align-items:center;height:40px}",
    ".kf-typing i{width:7px;height:7px;border-radius:50%;background:#a8b0bf;animation:kf-bounce 1.2s infinite ease-in-out}",
    ".kf-typing i:nth-child(2){animation-delay:.15s}.kf-typing i:nth-child(3){animation-delay:.3s}",
    "@keyframes kf-bounce{0%,60%,100%{transform:translateY(0);opacity:.6}30%{transform:translateY(-5px);opacity:1}}",
    ".kf-meta{display:flex;align-items:center;gap:8px;margin-top:4px;font-size:12px;color:#8a93a3}",
    ".kf-failed .kf-bubble{opacity:.7}",
    ".kf-failed .kf-meta{color:#f5222d}",
    ".kf-retry{border:0;background:none;padding:0;color:var(--kf-color);text-decoration:underline}",
    ".kf-actions{display:flex;gap:4px;margin-top:4px}",
    ".kf-thumb{width:30px;height:28px;border:1px solid transparent;border-radius:8px;background:transparent;color:#8a93a3;display:flex;align-items:center;justify-content:center}",
    ".kf-thumb svg{width:16px;height:16px}",
    ".kf-thumb:hover{background:#eef1f6;color:#4e5969}",
    ".kf-thumb[aria-pressed=true]{color:var(--kf-color);background:color-mix(in srgb,var(--kf-color) 10%,#fff);border-color:color-mix(in srgb,var(--kf-color) 30%,#fff)}",
    ".kf-thumb-down svg{transform:rotate(180deg)}",
    ".kf-quick{display:flex;flex-wrap:wrap;gap:8px;margin-top:8px}",
    ".kf-quick button{border:1px solid color-mix(in srgb,var(--kf-color) 45%,#fff);background:#fff;color:var(--kf-color);border-radius:16px;padding:5px 12px;font-size:13px;line-height:1.4;text-align:left}",
    ".kf-quick button:hover{background:color-mix(in srgb,var(--kf-color) 8%,#fff)}",
    ".kf-notice{margin:0 14px 6px;padding:8px 12px;border-radius:10px;background:#fff7e6;color:#ad6800;border:1px solid #ffe7ba;font-size:13px}",
    ".kf-notice[hidden]{display:none}",
    ".kf-notice.kf-ok{background:#f6ffed;color:#389e0d;border-color:#d9f7be}",
    ".kf-composer{display:flex;align-items:flex-end;gap:8px;padding:10px 12px 8px;border-top:1px solid #eef0f4;background:#fff}",
    ".kf-input{flex:1;resize:none;border:1px solid #dfe3ea;border-radius:12px;padding:9px 12px;font:inherit;line-height:1.5;max-height:120px;min-height:40px;color:#1f2329;background:#fff}",
    ".kf-input:focus{border-color:var(--kf-color);outline:none;box-shadow:0 0 0 3px color-mix(in srgb,var(--kf-color) 18%,transparent)}",
    ".kf-send{width:40px;height:40px;border:0;border-radius:12px;background:var(--kf-color);color:var(--kf-on-color);display:flex;align-items:center;justify-content:center}",
    ".kf-send:disabled{opacity:.45;cursor:default}",
    ".kf-send svg{width:20px;height:20px}",
    ".kf-footer{text-align:center;font-size:11px;color:#a0a7b4;padding:0 0 8px;background:#fff}",
    ".kf-sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}",
    "@media (max-width:480px){.kf-panel,.kf[data-position=left] .kf-panel{inset:0;width:100%;height:100%;height:100dvh;border-radius:0;padding-bottom:env(safe-area-inset-bottom)}.kf-launcher{bottom:16px;right:16px;width:56px;height:56px}.kf[data-position=left] .kf-launcher{left:16px}.kf-open .kf-launcher{display:none}.kf-input{font-size:16px}}",
    "@media (prefers-reduced-motion:reduce){.kf *{animation:none!important;transition:none!important}}"
  ].join("\n");

  // ------------------------------------------------------------------ configuration
  var script = document.currentScript || (function () {
    var all = document.querySelectorAll("script[src*='widget.js']");
    return all[all.length - 1] || null;
  })();
  var ds = (script && script.dataset) || {};
  var botUrl = (ds.botUrl || (script && script.src ? new URL(script.src, location.href).origin : location.origin))
    .replace(/\/+$/, "");
  var lang = langOf(ds.lang) || langOf(document.documentElement.getAttribute("lang")) || "zh";
  var T = texts(STRINGS[lang], ds);
  var title = T.title;
  var greeting = T.greeting;
  var color = /^#(?:[0-9a-fA-F]{3}){1,2}$/.test(ds.color || "") ? ds.color : "#1677ff";
  var position = ds.position === "left" ? "left" : "right";
  var STORE_KEY = "kefu-hub:" + botUrl;

  // The page says which language it is written in; the browser's own language is not asked: a Chinese shop's page
  // stays Chinese for a visitor whose browser is set to English.
  function langOf(value) {
    var l = String(value || "").trim().toLowerCase();
    if (/^zh(?:$|[-_])/.test(l) || l === "cn" || l === "chinese") return "zh";
    if (/^en(?:$|[-_])/.test(l) || l === "english") return "en";
    return null;
  }

  // The language's texts, each replaced by the script tag's data-* attribute of the same name where it has one.
  // An empty data-greeting means no greeting; other empty attributes keep the default.
  function texts(defaults, data) {
    var out = {};
    Object.keys(defaults).forEach(function (key) {
      var v = data[key];
      out[key] = v != null && (v !== "" || key === "greeting") ? v : defaults[key];
    });
    return out;
  }

  function onColor(hex) { // readable text on the brand colour
    var h = hex.slice(1);
    if (h.length === 3) h = h.replace(/./g, "$&$&");
    var rgb = [0, 2, 4].map(function (i) {
      var c = parseInt(h.slice(i, i + 2), 16) / 255;
      return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4);
    });
    var lum = 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2];
    return lum > 0.45 ? "#1f2329" : "#ffffff";
  }

  // ------------------------------------------------------------------ storage (may be unavailable)
  var memoryStore = {};
  function load(key) {
    try { return JSON.parse(localStorage.getItem(key) || "null"); } catch (e) { return memoryStore[key] || null; }
  }
  function save(key, value) {
    memoryStore[key] = value;
    try { localStorage.setItem(key, JSON.stringify(value)); } catch (e) { /* private mode: memory only */ }
  }

  // ------------------------------------------------------------------ DOM helpers (no innerHTML anywhere)
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    if (attrs) Object.keys(attrs).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "class") node.className = attrs[k];
      else if (attrs[k] !== null && attrs[k] !== undefined) node.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c) node.appendChild(c); });
    return node;
  }
  function icon(name) {
    var svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    ICONS[name].forEach(function (d) {
      var p = document.createElementNS(SVG_NS, "path");
      p.setAttribute("d", d);
      svg.appendChild(p);
    });
    return svg;
  }

  /*
   * A small, safe markdown subset: paragraphs and line breaks, "- " and "1. " lists, "# " headings
   * (bold lines), **bold**, `code`, [text](https://...) and bare http(s) links. Everything is a text
   * node or an element we create; links only ever get http(s) URLs.
   */
  function renderMarkdown(text, parent) {
    var lines = String(text).replace(/\r\n?/g, "\n").split("\n");
    var list = null, listKind = null, para = null, m;
    lines.forEach(function (line) {
      if (/^\s*$/.test(line)) { list = null; para = null; return; }
      if ((m = /^\s*[-*•]\s+(.*)$/.exec(line)) || (m = /^\s*(?:\d{1,3})[.)、]\s+(.*)$/.exec(line))) {
        var kind = /^\s*[-*•]/.test(line) ? "ul" : "ol";
        if (!list || listKind !== kind) {
          list = el(kind);
          listKind = kind;
          var start = /^\s*(\d{1,3})/.exec(line);
          if (kind === "ol" && start && start[1] !== "1") list.setAttribute("start", start[1]);
          parent.appendChild(list);
        }
        var li = el("li");
        inline(m[1], li);
        list.appendChild(li);
        para = null;
        return;
      }
      list = null;
      if ((m = /^#{1,4}\s+(.*)$/.exec(line))) {
        var h = el("p", { class: "kf-h" });
        inline(m[1], h);
        parent.appendChild(h);
        para = null;
        return;
      }
      if (para) para.appendChild(el("br"));
      else { para = el("p"); parent.appendChild(para); }
      inline(line, para);
    });
  }

  var INLINE = /(`[^`\n]+`)|(\*\*[^*\n]+\*\*)|\[([^\]\n]+)\]\((https?:\/\/[^\s()<>]+)\)|(https?:\/\/[^\s<>"'，。；！？、）)]+)/g;
  function inline(text, parent) {
    var last = 0, m;
    INLINE.lastIndex = 0;
    while ((m = INLINE.exec(text))) {
      if (m.index > last) parent.appendChild(document.createTextNode(text.slice(last, m.index)));
      if (m[1]) parent.appendChild(el("code", { text: m[1].slice(1, -1) }));
      else if (m[2]) parent.appendChild(el("strong", { text: m[2].slice(2, -2) }));
      else parent.appendChild(link(m[3] || m[5], m[4] || m[5]));
      last = INLINE.lastIndex;
    }
    if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
  }
  function link(label, href) {
    var url;
    try { url = new URL(href); } catch (e) { return document.createTextNode(label); }
    if (url.protocol !== "http:" && url.protocol !== "https:") return document.createTextNode(label);
    return el("a", { href: url.href, target: "_blank", rel: "noopener noreferrer nofollow", text: label });
  }

  function codePoints(s) { return Array.from(s).length; }

  function randomId() {
    var bytes = new Uint8Array(12);
    (window.crypto || window.msCrypto).getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }

  // ------------------------------------------------------------------ build the widget
  var host = el("div", { "data-kefu-widget": VERSION, "data-position": position });
  var shadow = host.attachShadow({ mode: "open" });
  var style = document.createElement("style");
  style.textContent = CSS;
  shadow.appendChild(style);

  var badge = el("span", { class: "kf-badge", hidden: "" });
  var launcher = el("button", {
    class: "kf-launcher", type: "button", "aria-label": T.openLabel, "aria-expanded": "false",
    "aria-controls": "kf-panel", "aria-haspopup": "dialog"
  }, [icon("chat"), badge]);
  var statusText = el("span", { text: T.status });
  var closeBtn = el("button", { class: "kf-close", type: "button", "aria-label": T.closeLabel }, [icon("close")]);
  var messagesEl = el("div", { class: "kf-messages", role: "log", "aria-live": "polite", "aria-label": T.logLabel, tabindex: "0" });
  var notice = el("div", { class: "kf-notice", role: "status", "aria-live": "assertive", hidden: "" });
  var input = el("textarea", {
    class: "kf-input", rows: "1", "aria-label": T.inputLabel, placeholder: T.placeholder, maxlength: "2000",
    enterkeyhint: "send", autocomplete: "off"
  });
  var sendBtn = el("button", { class: "kf-send", type: "submit", "aria-label": T.sendLabel, disabled: "" }, [icon("send")]);
  var form = el("form", { class: "kf-composer", novalidate: "" }, [input, sendBtn]);
  var panel = el("section", {
    class: "kf-panel", id: "kf-panel", role: "dialog", "aria-modal": "false", "aria-labelledby": "kf-title",
    hidden: ""
  }, [
    el("header", { class: "kf-header" }, [
      el("div", { class: "kf-avatar", "aria-hidden": "true" }, [icon("agent")]),
      el("div", { class: "kf-titles" }, [
        el("h2", { class: "kf-title", id: "kf-title", text: title }),
        el("p", { class: "kf-status" }, [el("span", { class: "kf-dot", "aria-hidden": "true" }), statusText])
      ]),
      closeBtn
    ]),
    messagesEl, notice, form,
    el("div", { class: "kf-footer", text: T.powered })
  ]);
  var root = el("div", { class: "kf", "data-position": position, lang: lang === "zh" ? "zh-CN" : "en" }, [launcher, panel]);
  root.style.setProperty("--kf-color", color);
  root.style.setProperty("--kf-on-color", onColor(color));
  shadow.appendChild(root);

  // ------------------------------------------------------------------ state
  var S = {
    token: null, sessionId: null, expiresAt: 0, maxChars: 2000,
    cursor: null,          // last SSE event id handled; sent as Last-Event-ID
    starting: null, stream: null, backoff: 1000, retryTimer: null, renewTimer: null,
    users: {},             // message id -> user row
    answers: {},           // message id -> {row, bubble, text, cps, streamed, final}
    replies: {},           // answer id -> row
    typing: {},            // message id -> typing row
    open: false
  };

  // ------------------------------------------------------------------ rendering
  function scrollDown(force) {
    var near = messagesEl.scrollHeight - messagesEl.scrollTop - messagesEl.clientHeight < 120;
    if (force || near) messagesEl.scrollTop = messagesEl.scrollHeight;
  }

  function addGreeting() {
    if (!greeting) return;
    var bubble = el("div", { class: "kf-bubble" });
    renderMarkdown(greeting, bubble);
    messagesEl.appendChild(el("div", { class: "kf-row kf-bot kf-greeting" }, [
      el("span", { class: "kf-sr", text: T.botSays }), bubble
    ]));
  }

  function addUser(mid, text, opts) {
    if (mid && S.users[mid]) return S.users[mid];
    var row = el("div", { class: "kf-row kf-user", "data-message-id": mid || null }, [
      el("span", { class: "kf-sr", text: T.youSays }),
      el("div", { class: "kf-bubble", text: text })
    ]);
    row._text = text;
    if (mid) S.users[mid] = row;
    messagesEl.appendChild(row);
    if (opts && opts.failed) markFailed(mid);
    scrollDown(true);
    return row;
  }

  function showTyping(mid) {
    if (S.typing[mid] || (S.answers[mid] && S.answers[mid].final)) return;
    var row = el("div", { class: "kf-row kf-bot kf-typing", "aria-label": T.typing, role: "status" }, [
      el("div", { class: "kf-bubble" }, [el("i"), el("i"), el("i")])
    ]);
    S.typing[mid] = row;
    messagesEl.appendChild(row);
    scrollDown(false);
  }
  function hideTyping(mid) {
    var row = S.typing[mid];
    if (row) { row.remove(); delete S.typing[mid]; }
  }

  function answerFor(mid) {
    var a = S.answers[mid];
    if (a) return a;
    var bubble = el("div", { class: "kf-bubble" });
    var row = el("div", { class: "kf-row kf-bot kf-streaming", "data-message-id": mid, "data-streamed": "0", "aria-busy": "true" }, [
      el("span", { class: "kf-sr", text: T.botSays }), bubble
    ]);
    a = S.answers[mid] = { row: row, bubble: bubble, text: "", cps: 0, streamed: 0, final: false };
    var typing = S.typing[mid];
    if (typing) { messagesEl.replaceChild(row, typing); delete S.typing[mid]; }
    else messagesEl.appendChild(row);
    return a;
  }

  function paint(a) {
    if (a.painting) return;
    a.painting = true;
    requestAnimationFrame(function () {
      a.painting = false;
      a.bubble.textContent = "";
      renderMarkdown(a.text, a.bubble);
      scrollDown(false);
    });
  }

  function onDelta(ev) {
    var mid = ev.message_id;
    if (!mid) return;
    var a = answerFor(mid);
    if (a.final) return;
    if (ev.offset === 0 && a.cps > 0) { a.text = ""; a.cps = 0; } // the answer was started again
    if (ev.offset !== a.cps) return; // already have it (or a gap the final answer will fill)
    a.text += ev.text;
    a.cps += codePoints(ev.text);
    a.streamed += 1;
    a.row.setAttribute("data-streamed", String(a.streamed));
    paint(a);
  }

  function onReply(ev) {
    var mid = ev.message_id, aid = ev.answer_id;
    var row;
    if (aid && S.replies[aid]) { // replayed after a reload: keep one copy
      row = S.replies[aid];
      if (row._text !== ev.text) { row._bubble.textContent = ""; renderMarkdown(ev.text, row._bubble); row._text = ev.text; }
      return;
    }
    if (mid && aid === mid) {
      var a = answerFor(mid);
      a.final = true;
      row = a.row;
      row.classList.remove("kf-streaming");
      row.removeAttribute("aria-busy");
      row._bubble = a.bubble;
    } else {
      var bubble = el("div", { class: "kf-bubble" });
      row = el("div", { class: "kf-row kf-bot" }, [el("span", { class: "kf-sr", text: T.botSays }), bubble]);
      row._bubble = bubble;
      messagesEl.appendChild(row);
    }
    if (ev.source === "agent") row.classList.add("kf-agent");
    row._bubble.textContent = "";
    renderMarkdown(ev.text, row._bubble);
    row._text = ev.text;
    if (aid) {
      S.replies[aid] = row;
      row.setAttribute("data-answer-id", aid);
      row.appendChild(thumbs(aid, ev.feedback));
    }
    setQuickReplies(row, ev.quick_replies || []);
    if (mid) hideTyping(mid);
    if (!S.open) setUnread(true);
    scrollDown(false);
  }

  function onDone(mid) {
    hideTyping(mid);
    var a = S.answers[mid];
    if (a && !a.final) { a.final = true; a.row.classList.remove("kf-streaming"); a.row.removeAttribute("aria-busy"); }
  }

  function thumbs(aid, current) {
    var up = el("button", { class: "kf-thumb kf-thumb-up", type: "button", "aria-label": T.helpful, title: T.helpful, "aria-pressed": String(current === "up") }, [icon("thumb")]);
    var down = el("button", { class: "kf-thumb kf-thumb-down", type: "button", "aria-label": T.unhelpful, title: T.unhelpful, "aria-pressed": String(current === "down") }, [icon("thumb")]);
    function vote(rating) {
      var before = up.getAttribute("aria-pressed") === "true" ? "up" : down.getAttribute("aria-pressed") === "true" ? "down" : "none";
      var next = before === rating ? "none" : rating;
      up.setAttribute("aria-pressed", String(next === "up"));
      down.setAttribute("aria-pressed", String(next === "down"));
      api("POST", "/api/web/feedback", { answer_id: aid, rating: next }).then(function () {
        if (next !== "none") flash(T.thanks, true);
      }, function (err) {
        up.setAttribute("aria-pressed", String(before === "up"));
        down.setAttribute("aria-pressed", String(before === "down"));
        flash(errorText(err));
      });
    }
    up.addEventListener("click", function () { vote("up"); });
    down.addEventListener("click", function () { vote("down"); });
    return el("div", { class: "kf-actions", role: "group", "aria-label": T.rateLabel }, [up, down]);
  }

  var quickRow = null;
  function setQuickReplies(row, choices) {
    clearQuickReplies();
    if (!choices.length) return;
    quickRow = el("div", { class: "kf-quick", role: "group", "aria-label": T.quickLabel });
    choices.slice(0, 6).forEach(function (choice) {
      var b = el("button", { type: "button", text: choice });
      b.addEventListener("click", function () { send(choice); });
      quickRow.appendChild(b);
    });
    row.appendChild(quickRow);
  }
  function clearQuickReplies() { if (quickRow) { quickRow.remove(); quickRow = null; } }

  function markFailed(mid) {
    var row = S.users[mid];
    if (!row || row.classList.contains("kf-failed")) return;
    row.classList.add("kf-failed");
    var retry = el("button", { class: "kf-retry", type: "button", text: T.retry });
    var meta = el("div", { class: "kf-meta" }, [el("span", { text: T.failed }), retry]);
    retry.addEventListener("click", function () {
      meta.remove();
      row.classList.remove("kf-failed");
      showTyping(mid);
      post(mid, row._text);
    });
    row.appendChild(meta);
  }

  var flashTimer = null;
  function flash(text, ok) {
    var atBottom = messagesEl.scrollHeight - messagesEl.scrollTop - messagesEl.clientHeight < 40;
    notice.textContent = text;
    notice.classList.toggle("kf-ok", !!ok);
    notice.hidden = false;
    if (atBottom) scrollDown(true); // the notice takes room from the messages; keep the newest in view
    clearTimeout(flashTimer);
    flashTimer = setTimeout(function () { notice.hidden = true; }, ok ? 2500 : 6000);
  }

  function setUnread(on) {
    badge.hidden = !on;
    launcher.setAttribute("aria-label", on ? T.unreadLabel : T.openLabel);
  }

  function setOnline(on) {
    root.classList.toggle("kf-offline", !on);
    statusText.textContent = on ? T.status : T.offline;
  }

  function errorText(err) {
    if (err && err.status === 429) return T.rateLimited;
    if (err && err.status === 503) return T.busy;
    if (err && err.code === "message_too_long") return T.tooLong.replace("{n}", S.maxChars);
    return T.error;
  }

  // ------------------------------------------------------------------ server calls
  function api(method, path, body, retried) {
    var headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (S.token && path !== "/api/web/session") headers.Authorization = "Bearer " + S.token;
    return fetch(botUrl + path, {
      method: method, headers: headers, body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit", cache: "no-store", mode: "cors"
    }).then(function (res) {
      if (res.status === 401 && !retried && path !== "/api/web/session") {
        return session().then(function () { return api(method, path, body, true); });
      }
      return res.json().catch(function () { return {}; }).then(function (data) {
        if (!res.ok) {
          var err = new Error(data.message || "HTTP " + res.status);
          err.status = res.status;
          err.code = data.error;
          throw err;
        }
        return data;
      });
    });
  }

  function session() {
    var stored = load(STORE_KEY) || {};
    return api("POST", "/api/web/session", { token: S.token || stored.token || null }).then(function (s) {
      if (S.sessionId && s.session_id !== S.sessionId) resetConversation();
      S.token = s.token;
      S.sessionId = s.session_id;
      S.expiresAt = s.expires_at;
      S.maxChars = s.max_message_chars || S.maxChars;
      input.setAttribute("maxlength", String(S.maxChars));
      // renew well before expiry, so a tab left open keeps its conversation
      clearTimeout(S.renewTimer);
      S.renewTimer = setTimeout(function () { session().catch(function () { /* retried on the next 401 */ }); },
                                Math.min(Math.max(60, (s.ttl_s || 3600) * 0.8), 86400 * 20) * 1000);
      save(STORE_KEY, { token: s.token, session_id: s.session_id, open: S.open });
      return s;
    });
  }

  function resetConversation() {
    messagesEl.textContent = "";
    S.users = {}; S.answers = {}; S.replies = {}; S.typing = {}; S.cursor = null;
    addGreeting();
  }

  function history() {
    return api("GET", "/api/web/history").then(function (h) {
      resetConversation();
      h.messages.forEach(function (m) {
        if (m.role === "user") {
          addUser(m.message_id, m.text);
        } else if (m.streaming) {
          var a = answerFor(m.message_id);
          a.text = m.text; a.cps = codePoints(m.text);
          paint(a);
        } else {
          onReply({ message_id: m.answer_id ? m.answer_id.split(".")[0] : null, answer_id: m.answer_id || null,
                    text: m.text, quick_replies: [], feedback: m.feedback, source: m.role === "agent" ? "agent" : m.source });
        }
      });
      // quick replies only make sense on the latest answer
      var lastBot = h.messages.length ? h.messages[h.messages.length - 1] : null;
      if (lastBot && lastBot.answer_id && lastBot.quick_replies && lastBot.quick_replies.length) {
        setQuickReplies(S.replies[lastBot.answer_id], lastBot.quick_replies);
      }
      (h.pending || []).forEach(function (mid) { if (!S.answers[mid]) showTyping(mid); });
      S.cursor = h.cursor;
      setUnread(false);
      scrollDown(true);
    });
  }

  function connect() {
    if (S.stream) return;
    clearTimeout(S.retryTimer);
    var ctl = new AbortController();
    S.stream = ctl;
    var headers = { Accept: "text/event-stream", Authorization: "Bearer " + S.token };
    if (S.cursor) headers["Last-Event-ID"] = S.cursor;
    fetch(botUrl + "/api/web/stream", { headers: headers, signal: ctl.signal, cache: "no-store", credentials: "omit", mode: "cors" })
      .then(function (res) {
        if (res.status === 401) {
          return session().then(function () { S.stream = null; connect(); });
        }
        if (!res.ok || !res.body) {
          var e = new Error("stream " + res.status);
          e.status = res.status;
          e.retryAfter = retryAfterMs(res);
          throw e;
        }
        setOnline(true);
        S.backoff = 1000;
        return readEvents(res.body.getReader()).then(function () { throw new Error("stream ended"); });
      })
      .catch(function (err) {
        if (S.stream !== ctl) return;
        S.stream = null;
        if (ctl.signal.aborted) return;
        if (!err || err.message !== "stream ended") setOnline(false); // a clean end (token renewal) is not an outage
        // 429 (too many windows) / 503 (server full or busy): wait at least what the server asks, spread out
        // with jitter so a full server is not met by every widget at the same moment
        var wait = S.backoff;
        if (err && (err.status === 429 || err.status === 503)) {
          wait = Math.max(wait, err.retryAfter || 10000);
          S.backoff = Math.min(Math.max(S.backoff * 2, wait), 60000);
        } else {
          S.backoff = Math.min(S.backoff * 2, 15000);
        }
        S.retryTimer = setTimeout(connect, wait + Math.random() * Math.max(300, wait / 2));
      });
  }

  function retryAfterMs(res) {
    var secs = parseInt(res.headers.get("Retry-After") || "", 10);
    return secs > 0 ? Math.min(secs, 300) * 1000 : 0;
  }

  function readEvents(reader) {
    var decoder = new TextDecoder();
    var buffer = "", id = null, data = [];
    function pump() {
      return reader.read().then(function (chunk) {
        if (chunk.done) return;
        buffer += decoder.decode(chunk.value, { stream: true });
        var lines = buffer.split(/\r\n|\n|\r/);
        buffer = lines.pop();
        lines.forEach(function (line) {
          if (line === "") {
            if (data.length) dispatch(id, data.join("\n"));
            id = null; data = [];
            return;
          }
          if (line.charAt(0) === ":") return;
          var i = line.indexOf(":");
          var field = i < 0 ? line : line.slice(0, i);
          var value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
          if (field === "data") data.push(value);
          else if (field === "id") id = value;
        });
        return pump();
      });
    }
    return pump();
  }

  function dispatch(id, raw) {
    var ev;
    try { ev = JSON.parse(raw); } catch (e) { return; }
    try {
      if (ev.type === "user") {
        if (!S.users[ev.message_id]) addUser(ev.message_id, ev.text);
        showTyping(ev.message_id);
      } else if (ev.type === "delta") onDelta(ev);
      else if (ev.type === "reply") onReply(ev);
      else if (ev.type === "done") onDone(ev.message_id);
      else if (ev.type === "failed") { hideTyping(ev.message_id); markFailed(ev.message_id); }
    } finally {
      if (id) S.cursor = id;
    }
  }

  function start() {
    if (!S.starting) {
      S.starting = session().then(history).then(connect).catch(function (err) {
        S.starting = null;
        flash(errorText(err));
        throw err;
      });
    }
    return S.starting;
  }

  // ------------------------------------------------------------------ sending
  function pageContext() {
    return (document.title ? document.title + " " : "") + location.origin + location.pathname;
  }

  function post(mid, text) {
    start().then(function () {
      return api("POST", "/api/web/messages", { text: text, client_id: mid, context: pageContext().slice(0, 500) });
    }).catch(function (err) {
      hideTyping(mid);
      markFailed(mid);
      flash(errorText(err));
    });
  }

  function send(text) {
    text = (text || "").trim();
    if (!text) return;
    if (codePoints(text) > S.maxChars) { flash(T.tooLong.replace("{n}", S.maxChars)); return; }
    // The history is in place before the message is shown, so loading it cannot wipe the new message.
    start().then(function () {
      var mid = randomId();
      clearQuickReplies();
      addUser(mid, text);
      showTyping(mid);
      post(mid, text);
    }, function () {
      if (!input.value) { input.value = text; autosize(); } // not sent: give the text back
    });
  }

  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var text = input.value;
    if (!text.trim()) return;
    input.value = "";
    autosize();
    send(text);
    input.focus();
  });
  input.addEventListener("keydown", function (e) {
    // Enter sends, Shift+Enter is a new line; Enter that confirms an IME candidate (拼音) does neither.
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      if (typeof form.requestSubmit === "function") form.requestSubmit();
      else form.dispatchEvent(new Event("submit", { cancelable: true }));
    }
  });
  function autosize() {
    input.style.height = "auto";
    input.style.height = Math.min(input.scrollHeight + 2, 120) + "px";
    if (input.value.trim()) sendBtn.removeAttribute("disabled"); else sendBtn.setAttribute("disabled", "");
  }
  input.addEventListener("input", autosize);

  // ------------------------------------------------------------------ open / close
  function open() {
    if (S.open) return;
    S.open = true;
    panel.hidden = false;
    root.classList.add("kf-open");
    launcher.setAttribute("aria-expanded", "true");
    setUnread(false);
    remember();
    start().catch(function () { /* shown in the notice */ });
    setTimeout(function () { input.focus(); scrollDown(true); }, 0);
  }
  function close() {
    if (!S.open) return;
    S.open = false;
    panel.hidden = true;
    root.classList.remove("kf-open");
    launcher.setAttribute("aria-expanded", "false");
    remember();
    launcher.focus();
  }
  function remember() {
    var stored = load(STORE_KEY) || {};
    stored.open = S.open;
    save(STORE_KEY, stored);
  }

  launcher.addEventListener("click", function () { if (S.open) close(); else open(); });
  closeBtn.addEventListener("click", close);
  root.addEventListener("keydown", function (e) {
    if (e.key === "Escape" && S.open) { e.preventDefault(); close(); }
  });

  // ------------------------------------------------------------------ go
  addGreeting();
  function mount() {
    document.body.appendChild(host);
    var stored = load(STORE_KEY);
    if (stored && stored.open) open(); // a reload keeps an open conversation open; nothing is fetched until then
  }
  if (document.body) mount(); else document.addEventListener("DOMContentLoaded", mount);

  window.KefuWidget = { open: open, close: close, toggle: function () { if (S.open) close(); else open(); }, version: VERSION, lang: lang };
})();
