// llmkit's chat page: conversations in localStorage, replies streamed from /v1/chat/completions and
// rendered as Markdown, a stop button (aborting the fetch closes the connection; the server cancels the
// request within one engine step), regenerate, edit-and-resend, sampling settings, speed and token
// counts under each reply, a per-token probabilities view, the Inspect view (inspect.js), and renaming,
// exporting and importing conversations (sidebar.js, transfer.js).

import { ApiError, NetworkError, health, listModels, streamChat } from "./api.js";
import { Inspector } from "./inspect.js";
import { copyCode, renderMarkdown } from "./markdown.js";
import { sourcesElement, statsElement } from "./message_parts.js";
import { TokenPopup, renderTokens, tokensOf } from "./probabilities.js";
import { ConversationList } from "./sidebar.js";
import * as store from "./store.js";
import * as transfer from "./transfer.js";

const $ = (id) => document.getElementById(id);
const ui = {
  messages: $("messages"), input: $("input"), send: $("send"), stop: $("stop"), composer: $("composer"),
  list: $("conversations"), newChat: $("new-chat"), settings: $("settings"), notice: $("notice"),
  model: $("model-name"), status: $("server-status"), system: $("system-prompt"), temperature: $("temperature"),
  topP: $("top-p"), maxTokens: $("max-tokens"), seed: $("seed"), probabilities: $("probabilities"),
  apiKey: $("api-key"), exportAll: $("export-all"), importButton: $("import"), importFile: $("import-file"),
};

const settings = store.loadSettings();
let conversations = store.loadConversations();
let current = conversations.find((c) => c.id === store.loadCurrentId()) || null;
let model = null; // the served model's id, from /v1/models
let busy = null; // the generation in flight: {controller, conversation, reply}
let retry = null; // the timer of the next connect() while the server is loading or unreachable
// Conversations deleted in this tab, by id, with their `updated` then: a stored copy no newer than that is
// one the merge with other tabs' saves must not bring back (one continued since, in another tab, stays).
const deleted = new Map();
const popup = new TokenPopup($("token-popup"));
const list = new ConversationList(ui.list, {
  state: () => [conversations, current], open: (c) => switchTo(c), remove: (c) => deleteConversation(c),
  rename: renameConversation, refocus: () => refocus(),
  exportOne: (c) => transfer.download(transfer.exportFileName(c), transfer.exportData([c])),
});
const inspector = new Inspector({
  conversation: () => current, apiKey: () => settings.apiKey, model: () => model, onUnauthorized: () => askForKey(),
});

// --- persistence -------------------------------------------------------------------------------------------
function persist() {
  const kept = conversations.filter((c) => c.messages.length);
  const outcome = store.saveConversations(kept, current ? current.id : null, deleted);
  warnIfFull(outcome);
}

function warnIfFull(outcome) {
  if (outcome === "full") {
    showNotice("The browser's storage is full: delete some conversations, or this one will not be kept.");
  } else if (outcome === "without-tokens") {
    showNotice("The browser's storage is nearly full: this conversation's text is kept, its token " +
               "probabilities are not (delete some conversations to keep them).");
  }
}

// Another tab of the page saved its conversations (both keep theirs in the same localStorage key): take
// what it added or changed later than this tab did, and drop what it deleted, so that this tab's next
// save neither overwrites nor revives them. A conversation this tab is generating into, or whose message
// is being edited here, stays as this tab has it; a deleted one on screen stays on screen (sending in it
// keeps it again).
function takeOtherTabsChanges(event) {
  if (event.storageArea !== localStorage || event.key !== store.CONVERSATIONS_KEY) return;
  const before = new Set(store.parseConversations(event.oldValue).map((c) => c.id));
  const after = store.parseConversations(event.newValue);
  const ids = new Set(after.map((c) => c.id));
  const generating = (c) => busy && c === busy.conversation;
  const editing = (c) => c === current && ui.messages.querySelector("textarea.editor");
  conversations = conversations.filter((c) => generating(c) || !before.has(c.id) || ids.has(c.id));
  let redraw = false;
  for (const theirs of after) {
    if (deleted.has(theirs.id) && theirs.updated <= deleted.get(theirs.id)) continue;
    const i = conversations.findIndex((c) => c.id === theirs.id);
    if (i < 0) {
      if (current && current.id === theirs.id && (generating(current) || editing(current))) continue;
      conversations.push(theirs);
      redraw ||= current && current.id === theirs.id;
    } else if (theirs.updated > conversations[i].updated && !generating(conversations[i]) &&
               !editing(conversations[i])) {
      redraw ||= conversations[i] === current;
      conversations[i] = theirs;
    }
  }
  if (redraw) {
    current = conversations.find((c) => c.id === current.id);
    ui.system.value = current.system || "";
    renderConversation();
  }
  renderList();
}

