// The web chat: conversations kept by the server (/web-api/conversations), answers streamed from it.
//
// The answer stream is the API's own OpenAI chunks (SSE), plus `event: meshgate` events with the stored
// ids (start) and the stored answer with the quota left (done). Stop aborts the fetch: the gateway sees
// the connection go, cancels the engine's generation and charges what was generated.
//
// Rendering: model text is Markdown (marked) whose raw HTML is escaped, sanitized again (DOMPurify),
// code highlighted (highlight.js). While streaming, only the message being streamed is re-rendered,
// at most once per animation frame; the rest of the conversation is left alone.

import { copyText } from "/static/copy.js";
import DOMPurify from "/static/vendor/dompurify/purify.es.js";
import hljs from "/static/vendor/highlight/core.js";
import bash from "/static/vendor/highlight/languages/bash.js";
import c from "/static/vendor/highlight/languages/c.js";
import cpp from "/static/vendor/highlight/languages/cpp.js";
import css from "/static/vendor/highlight/languages/css.js";
import diff from "/static/vendor/highlight/languages/diff.js";
import dockerfile from "/static/vendor/highlight/languages/dockerfile.js";
import go from "/static/vendor/highlight/languages/go.js";
import ini from "/static/vendor/highlight/languages/ini.js";
import java from "/static/vendor/highlight/languages/java.js";
import javascript from "/static/vendor/highlight/languages/javascript.js";
import json from "/static/vendor/highlight/languages/json.js";
import markdown from "/static/vendor/highlight/languages/markdown.js";
import plaintext from "/static/vendor/highlight/languages/plaintext.js";
import python from "/static/vendor/highlight/languages/python.js";
import rust from "/static/vendor/highlight/languages/rust.js";
import shell from "/static/vendor/highlight/languages/shell.js";
import sql from "/static/vendor/highlight/languages/sql.js";
import typescript from "/static/vendor/highlight/languages/typescript.js";
import xml from "/static/vendor/highlight/languages/xml.js";
import yaml from "/static/vendor/highlight/languages/yaml.js";
import { Marked } from "/static/vendor/marked/marked.esm.js";

const LANGUAGES = {
  bash, c, cpp, css, diff, dockerfile, go, ini, java, javascript, json, markdown, plaintext, python, rust,
  shell, sql, typescript, xml, yaml,
};
for (const [name, language] of Object.entries(LANGUAGES)) hljs.registerLanguage(name, language);
hljs.configure({ ignoreUnescapedHTML: true });

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[ch]);
}

// HTML a model writes is shown as text, never as markup; DOMPurify below is the second wall.
const marked = new Marked({
  gfm: true,
  breaks: true,
  renderer: {
    html(token) {
      return escapeHtml(token.text);
    },
  },
});

const PURIFY = {
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "iframe", "object", "embed"],
  FORBID_ATTR: ["style"],
};

function renderMarkdown(target, text) {
  target.innerHTML = DOMPurify.sanitize(marked.parse(text), PURIFY);
  for (const block of target.querySelectorAll("pre code")) {
    const match = /language-([\w+-]+)/.exec(block.className);
    if (match && !hljs.getLanguage(match[1])) {
      block.classList.add("hljs"); // a language we do not ship: shown plain
      continue;
    }
    hljs.highlightElement(block);
  }
  for (const pre of target.querySelectorAll("pre")) {
    const code = pre.querySelector("code") || pre;
    pre.prepend(button("Copy", "secondary copy-code", (event) => copyFrom(code.textContent, event.currentTarget)));
  }
  target.dataset.renders = String(Number(target.dataset.renders || 0) + 1);
}

// The button tells how the copy went, then reads "Copy" again. Without a clipboard the text goes
// into a selected, read-only box beside the button (its source is Markdown, not what the page shows).
async function copyFrom(text, control) {
  await copyText(
    text,
    (outcome) => (control.textContent = outcome),
    () => {
      const area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "copy-fallback";
      control.after(area);
      area.select();
      area.addEventListener("blur", () => area.remove());
    },
  );
  setTimeout(() => (control.textContent = "Copy"), 2000);
}

