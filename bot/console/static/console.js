/* kefu-hub 坐席工作台: the one script of the console. No build step, no libraries, no external resources.
 *
 * Customer text is hostile: everything taken from data is put in the page with textContent (never innerHTML),
 * so a message like "<img src=x onerror=...>" shows as the characters it is.
 * Every write is a fetch() with the session's CSRF token in the X-CSRF-Token header (the server refuses it
 * without). Live updates come from one EventSource on /console/events; the events only say that something
 * changed, and the page then reloads the JSON it shows.
 */
(function () {
  "use strict";

  var CHANNELS = { wecom: "企业微信", dingtalk: "钉钉", web: "网页", api: "API" };
  var ROLES = { user: "客户", assistant: "机器人", agent: "坐席", system: "系统" };
  var EVENT_KINDS = ["handoff", "message", "taken", "released", "reply", "faq", "resync", "signed_out"];
  var WAIT_TICK_MS = 10000;
  var RECONNECT_MS = 3000;

  var clockOffset = 0; // server time - browser time, seconds (wait texts count from the server's clock)

  // ------------------------------------------------------------------ helpers
  function $(sel, root) { return (root || document).querySelector(sel); }
  function $all(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") || "" : "";
  }

  function nowS() { return Date.now() / 1000 + clockOffset; }

  function setClock(serverNow) {
    if (typeof serverNow === "number" && isFinite(serverNow) && serverNow > 0) {
      clockOffset = serverNow - Date.now() / 1000;
    }
  }

  function duration(seconds) {
    var s = Math.max(0, Math.floor(seconds));
    if (s < 60) return "刚刚";
    var m = Math.floor(s / 60);
    if (m < 60) return m + " 分钟";
    var h = Math.floor(m / 60);
    return h + " 小时 " + (m % 60) + " 分";
  }

  function waitText(since) {
    if (!since) return "已回复";
    var d = duration(nowS() - since);
    return d === "刚刚" ? "刚刚" : "等待 " + d;
  }

  function channelLabel(channel) { return CHANNELS[channel] || channel || ""; }

  function signIn() {
    window.location.assign("/console/login?next=" + encodeURIComponent(window.location.pathname + window.location.search));
  }

  /* One JSON call. Resolves {ok, status, data}; never rejects (a network error is status 0). */
  function api(method, url, body) {
    var init = { method: method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (method !== "GET") {
      init.headers["Content-Type"] = "application/json";
      init.headers["X-CSRF-Token"] = csrfToken();
      init.body = JSON.stringify(body || {});
    }
    return fetch(url, init).then(function (resp) {
      return resp.json().catch(function () { return {}; }).then(function (data) {
        if (resp.status === 401) signIn();
        return { ok: resp.ok, status: resp.status, data: data || {} };
      });
    }, function () {
      return { ok: false, status: 0, data: { error: "network", message: "网络连接失败，请检查网络后重试" } };
    });
  }

  function errorText(result) {
    var d = result.data || {};
    if (result.status === 403 && d.error === "csrf") return "页面已过期，请刷新页面后重试";
    if (d.message) return d.message;
    return "操作失败（" + result.status + "）";
  }

  function flash(area, kind, text) {
    if (!area) return;
    area.textContent = "";
    var box = el("div", kind === "ok" ? "flash-ok" : "flash-error", text);
    box.setAttribute("role", kind === "ok" ? "status" : "alert");
    area.appendChild(box);
  }

  function clearFlash(area) { if (area) area.textContent = ""; }

  function localFlashArea(container) {
    var area = $(".flash-area", container);
    if (!area) {
      area = el("div", "flash-area");
      area.setAttribute("aria-live", "polite");
      container.insertBefore(area, container.firstChild);
    }
    return area;
  }

  function busy(button, on) {
    if (!button) return;
    button.disabled = on;
    button.classList.toggle("busy", on);
  }

  // ------------------------------------------------------------------ live events
  var banner = null;
  function showBanner(on) {
    banner = banner || document.getElementById("conn-banner");
    if (banner) banner.hidden = !on;
  }

  /* EventSource on /console/events; fn(kind, data) per event. A stream the browser gives up on (an HTTP error,
     e.g. 503 when the server holds too many) is opened again after a pause; a signed-out session goes to
     the sign-in page. */
  function live(fn) {
    if (!window.EventSource) return;
    var source = null;
    var timer = null;
    var opened = false;

    function connect() {
      timer = null;
      source = new EventSource("/console/events");
      source.onopen = function () {
        showBanner(false);
        if (opened) fn("resync", {}); // back after a gap: what changed meanwhile is reloaded
        opened = true;
      };
      source.onerror = function () {
        showBanner(true);
        if (source.readyState === EventSource.CLOSED) {
          source.close();
          api("GET", "/console/api/inbox").then(function () { // a 401 here goes to the sign-in page
            if (!timer) timer = setTimeout(connect, RECONNECT_MS);
          });
        }
      };
      EVENT_KINDS.forEach(function (kind) {
        source.addEventListener(kind, function (ev) {
          var data = {};
          try { data = JSON.parse(ev.data || "{}") || {}; } catch (e) { data = {}; }
          if (kind === "signed_out") {
            source.close();
            signIn();
            return;
          }
          fn(kind, data);
        });
      });
    }

    window.addEventListener("pagehide", function () { if (source) source.close(); });
    connect();
  }

  /* Coalesce bursts of events into one reload, never two at once. */
  function reloader(load) {
    var pending = false;
    var running = false;
    var timer = null;
    function run() {
      timer = null;
      if (running) { pending = true; return; }
      running = true;
      Promise.resolve(load()).then(done, done);
    }
    function done() {
      running = false;
      if (pending) { pending = false; schedule(); }
    }
    function schedule() { if (!timer) timer = setTimeout(run, 150); }
    return schedule;
  }

  function tickWaits() {
    $all(".wait[data-since]").forEach(function (node) {
      var since = parseFloat(node.getAttribute("data-since"));
      if (!isFinite(since)) return;
      node.textContent = waitText(since);
      node.classList.toggle("long", since > 0 && nowS() - since >= 600);
    });
  }

  // ------------------------------------------------------------------ inbox
  function inboxRow(row, me) {
    var li = el("li", "inbox-item");
    li.setAttribute("data-key", row.key);
    if (row.taken_by) li.classList.add("is-taken");
    if (row.taken_by && row.taken_by === me) li.classList.add("is-mine");
    var cell = el("span", "who-cell");
    cell.appendChild(el("span", "who", row.name));
    if (row.unread) {
      var unread = el("span", "unread", row.unread);
      unread.title = "未读消息";
      cell.appendChild(unread);
    }
    li.appendChild(cell);
    li.appendChild(el("span", "channel channel-" + String(row.channel || "").replace(/[^a-z0-9_-]/gi, ""),
      row.channel_label || channelLabel(row.channel)));
    li.appendChild(el("span", "reason", row.reason_text));
    li.appendChild(el("span", "last", row.last_text));
    var wait = el("span", "wait", waitText(row.wait_since));
    wait.setAttribute("data-since", String(row.wait_since || 0));
    li.appendChild(wait);
    li.appendChild(el("span", "taken-by", row.taken_by_display || ""));
    var open = el("a", "open button", "打开");
    open.href = "/console/c?key=" + encodeURIComponent(row.key);
    li.appendChild(open);
    return li;
  }

  function renderInbox(list, rows) {
    var me = ($("#me") || {}).title || "";
    var before = {};
    $all(".inbox-item", list).forEach(function (node) { before[node.getAttribute("data-key")] = true; });
    var active = document.activeElement;
    var focusKey = active && list.contains(active) ? (active.closest(".inbox-item") || {}).dataset : null;
    focusKey = focusKey ? focusKey.key : null;
    var items = rows.map(function (row) {
      var li = inboxRow(row, me);
      if (!before[row.key] && Object.keys(before).length) li.classList.add("fresh");
      return li;
    });
    if (!items.length) items = [el("li", "empty", "暂时没有等待人工的会话。")];
    list.replaceChildren.apply(list, items);
    var count = document.getElementById("inbox-count");
    if (count) count.textContent = String(rows.length);
    document.title = (rows.length ? "(" + rows.length + ") " : "") + "收件箱 · kefu-hub 坐席工作台";
    if (focusKey) {
      var again = $all(".inbox-item", list).filter(function (n) { return n.getAttribute("data-key") === focusKey; })[0];
      if (again) $(".open", again).focus();
    }
    tickWaits();
  }

  function initInbox() {
    var list = document.getElementById("inbox");
    if (!list) return;
    setClock(parseFloat(list.getAttribute("data-now")));
    var area = $(".inbox-page .flash-area");
    var reload = reloader(function () {
      return api("GET", "/console/api/inbox").then(function (result) {
        if (!result.ok) { if (result.status !== 401) flash(area, "error", errorText(result)); return; }
        clearFlash(area);
        setClock(result.data.now);
        renderInbox(list, result.data.rows || []);
      });
    });
    live(function (kind) { if (kind !== "faq") reload(); });
    setInterval(tickWaits, WAIT_TICK_MS);
    tickWaits();
  }

  // ------------------------------------------------------------------ conversation
  function turnNode(t) {
    var role = ROLES[t.role] ? t.role : "system";
    var li = el("li", "turn turn-" + role);
    li.setAttribute("data-role", t.role || "system");
    var meta = el("div", "turn-meta");
    meta.appendChild(el("span", "role", t.role_label || ROLES[t.role] || t.role));
    if (t.agent) meta.appendChild(el("span", "agent", t.agent));
    if (t.source) {
      var source = el("span", "source", t.source_label || t.source);
      source.setAttribute("data-source", t.source);
      meta.appendChild(source);
    }
    if (t.vote) meta.appendChild(el("span", "vote vote-" + (t.vote === "up" ? "up" : "down"), t.vote_label || t.vote));
    if (t.time) {
      var time = el("time", "", t.time);
      if (t.iso) time.setAttribute("datetime", t.iso);
      meta.appendChild(time);
    }
    li.appendChild(meta);
    li.appendChild(el("div", "text", t.text));
    return li;
  }

  function renderConversation(root, conv) {
    var history = document.getElementById("history");
    var atBottom = history.scrollHeight - history.scrollTop - history.clientHeight < 40;
    var turns = (conv.history || []).map(turnNode);
    if (!turns.length) turns = [el("li", "empty", "还没有消息。")];
    history.replaceChildren.apply(history, turns);
    if (atBottom) history.scrollTop = history.scrollHeight;

    var owner = document.getElementById("owner");
    owner.textContent = conv.owner || (conv.state && conv.state.handed_off ? "未接手" : "机器人");
    owner.setAttribute("data-agent", conv.owner_name || "");

    var state = document.getElementById("state");
    $(".node", state).textContent = (conv.state && conv.state.node) || "—";
    $(".mode", state).textContent = conv.state && conv.state.handed_off ? "人工处理中" : "机器人";
    var body = $(".slots tbody", state);
    var slots = (conv.state && conv.state.slots) || [];
    var rows = slots.map(function (pair) {
      var tr = el("tr");
      tr.appendChild(el("td", "", pair[0]));
      tr.appendChild(el("td", "", pair[1]));
      return tr;
    });
    if (!rows.length) {
      var none = el("tr", "none");
      var td = el("td", "", "无");
      td.colSpan = 2;
      none.appendChild(td);
      rows = [none];
    }
    body.replaceChildren.apply(body, rows);

    var info = document.getElementById("row-info");
    if (info) {
      $(".channel", info).textContent = conv.channel_label || channelLabel(conv.channel);
      $(".who", info).textContent = conv.name || "";
      $(".reason", info).textContent = conv.reason_text || "—";
      var wait = $(".wait", info);
      if (conv.row) {
        wait.setAttribute("data-since", String(conv.wait_since || 0));
        wait.textContent = waitText(conv.wait_since);
      } else {
        wait.removeAttribute("data-since");
        wait.textContent = "—";
      }
    }
    var me = root.getAttribute("data-me");
    var take = document.getElementById("take");
    var release = document.getElementById("release");
    take.disabled = !conv.row || conv.owner_name === me;
    release.disabled = !(conv.state && conv.state.handed_off);
  }

  function initConversation() {
    var root = document.getElementById("conversation");
    if (!root) return;
    var key = root.getAttribute("data-key");
    var area = $(".composer .flash-area", root);
    var text = document.getElementById("reply-text");
    var send = document.getElementById("send");
    var take = document.getElementById("take");
    var release = document.getElementById("release");
    var history = document.getElementById("history");
    history.scrollTop = history.scrollHeight;

    function apply(result) {
      if (result.ok && result.data && result.data.conversation) {
        setClock(result.data.now);
        renderConversation(root, result.data.conversation);
      }
      return result;
    }
    var reload = reloader(function () {
      return api("GET", "/console/api/c?key=" + encodeURIComponent(key)).then(function (result) {
        if (!result.ok && result.status === 404) {
          renderConversation(root, { history: [], state: {}, row: null });
          flash(area, "error", "会话已不存在（可能已被删除或过期）");
          return;
        }
        apply(result);
      });
    });

    function post(button, url, body, done) {
      busy(button, true);
      return api("POST", url, body).then(function (result) {
        busy(button, false);
        if (!result.ok) {
          flash(area, "error", errorText(result));
          reload();
          return result;
        }
        clearFlash(area);
        apply(result);
        if (done) done(result);
        return result;
      });
    }

    take.addEventListener("click", function () {
      post(take, "/console/api/take", { key: key }, function () { flash(area, "ok", "已接手，客户的新消息会实时显示"); });
    });
    release.addEventListener("click", function () {
      post(release, "/console/api/release", { key: key }, function () { flash(area, "ok", "已交还机器人"); });
    });
    function sendReply() {
      var value = text.value;
      if (!value.trim()) { flash(area, "error", "请输入回复内容"); text.focus(); return; }
      post(send, "/console/api/reply", { key: key, text: value }, function () {
        text.value = "";
        text.focus();
      }).then(function () { busy(send, false); });
    }
    send.addEventListener("click", sendReply);
    text.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
        ev.preventDefault();
        if (!send.disabled) sendReply();
      }
    });
    $all("button.canned", root).forEach(function (button) {
      button.addEventListener("click", function () {
        text.value = button.getAttribute("data-text") || "";
        text.focus();
        text.setSelectionRange(text.value.length, text.value.length);
      });
    });
    live(function (kind, data) {
      if (kind === "resync" || (data && data.key === key)) reload();
    });
    setInterval(tickWaits, WAIT_TICK_MS);
    tickWaits();
  }

  // ------------------------------------------------------------------ FAQ
  function entryNode(e) {
    var art = el("article", "faq-entry" + (e.pinned ? " is-pinned" : ""));
    art.setAttribute("data-id", e.id);
    var head = el("header");
    head.appendChild(el("h3", "question", e.question));
    var meta = el("p", "entry-meta");
    meta.appendChild(el("span", "faq-id", e.id));
    if (e.category) { meta.appendChild(document.createTextNode(" · ")); meta.appendChild(el("span", "category", e.category)); }
    if (e.pinned) { meta.appendChild(document.createTextNode(" · ")); meta.appendChild(el("span", "badge", "置顶")); }
    head.appendChild(meta);
    art.appendChild(head);

    var id = "answer-" + Math.random().toString(36).slice(2);
    var form = el("form", "answer-form");
    var label = el("label", "label", "答案");
    label.htmlFor = id;
    var area = el("textarea");
    area.id = id;
    area.name = "answer";
    area.rows = 3;
    area.maxLength = 2000;
    area.value = e.answer || "";
    var actions = el("div", "actions");
    var save = el("button", "save-answer primary", "保存答案");
    save.type = "submit";
    actions.appendChild(save);
    if (e.pinned) {
      var unpin = el("button", "unpin secondary", "取消置顶");
      unpin.type = "button";
      actions.appendChild(unpin);
    }
    form.appendChild(label);
    form.appendChild(area);
    form.appendChild(actions);
    art.appendChild(form);

    var details = el("details", "paraphrases");
    details.open = true;
    var summary = el("summary", "", "相似问法（");
    summary.appendChild(el("span", "paraphrase-count", (e.paraphrases || []).length));
    summary.appendChild(document.createTextNode("）"));
    details.appendChild(summary);
    var list = el("ul", "paraphrase-list");
    (e.paraphrases || []).forEach(function (p) { list.appendChild(el("li", "paraphrase", p)); });
    details.appendChild(list);
    art.appendChild(details);

    var pform = el("form", "paraphrase-form inline");
    var pid = "para-" + Math.random().toString(36).slice(2);
    var plabel = el("label", "sr-only", "添加相似问法");
    plabel.htmlFor = pid;
    var input = el("input");
    input.id = pid;
    input.name = "paraphrase";
    input.maxLength = 200;
    input.placeholder = "添加一个相似问法";
    var add = el("button", "add-paraphrase", "添加问法");
    add.type = "submit";
    pform.appendChild(plabel);
    pform.appendChild(input);
    pform.appendChild(add);
    art.appendChild(pform);
    return art;
  }

  var ACTIONS = { edit_answer: "修改答案", add_paraphrase: "添加问法", remove_paraphrase: "删除问法", pin: "置顶",
    unpin: "取消置顶" };

  function historyItem(h) {
    var li = el("li");
    li.appendChild(el("span", "when", h.when));
    li.appendChild(document.createTextNode(" "));
    li.appendChild(el("span", "by", h.agent));
    li.appendChild(document.createTextNode(" "));
    li.appendChild(el("span", "action", h.action_label || ACTIONS[h.action] || h.action));
    li.appendChild(document.createTextNode(" "));
    li.appendChild(el("span", "faq-id", h.faq_id));
    li.appendChild(el("span", "change-text", h.text));
    return li;
  }

  function initFaq() {
    var page = $(".faq-page");
    if (!page) return;
    var pageArea = $(".faq-page > .flash-area");
    var historyList = document.getElementById("faq-history");

    function recorded(result) {
      var change = result.data && result.data.change;
      if (change && historyList) {
        historyList.insertBefore(historyItem(change), historyList.firstChild);
        var empty = historyList.parentNode.querySelector(".empty");
        if (empty) empty.remove();
      }
    }

    function replaceEntry(old, entry) {
      var fresh = entryNode(entry);
      old.replaceWith(fresh);
      return fresh;
    }

    page.addEventListener("submit", function (ev) {
      var form = ev.target;
      var entry = form.closest(".faq-entry");
      if (form.id === "faq-search") return; // an ordinary GET
      ev.preventDefault();
      if (form.id === "pin") return pin(form);
      if (!entry) return;
      var faqId = entry.getAttribute("data-id");
      var area = localFlashArea(entry);
      var button = $("button[type=submit]", form);
      if (form.classList.contains("answer-form")) {
        var answer = form.querySelector("textarea[name=answer]").value;
        if (!answer.trim()) { flash(area, "error", "答案不能为空"); return; }
        busy(button, true);
        api("POST", "/console/api/faq/answer", { faq_id: faqId, answer: answer }).then(function (result) {
          busy(button, false);
          if (!result.ok) { flash(area, "error", errorText(result)); return; }
          recorded(result);
          var fresh = result.data.entry ? replaceEntry(entry, result.data.entry) : entry;
          flash(localFlashArea(fresh), "ok", "答案已保存，下一条消息起生效");
        });
      } else if (form.classList.contains("paraphrase-form")) {
        var input = form.querySelector("input[name=paraphrase]");
        var text = input.value;
        if (text.trim().length < 2) { flash(area, "error", "问法至少 2 个字"); return; }
        busy(button, true);
        api("POST", "/console/api/faq/paraphrase", { faq_id: faqId, text: text }).then(function (result) {
          busy(button, false);
          if (!result.ok) { flash(area, "error", errorText(result)); return; }
          recorded(result);
          var fresh = result.data.entry ? replaceEntry(entry, result.data.entry) : entry;
          flash(localFlashArea(fresh), "ok", "已添加问法");
          var again = fresh.querySelector("input[name=paraphrase]");
          if (again) again.focus();
        });
      }
    });

    page.addEventListener("click", function (ev) {
      var target = ev.target.closest ? ev.target.closest("button") : null;
      if (!target) return;
      if (target.classList.contains("candidate")) {
        var question = document.querySelector("#pin input[name=question]");
        if (question) {
          question.value = target.getAttribute("data-question") || "";
          var answer = document.querySelector("#pin textarea[name=answer]");
          (answer || question).focus();
        }
      } else if (target.classList.contains("unpin")) {
        var entry = target.closest(".faq-entry");
        var area = localFlashArea(entry);
        busy(target, true);
        api("POST", "/console/api/faq/unpin", { faq_id: entry.getAttribute("data-id") }).then(function (result) {
          busy(target, false);
          if (!result.ok) { flash(area, "error", errorText(result)); return; }
          recorded(result);
          entry.remove();
          flash(pageArea, "ok", "已取消置顶");
        });
      }
    });

    function pin(form) {
      var card = form.closest(".card") || form;
      var area = localFlashArea(card);
      var question = form.querySelector("input[name=question]").value;
      var answer = form.querySelector("textarea[name=answer]").value;
      if (question.trim().length < 2) { flash(area, "error", "问题至少 2 个字"); return; }
      if (!answer.trim()) { flash(area, "error", "答案不能为空"); return; }
      var button = $("button[type=submit]", form);
      busy(button, true);
      api("POST", "/console/api/faq/pin", { question: question, answer: answer }).then(function (result) {
        busy(button, false);
        if (!result.ok) { flash(area, "error", errorText(result)); return; }
        recorded(result);
        form.reset();
        flash(area, "ok", "已置顶，下一条消息起生效");
        var list = $(".faq-list");
        if (list && result.data.entry) {
          var heading = $("h2", list);
          var node = entryNode(result.data.entry);
          if (heading && heading.nextSibling) list.insertBefore(node, heading.nextSibling); else list.appendChild(node);
          var empty = $(".empty", list);
          if (empty) empty.remove();
        }
      });
    }
  }

  // ------------------------------------------------------------------ start
  function init() {
    var page = document.body.getAttribute("data-page");
    if (page === "inbox") initInbox();
    else if (page === "conversation") initConversation();
    else if (page === "faq") initFaq();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