// `info` for news (an import done) rather than a warning.
function showNotice(text, info = false) {
  ui.notice.textContent = text;
  ui.notice.hidden = !text;
  ui.notice.classList.toggle("info", info);
}

// --- the conversation list (sidebar.js), renaming, export and import -------------------------------------
function renderList() {
  list.render();
}

// An empty title is the automatic one again (from the first message).
function renameConversation(id, text, maxLength) {
  const conversation = conversations.find((c) => c.id === id);
  if (!conversation) return; // deleted in another tab meanwhile
  const first = conversation.messages.find((m) => m.role === "user");
  const title = store.titleOf(text, maxLength) || (first ? store.titleOf(first.content) : "");
  if (title === conversation.title) return;
  conversation.title = title;
  conversation.updated = Date.now(); // the newer copy: what other tabs, and the merge when saving, keep
  persist();
}

function exportAll() {
  const shown = conversations.filter((c) => c.messages.length).sort((a, b) => b.updated - a.updated);
  if (!shown.length) showNotice("There are no conversations to export yet.");
  else transfer.download(transfer.exportFileName(null), transfer.exportData(shown));
}

// Adds a file's conversations to this browser's (transfer.js's newConversations says which and how).
// The file is checked whole first: a bad one changes nothing.
async function importFile(file) {
  let imported;
  try {
    imported = await transfer.readImport(file);
  } catch (e) {
    if (!(e instanceof transfer.ImportError)) throw e;
    showNotice(`"${file.name}" was not imported: ${e.message}. Nothing was changed.`);
    return;
  }
  const gone = new Set([...deleted.keys(), ...store.deletedIds()]);
  const { added, skipped, empty } = transfer.newConversations(imported, conversations, gone);
  const notes = [skipped && `${skipped} already here`, empty && `${empty} without messages`].filter(Boolean);
  const left = notes.length ? ` (left out: ${notes.join(", ")})` : "";
  if (!added.length) {
    showNotice(`"${file.name}" holds no conversations to add${left}: nothing was imported.`);
    return;
  }
  // Saved as copies: when storage is nearly full the save drops probabilities from the copies it holds,
  // and when the file does not fit at all, this tab's conversations must be left as they were.
  const all = [...conversations, ...added];
  const outcome = store.saveConversations(structuredClone(all.filter((c) => c.messages.length)),
                                          current ? current.id : null, deleted);
  if (outcome === "full") {
    showNotice(`"${file.name}" was not imported: its conversations do not fit in the browser's storage ` +
               "(about 5 MB; delete some conversations first). Nothing was changed.");
    return;
  }
  conversations = all;
  renderList();
  showNotice(`Imported ${added.length} conversation${added.length === 1 ? "" : "s"} from "${file.name}"${left}.`, true);
  warnIfFull(outcome); // "without-tokens": the current conversation's probabilities did not fit
}

function switchTo(conversation) {
  if (busy) stop();
  inspector.show(false);
  current = conversation;
  ui.system.value = conversation.system || "";
  renderConversation();
  renderList();
  persist();
  ui.input.focus();
}

function startNewChat() {
  if (busy) stop();
  inspector.show(false);
  current = store.newConversation(settings.system);
  conversations.push(current);
  ui.system.value = current.system;
  renderConversation();
  renderList();
  ui.input.focus();
}

function deleteConversation(conversation) {
  if (!confirm(`Delete "${conversation.title || "this conversation"}"?`)) return;
  if (busy && busy.conversation === conversation) stop();
  conversations = conversations.filter((c) => c !== conversation);
  deleted.set(conversation.id, conversation.updated);
  if (current === conversation) {
    current = null;
    startNewChat();
  }
  persist();
  renderList();
  refocus(); // the row that held the focus is gone
}

// --- messages ----------------------------------------------------------------------------------------------
function button(label, className, title) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = label;
  if (title) b.title = title;
  return b;
}