// ------------------------------------------------------------------ page state

const root = document.getElementById("chat");
const csrf = document.querySelector('meta[name="csrf-token"]').content;
const els = {
  conversations: document.getElementById("conversations"),
  noConversations: document.getElementById("no-conversations"),
  newChat: document.getElementById("new-chat"),
  model: document.getElementById("model"),
  quota: document.getElementById("quota"),
  system: document.getElementById("system-prompt"),
  systemBox: document.getElementById("system-box"),
  saveSystem: document.getElementById("save-system"),
  systemSaved: document.getElementById("system-saved"),
  notice: document.getElementById("notice"),
  messages: document.getElementById("messages"),
  empty: document.getElementById("empty"),
  composer: document.getElementById("composer"),
  input: document.getElementById("message"),
  send: document.getElementById("send"),
  stop: document.getElementById("stop"),
};

const state = {
  models: new Map(JSON.parse(root.dataset.models || "[]").map((m) => [m.id, m])),
  conversation: null, // {id, title, model, system_prompt}
  messages: [], // [{id, role, content, reasoning, finish, prompt_tokens, completion_tokens, el}]
  controller: null, // the AbortController of the answer streaming now
};

function formatReset(iso) {
  return iso ? iso.replace("T", " ").replace(/:\d\dZ$/, " UTC") : "";
}

function formatTokens(n) {
  return Number(n).toLocaleString("en-US");
}

async function api(method, path, body) {
  const headers = { accept: "application/json" };
  if (method !== "GET") headers["x-csrf-token"] = csrf;
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.status === 401) {
    window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname));
    throw new Error("log in first");
  }
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) throw apiError(response.status, data);
  return data;
}

function apiError(status, data) {
  const error = new Error((data && data.error && data.error.message) || `the request failed (${status})`);
  error.status = status;
  error.code = data && data.error ? data.error.code : null;
  error.resetsAt = data ? data.resets_at : null;
  return error;
}

function showNotice(text) {
  els.notice.textContent = text;
  els.notice.hidden = !text;
}

// ------------------------------------------------------------------ models and quota

function selectedModel() {
  return state.models.get(els.model.value) || null;
}

function showQuota() {
  const model = selectedModel();
  if (!model) {
    els.quota.textContent = "";
    return;
  }
  if (!model.available) {
    els.quota.textContent = `${model.id} is unavailable: ${model.reason}.`;
    els.quota.className = "quota bad";
    return;
  }
  const left = `Chat quota left: ${formatTokens(model.remaining)} of ${formatTokens(model.limit)} tokens today`;
  if (model.exhausted) {
    els.quota.textContent = `${left}. Today's chat quota for ${model.id} is used up; it resets at ${formatReset(model.resets_at)}.`;
    els.quota.className = "quota bad";
  } else {
    els.quota.textContent = `${left} · resets ${formatReset(model.resets_at)}`;
    els.quota.className = "quota";
  }
}

function updateModel(info) {
  if (!info) return;
  state.models.set(info.id, info);
  const option = [...els.model.options].find((o) => o.value === info.id);
  if (option) {
    option.disabled = !info.available;
    option.textContent = info.available ? info.id : `${info.id} (unavailable: ${info.reason})`;
  }
  showQuota();
}

async function refreshQuota() {
  const model = selectedModel();
  if (!model) return;
  try {
    updateModel(await api("GET", "/web-api/chat/quota?model=" + encodeURIComponent(model.id)));
  } catch (error) {
    // the quota line keeps its last value
  }
}

// ------------------------------------------------------------------ conversations

function conversationItem(conversation) {
  const item = document.createElement("li");
  item.dataset.id = conversation.id;
  if (state.conversation && state.conversation.id === conversation.id) item.classList.add("current");
  const link = document.createElement("a");
  link.href = "/chat/" + conversation.id;
  link.textContent = conversation.title;
  link.className = "conversation-title";
  if (item.classList.contains("current")) link.setAttribute("aria-current", "page");
  link.addEventListener("click", (event) => {
    event.preventDefault();
    openConversation(conversation.id, true);
  });
  const rename = document.createElement("button");
  rename.type = "button";
  rename.className = "link";
  rename.textContent = "Rename";
  rename.setAttribute("aria-label", `Rename ${conversation.title}`);
  rename.addEventListener("click", () => startRename(item, conversation));
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "link danger-link";
  remove.textContent = "Delete";
  remove.setAttribute("aria-label", `Delete ${conversation.title}`);
  remove.addEventListener("click", () => deleteConversation(conversation));
  item.append(link, rename, remove);
  return item;
}

function startRename(item, conversation) {
  const form = document.createElement("form");
  form.className = "rename";
  const input = document.createElement("input");
  input.value = conversation.title;
  input.maxLength = 200;
  input.setAttribute("aria-label", "New title");
  const save = document.createElement("button");
  save.type = "submit";
  save.textContent = "Save";
  form.append(input, save);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const title = input.value.trim();
    if (!title) return;
    try {
      const updated = await api("PATCH", "/web-api/conversations/" + conversation.id, { title });
      if (state.conversation && state.conversation.id === updated.id) state.conversation = updated;
      await loadConversations();
    } catch (error) {
      showNotice(error.message);
    }
  });
  item.replaceChildren(form);
  input.focus();
  input.select();
}

async function deleteConversation(conversation) {
  if (!window.confirm(`Delete “${conversation.title}”?`)) return;
  try {
    await api("DELETE", "/web-api/conversations/" + conversation.id);
  } catch (error) {
    showNotice(error.message);
    return;
  }
  if (state.conversation && state.conversation.id === conversation.id) newChat(true);
  await loadConversations();
}

async function loadConversations() {
  const listed = await api("GET", "/web-api/conversations");
  els.conversations.replaceChildren(...listed.data.map(conversationItem));
  els.noConversations.hidden = listed.data.length > 0;
}

function newChat(push) {
  stopStreaming();
  state.conversation = null;
  state.messages = [];
  els.messages.replaceChildren();
  els.empty.hidden = false;
  els.system.value = "";
  showNotice("");
  for (const item of els.conversations.children) item.classList.remove("current");
  if (push) history.pushState({}, "", "/chat");
  els.input.focus();
}

async function openConversation(id, push) {
  stopStreaming();
  let data;
  try {
    data = await api("GET", "/web-api/conversations/" + id);
  } catch (error) {
    showNotice(error.status === 404 ? "This conversation does not exist." : error.message);
    return;
  }
  state.conversation = { id: data.id, title: data.title, model: data.model, system_prompt: data.system_prompt };
  if (state.models.has(data.model)) els.model.value = data.model;
  els.system.value = data.system_prompt || "";
  if (data.system_prompt) els.systemBox.open = true;
  showNotice("");
  els.messages.replaceChildren();
  state.messages = [];
  for (const message of data.messages) appendMessage(message);
  refreshActions();
  for (const item of els.conversations.children) {
    const current = item.dataset.id === id;
    item.classList.toggle("current", current);
    const link = item.querySelector("a");
    if (link) current ? link.setAttribute("aria-current", "page") : link.removeAttribute("aria-current");
  }
  if (push) history.pushState({}, "", "/chat/" + id);
  showQuota();
  refreshQuota();
}

async function ensureConversation() {
  if (state.conversation) return state.conversation;
  const created = await api("POST", "/web-api/conversations", {
    model: els.model.value,
    system_prompt: els.system.value,
  });
  state.conversation = created;
  history.pushState({}, "", "/chat/" + created.id);
  return created;
}

// ------------------------------------------------------------------ messages