function renderConversation() {
  popup.hide();
  ui.messages.replaceChildren();
  if (!current.messages.length) {
    const empty = document.createElement("p");
    empty.className = "empty";
    empty.textContent = "Send a message to start. Settings (system prompt, temperature, ...) are on the left.";
    ui.messages.append(empty);
  }
  current.messages.forEach((message, i) => ui.messages.append(messageElement(message, i)));
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

function messageElement(message, index) {
  const element = document.createElement("article");
  element.className = `message ${message.role}`;
  element.dataset.index = String(index);
  const body = document.createElement("div");
  body.className = "body";
  body.dir = "auto"; // a reply in Arabic or Hebrew reads right to left
  const meta = document.createElement("footer");
  meta.className = "meta";
  element.append(body, meta);
  fillMessage(element, message, index);
  return element;
}

// (Re)draws a message's body and footer: called on every streamed chunk (throttled) and when done.
function fillMessage(element, message, index) {
  const [body, meta] = element.children;
  const streaming = Boolean(busy && busy.reply === message);
  element.classList.toggle("streaming", streaming);
  meta.replaceChildren();
  try {
    fillBody(body, message, streaming);
    if (message.stats) meta.append(statsElement(message.stats));
  } catch (e) {
    // A reply the renderer cannot draw (or stored data it does not expect) is shown as plain text: one
    // message must not stop the conversation, or the page, from being drawn.
    console.warn("a message drawn as plain text:", e);
    body.className = "body";
    body.textContent = message.content;
  }
  if (message.error) {
    const error = document.createElement("div");
    error.className = "error";
    error.textContent = message.error;
    body.append(error);
  }
  if (message.role === "user") {
    if (!busy) meta.append(button("Edit", "edit", "Edit this message and send it again"));
  } else if (!streaming) {
    if (message.tokens && message.tokens.length) {
      meta.append(button(message.showTokens ? "Text" : "Probabilities", "toggle-tokens",
                         "Show each token and the alternatives the model weighed"));
    }
    if (!busy && index === current.messages.length - 1) {
      meta.append(button("Regenerate", "regenerate", "Generate this reply again"));
    }
  }
}

function fillBody(body, message, streaming) {
  if (message.role === "user") {
    body.textContent = message.content;
    return;
  }
  const showTokens = message.showTokens && message.tokens && message.tokens.length;
  body.className = showTokens ? "body tokens" : "body markdown";
  if (showTokens) renderTokens(body, message.tokens);
  else body.innerHTML = renderMarkdown(message.content); // escaped first: see markdown.js
  if (message.sources && message.sources.length && !streaming) body.append(sourcesElement(message.sources));
}

// A control that had the keyboard focus was removed or hidden (Send and Stop swap places, a message is
// redrawn with new buttons): the focus would fall to the page's body, and a keyboard user would have to
// find their way back. It goes to the message box instead (or to `fallback`).
function refocus(fallback = ui.input) {
  const active = document.activeElement;
  if (!active || active === document.body || !active.isConnected || active.closest("[hidden]")) {
    fallback.focus({ preventScroll: true });
  }
}

function elementOf(index) {
  return ui.messages.querySelector(`article[data-index="${index}"]`);
}

// --- generating --------------------------------------------------------------------------------------------
function requestBody(conversation) {
  const messages = [];
  if (conversation.system && conversation.system.trim()) messages.push({ role: "system", content: conversation.system });
  for (const m of conversation.messages) {
    if (m.role === "assistant" && !m.content) continue; // a reply that failed before its first token
    messages.push({ role: m.role, content: m.content });
  }
  // A conversation longer than the model's context goes on: the server drops its oldest turns (never the
  // system prompt or the new message) and says how many in `truncated_messages`.
  const body = { messages, stream_options: { include_usage: true }, truncate: "oldest" };
  if (model) body.model = model;
  for (const [field, value] of [["temperature", settings.temperature], ["top_p", settings.top_p],
                                ["max_tokens", settings.max_tokens], ["seed", settings.seed]]) {
    if (value !== "" && value !== null && !Number.isNaN(Number(value))) body[field] = Number(value);
  }
  if (settings.probabilities) Object.assign(body, { logprobs: true, top_logprobs: 5 });
  return body;
}

async function generate(conversation) {
  if (!conversations.includes(conversation)) conversations.push(conversation); // deleted in another tab
  const reply = { role: "assistant", content: "", tokens: settings.probabilities ? [] : undefined, stats: null };
  conversation.messages.push(reply);
  conversation.updated = Date.now();
  const index = conversation.messages.length - 1;
  const controller = new AbortController();
  busy = { controller, conversation, reply };
  setBusy(true);
  renderConversation();
  renderList();
  refocus(); // Send, Regenerate or Save & send was pressed: typing goes on in the message box
  const started = performance.now();
  let first = null, last = null, usage = null, finish = null, chunks = 0, truncated = null;
  let redraw = null;
  const draw = () => {
    redraw = null;
    const element = current === conversation && elementOf(index);
    if (!element) return;
    const atBottom = ui.messages.scrollHeight - ui.messages.scrollTop - ui.messages.clientHeight < 40;
    fillMessage(element, reply, index);
    if (atBottom) ui.messages.scrollTop = ui.messages.scrollHeight;
  };
  try {
    for await (const chunk of streamChat(requestBody(conversation), { apiKey: settings.apiKey, signal: controller.signal })) {
      if (chunk.usage) usage = chunk.usage;
      if (typeof chunk.truncated_messages === "number") truncated = chunk.truncated_messages;
      for (const choice of chunk.choices || []) {
        const text = (choice.delta && choice.delta.content) || "";
        if (text) {
          first = first === null ? performance.now() : first;
          last = performance.now();
          reply.content += text;
          chunks++;
        }
        if (choice.logprobs && choice.logprobs.content && reply.tokens) reply.tokens.push(...tokensOf(choice.logprobs.content));
        if (choice.delta && Array.isArray(choice.delta.sources)) reply.sources = choice.delta.sources;
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      if (redraw === null) redraw = setTimeout(draw, 40);
    }
  } catch (e) {
    if (e.name === "AbortError") {
      finish = "stopped";
    } else if (e instanceof NetworkError) {
      reply.error = `The request failed: ${e.message}.`;
      ui.status.textContent = "server unreachable";
      connect(); // tries again until the server answers, then says "ready"
    } else {
      reply.error = e instanceof ApiError ? e.message : `The request failed: ${e.message}`;
    }
    if (e.status === 401) askForKey();
  } finally {
    clearTimeout(redraw);
    const counted = usage ? usage.completion_tokens : reply.tokens ? reply.tokens.length : chunks;
    const decodeS = first !== null && last > first ? (last - first) / 1000 : null;
    reply.stats = reply.error && !reply.content ? null : {
      completion: counted, exact: Boolean(usage || reply.tokens), finish,
      prompt: usage ? usage.prompt_tokens : null,
      cached: usage && usage.prompt_tokens_details ? usage.prompt_tokens_details.cached_tokens : 0,
      ttftS: first === null ? null : (first - started) / 1000,
      // Decode speed: tokens after the first over the time since the first arrived.
      tokensPerS: decodeS && counted > 1 ? (counted - 1) / decodeS : null,
      truncated,
    };
    busy = null;
    setBusy(false);
    conversation.updated = Date.now();
    persist();
    // Also when the user has switched conversation meanwhile: the one on screen was drawn while this
    // reply was busy, without its Edit and Regenerate buttons.
    if (current) renderConversation();
    renderList();
  }
}

function stop() {
  if (busy) busy.controller.abort();
}

function setBusy(on) {
  const pressed = document.activeElement === ui.send || document.activeElement === ui.stop;
  ui.send.hidden = on;
  ui.stop.hidden = !on;
  document.body.classList.toggle("busy", on);
  // The reply is redrawn as it streams: a screen reader (#messages is a live region) reads it once, done.
  ui.messages.setAttribute("aria-busy", String(on));
  if (pressed) ui.input.focus({ preventScroll: true }); // the button pressed is hidden now
}

function send() {
  const text = ui.input.value;
  if (busy || !text.trim()) return;
  if (!current) startNewChat();
  if (!current.messages.length) current.title = store.titleOf(text);
  current.system = ui.system.value;
  current.messages.push({ role: "user", content: text });
  ui.input.value = "";
  generate(current);
}

function regenerate() {
  if (busy) return;
  const last = current.messages[current.messages.length - 1];
  if (last && last.role === "assistant") current.messages.pop();
  generate(current);
}

function editMessage(element, index) {
  const message = current.messages[index];
  const [body, meta] = element.children;
  const editor = document.createElement("textarea");
  editor.className = "editor";
  editor.dir = "auto";
  editor.value = message.content;
  editor.rows = Math.min(12, message.content.split("\n").length + 1);
  body.replaceChildren(editor);
  const save = button("Save & send", "save-edit");
  const cancel = button("Cancel", "cancel-edit");
  meta.replaceChildren(save, cancel);
  const commit = () => {
    if (busy || !editor.value.trim()) return;
    // Everything after the edited message belonged to the old text: it goes.
    current.messages = current.messages.slice(0, index);
    current.messages.push({ role: "user", content: editor.value });
    // The automatic title follows the first message; one the user gave stays.
    if (index === 0 && current.title === store.titleOf(message.content)) current.title = store.titleOf(editor.value);
    generate(current);
  };
  const close = () => { // back to the message, the focus back on its Edit button
    fillMessage(element, message, index);
    refocus(element.querySelector(".edit") || ui.input);
  };
  save.addEventListener("click", commit);
  cancel.addEventListener("click", close);
  editor.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      commit();
    } else if (event.key === "Escape") {
      event.stopPropagation();
      close();
    }
  });
  editor.focus();
}