function appendMessage(message) {
  const item = document.createElement("li");
  item.className = `message ${message.role}`;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = message.role === "user" ? "You" : message.model || "Assistant";
  // A reasoning model's thinking, folded above its answer (plain text: it is not the answer).
  const thinking = document.createElement("details");
  thinking.className = "thinking";
  thinking.hidden = true; // until there is reasoning to show
  const summary = document.createElement("summary");
  const thought = document.createElement("div");
  thought.className = "thought";
  thinking.append(summary, thought);
  const body = document.createElement("div");
  body.className = "body";
  const meta = document.createElement("div");
  meta.className = "meta";
  const actions = document.createElement("div");
  actions.className = "actions";
  item.append(who, thinking, body, meta, actions);
  const entry = { ...message, el: item, thinking, summary, thought, body, meta, actions };
  fill(entry);
  els.messages.append(item);
  els.empty.hidden = true;
  state.messages.push(entry);
  els.messages.scrollTop = els.messages.scrollHeight;
  return entry;
}

function fill(entry) {
  entry.el.dataset.id = entry.id == null ? "" : String(entry.id);
  if (entry.role === "user") {
    entry.body.textContent = entry.content; // what the user typed is text, not Markdown
  } else {
    renderThinking(entry);
    renderMarkdown(entry.body, entry.content || "");
  }
  const notes = [];
  if (entry.finish === "stopped") notes.push("Stopped");
  if (entry.finish === "length") notes.push("Cut at the length limit");
  if (entry.finish === "error") notes.push("The answer failed" + (entry.error ? `: ${entry.error}` : ""));
  if (entry.role === "assistant" && entry.completion_tokens != null) {
    notes.push(`${formatTokens(entry.prompt_tokens + entry.completion_tokens)} tokens charged`);
  }
  entry.meta.textContent = notes.join(" · ");
}

function renderThinking(entry) {
  entry.thinking.hidden = !entry.reasoning;
  entry.summary.textContent = entry.el.classList.contains("streaming") && !entry.content ? "Thinking…" : "Thought";
  entry.thought.textContent = entry.reasoning || "";
}

function refreshActions() {
  const last = state.messages[state.messages.length - 1];
  const streaming = state.controller !== null;
  for (const entry of state.messages) {
    entry.actions.replaceChildren();
    if (streaming || entry.id == null) continue;
    if (entry.role === "user") entry.actions.append(button("Edit", "secondary", () => startEdit(entry)));
    if (entry.role === "assistant" && entry.content) {
      entry.actions.append(button("Copy", "secondary", (event) => copyFrom(entry.content, event.currentTarget)));
    }
    if (entry === last) entry.actions.append(button("Regenerate", "secondary", regenerate));
  }
}

function button(label, className, onClick) {
  const element = document.createElement("button");
  element.type = "button";
  element.className = className;
  element.textContent = label;
  element.addEventListener("click", onClick);
  return element;
}

function startEdit(entry) {
  const form = document.createElement("form");
  form.className = "edit";
  const area = document.createElement("textarea");
  area.value = entry.content;
  area.rows = 3;
  area.setAttribute("aria-label", "Edit message");
  const save = document.createElement("button");
  save.type = "submit";
  save.textContent = "Save and send";
  const cancel = button("Cancel", "secondary", () => {
    form.remove();
    entry.body.hidden = false;
    refreshActions();
  });
  form.append(area, save, cancel);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const content = area.value;
    if (!content.trim()) return;
    editAndResend(entry, content);
  });
  entry.body.hidden = true;
  entry.actions.replaceChildren();
  entry.body.after(form);
  area.focus();
}

function dropAfter(entry) {
  const index = state.messages.indexOf(entry);
  for (const later of state.messages.splice(index + 1)) later.el.remove();
}

// ------------------------------------------------------------------ the stream

function setStreaming(on) {
  els.send.hidden = on;
  els.stop.hidden = !on;
  els.model.disabled = on;
  refreshActions();
}

function stopStreaming() {
  if (state.controller) state.controller.abort();
}

// One frame's work at most: text arriving faster than frames are drawn is rendered once per frame.
function scheduleRender(entry) {
  if (entry.frame) return;
  entry.frame = requestAnimationFrame(() => {
    entry.frame = 0;
    const list = els.messages;
    const following = list.scrollHeight - list.scrollTop - list.clientHeight < 80; // the reader is at the end
    if (entry.reasoning) renderThinking(entry);
    renderMarkdown(entry.body, entry.content);
    if (following) list.scrollTop = list.scrollHeight;
  });
}