// --- settings and the server -------------------------------------------------------------------------------
function loadSettingsIntoForm() {
  ui.temperature.value = settings.temperature;
  ui.topP.value = settings.top_p;
  ui.maxTokens.value = settings.max_tokens;
  ui.seed.value = settings.seed;
  ui.probabilities.checked = settings.probabilities;
  ui.apiKey.value = settings.apiKey;
  ui.system.value = current ? current.system || "" : settings.system;
}

function readSettingsForm() {
  Object.assign(settings, {
    temperature: ui.temperature.value, top_p: ui.topP.value, max_tokens: ui.maxTokens.value, seed: ui.seed.value,
    probabilities: ui.probabilities.checked, apiKey: ui.apiKey.value.trim(), system: ui.system.value,
  });
  if (current && !busy) current.system = ui.system.value;
  store.saveSettings(settings);
}

function askForKey() {
  ui.settings.open = true;
  ui.status.textContent = "API key needed";
  showNotice("This server needs an API key: enter it under Settings (it is kept in this browser).");
}

async function connect() {
  clearTimeout(retry); // one pending retry at most, however many failures called this
  try {
    const status = await health();
    if (status === 503) {
      ui.status.textContent = "loading the model\u2026";
      retry = setTimeout(connect, 2000);
      return;
    }
    model = (await listModels(settings.apiKey))[0] || null;
    ui.model.textContent = model || "llmkit";
    ui.status.textContent = "ready";
    showNotice("");
  } catch (e) {
    if (e.status === 401) askForKey();
    else {
      ui.status.textContent = "server unreachable";
      retry = setTimeout(connect, 5000);
    }
  }
}