function flushRender(entry) {
  if (entry.frame) cancelAnimationFrame(entry.frame);
  entry.frame = 0;
  fill(entry);
}

async function streamAnswer(path, body, userEntry) {
  showNotice("");
  const assistant = appendMessage({ id: null, role: "assistant", content: "", model: els.model.value, finish: null });
  assistant.el.classList.add("streaming");
  assistant.el.setAttribute("aria-busy", "true");
  const controller = new AbortController();
  state.controller = controller;
  setStreaming(true);
  let stored = false;
  let failure = null;
  try {
    const response = await fetch(path, {
      method: "POST",
      headers: { "content-type": "application/json", accept: "text/event-stream", "x-csrf-token": csrf },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) {
      const data = await response.json().catch(() => null);
      throw apiError(response.status, data);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const raw = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (handleEvent(raw, assistant, userEntry)) stored = true;
      }
    }
  } catch (error) {
    if (controller.signal.aborted) {
      assistant.finish = "stopped";
    } else {
      assistant.el.remove();
      state.messages.splice(state.messages.indexOf(assistant), 1);
      failure = error;
    }
  } finally {
    state.controller = null;
    assistant.el.classList.remove("streaming");
    assistant.el.removeAttribute("aria-busy");
    if (state.messages.includes(assistant)) flushRender(assistant);
    setStreaming(false);
  }
  if (!stored && assistant.finish === "stopped") await settleStopped(assistant);
  if (failure) {
    await reloadMessages(); // the user's message was kept: show it as stored, with Edit and Regenerate
    reportFailure(failure);
  }
  loadConversations().catch(() => {});
}

async function reloadMessages() {
  if (!state.conversation) return;
  try {
    const data = await api("GET", "/web-api/conversations/" + state.conversation.id);
    els.messages.replaceChildren();
    state.messages = [];
    for (const message of data.messages) appendMessage(message);
    refreshActions();
  } catch {
    // the page keeps what it shows
  }
}

function reportFailure(error) {
  if (error.status === 429) {
    const model = els.model.value;
    const when = error.resetsAt ? ` It resets at ${formatReset(error.resetsAt)}.` : "";
    showNotice(`Your chat quota for ${model} is used up.${when} ${error.message}`);
    refreshQuota();
  } else {
    showNotice(error.message || "The answer failed.");
  }
}

// Returns true once the server said the answer is stored.
function handleEvent(raw, assistant, userEntry) {
  let name = "message";
  const data = [];
  for (const line of raw.split("\n")) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (!data.length) return false;
  const payload = data.join("\n");
  if (payload === "[DONE]") return false;
  let parsed;
  try {
    parsed = JSON.parse(payload);
  } catch {
    return false;
  }
  if (name === "meshgate") return handleMeta(parsed, assistant, userEntry);
  if (parsed.error) {
    assistant.finish = "error";
    assistant.error = parsed.error.message;
    return false;
  }
  for (const choice of parsed.choices || []) {
    const delta = choice.delta || {};
    const thought = typeof delta.reasoning_content === "string" ? delta.reasoning_content : delta.reasoning;
    if (typeof thought === "string" && thought) {
      if (!assistant.reasoning) assistant.thinking.open = true; // shown while the model thinks ...
      assistant.reasoning = (assistant.reasoning || "") + thought;
      scheduleRender(assistant);
    }
    const text = delta.content;
    if (text) {
      if (!assistant.content && assistant.reasoning) assistant.thinking.open = false; // ... folded once it answers
      assistant.content += text;
      scheduleRender(assistant);
    }
    if (choice.finish_reason) assistant.finish = choice.finish_reason;
  }
  return false;
}

function handleMeta(meta, assistant, userEntry) {
  if (meta.type === "start") {
    assistant.id = meta.assistant_message.id;
    assistant.el.dataset.id = String(assistant.id);
    if (userEntry && meta.user_message) {
      userEntry.id = meta.user_message.id;
      userEntry.el.dataset.id = String(userEntry.id);
    }
    return false;
  }
  if (meta.type === "done") {
    if (meta.message) Object.assign(assistant, meta.message);
    updateModel(meta.quota);
    return true;
  }
  return false;
}

// After Stop the server stores the answer a moment later (once the gateway has settled it): wait for it,
// then show what it was charged and the quota left.
async function settleStopped(assistant) {
  const conversation = state.conversation;
  for (let attempt = 0; conversation && assistant.id != null && attempt < 40; attempt++) {
    await new Promise((resolve) => setTimeout(resolve, 150));
    try {
      const data = await api("GET", "/web-api/conversations/" + conversation.id);
      const stored = data.messages.find((m) => m.id === assistant.id);
      if (!stored) break;
      if (stored.finish) {
        Object.assign(assistant, { content: stored.content, reasoning: stored.reasoning, finish: stored.finish });
        Object.assign(assistant, { prompt_tokens: stored.prompt_tokens, completion_tokens: stored.completion_tokens });
        if (state.messages.includes(assistant)) fill(assistant);
        break;
      }
    } catch {
      break;
    }
  }
  refreshActions();
  await refreshQuota();
}

async function sendMessage() {
  const content = els.input.value;
  if (!content.trim() || state.controller) return;
  const model = selectedModel();
  if (!model || !model.available) {
    showNotice(model ? `${model.id} is unavailable: ${model.reason}.` : "Pick a model first.");
    return;
  }
  let conversation;
  try {
    conversation = await ensureConversation();
  } catch (error) {
    showNotice(error.message);
    return;
  }
  els.input.value = "";
  const userEntry = appendMessage({ id: null, role: "user", content });
  await streamAnswer(`/web-api/conversations/${conversation.id}/messages`, { content, model: model.id }, userEntry);
}

async function regenerate() {
  if (!state.conversation || state.controller) return;
  const lastUser = [...state.messages].reverse().find((m) => m.role === "user");
  if (!lastUser) return;
  dropAfter(lastUser);
  await streamAnswer(`/web-api/conversations/${state.conversation.id}/regenerate`, { model: els.model.value }, null);
}

async function editAndResend(entry, content) {
  if (!state.conversation || state.controller || entry.id == null) return;
  dropAfter(entry);
  entry.content = content;
  const form = entry.el.querySelector("form.edit");
  if (form) form.remove();
  entry.body.hidden = false;
  fill(entry);
  const path = `/web-api/conversations/${state.conversation.id}/messages/${entry.id}/edit`;
  await streamAnswer(path, { content, model: els.model.value }, entry);
}

// ------------------------------------------------------------------ wiring

els.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  sendMessage();
});
els.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendMessage();
  }
});
els.stop.addEventListener("click", stopStreaming);
els.newChat.addEventListener("click", () => newChat(true));
els.model.addEventListener("change", async () => {
  showQuota();
  refreshQuota();
  if (state.conversation && !state.controller) {
    try {
      state.conversation = await api("PATCH", "/web-api/conversations/" + state.conversation.id, { model: els.model.value });
    } catch (error) {
      showNotice(error.message);
    }
  }
});
els.saveSystem.addEventListener("click", async () => {
  if (!state.conversation) {
    els.systemSaved.textContent = "Saved for the new conversation.";
    return;
  }
  try {
    state.conversation = await api("PATCH", "/web-api/conversations/" + state.conversation.id, {
      system_prompt: els.system.value,
    });
    els.systemSaved.textContent = "Saved.";
  } catch (error) {
    showNotice(error.message);
  }
});
window.addEventListener("popstate", () => {
  const match = /^\/chat\/([0-9a-f]{32})$/.exec(window.location.pathname);
  if (match) openConversation(match[1], false);
  else newChat(false);
});
showQuota();
loadConversations().catch((error) => showNotice(error.message));
if (root.dataset.conversation) openConversation(root.dataset.conversation, false);
else refreshQuota();
root.dataset.ready = "true";