// --- events ------------------------------------------------------------------------------------------------
ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape") return;
  if (busy) stop();
  popup.hide();
});
ui.stop.addEventListener("click", stop);
ui.newChat.addEventListener("click", startNewChat);
ui.exportAll.addEventListener("click", exportAll);
ui.importButton.addEventListener("click", () => ui.importFile.click()); // the file picker
ui.importFile.addEventListener("change", async () => {
  const [file] = ui.importFile.files;
  ui.importFile.value = ""; // the same file can be chosen again
  if (file) await importFile(file);
});
for (const input of [ui.temperature, ui.topP, ui.maxTokens, ui.seed, ui.probabilities]) {
  input.addEventListener("change", readSettingsForm);
}
// The system prompt belongs to the conversation on screen: stored with it once edited (when the box is
// left, or the page closed first), or a reload would bring back the old one and the next reply would be
// asked with it.
let systemEdited = false;
ui.system.addEventListener("input", () => {
  readSettingsForm();
  systemEdited = Boolean(current && current.messages.length && !busy);
});
ui.system.addEventListener("change", () => {
  readSettingsForm();
  if (systemEdited) persist();
  systemEdited = false;
});
ui.apiKey.addEventListener("change", () => {
  readSettingsForm();
  connect();
});
ui.messages.addEventListener("click", (event) => {
  const target = event.target;
  const element = target.closest("article");
  const index = element ? Number(element.dataset.index) : -1;
  if (target.classList.contains("copy-code")) {
    copyCode(target);
  } else if (target.classList.contains("edit") && !busy) {
    editMessage(element, index);
  } else if (target.classList.contains("regenerate")) {
    regenerate();
  } else if (target.classList.contains("toggle-tokens")) {
    const message = current.messages[index];
    message.showTokens = !message.showTokens;
    popup.hide();
    fillMessage(element, message, index);
    refocus(element.querySelector(".toggle-tokens")); // redrawn: the focus stays on the (new) toggle
    persist();
  }
});
popup.attach(ui.messages, (span) => {
  const index = Number(span.closest("article").dataset.index);
  return current.messages[index].tokens[Number(span.dataset.token)];
});
window.addEventListener("beforeunload", () => {
  // Keep the part of the reply that has arrived, marked as cut short: it is not the model's whole reply.
  if (busy) busy.reply.error = "Interrupted: the page was reloaded or closed before the reply was complete.";
  // Also a system prompt still being typed (its `change` has not fired yet).
  if (busy || systemEdited) persist();
});
window.addEventListener("storage", takeOtherTabsChanges);

loadSettingsIntoForm();
try {
  if (current) renderConversation();
  else startNewChat();
} catch (e) {
  // Whatever the stored conversation holds, the list of the others and the server connection come up.
  console.warn("the conversation could not be drawn:", e);
}
renderList();
connect();
