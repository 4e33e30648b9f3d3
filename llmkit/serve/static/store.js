// What the page keeps in the browser (localStorage): settings, and the conversations with their replies'
// token probabilities and speed. Nothing is stored on the server.

const KEYS = {
  settings: "llmkit.settings", conversations: "llmkit.conversations", current: "llmkit.current",
  deleted: "llmkit.deleted", // id -> `updated` when deleted, for tabs that did not hear of the deletion
};
const KEPT_DELETIONS = 1000; // the newest are enough: a tab that old would have reloaded since
export const CONVERSATIONS_KEY = KEYS.conversations; // for the page's `storage` listener (other tabs)

export const DEFAULT_SETTINGS = {
  apiKey: "", system: "", temperature: 0.7, top_p: 1, max_tokens: "", seed: "", probabilities: true,
};

function read(key, fallback) {
  try {
    const text = localStorage.getItem(key);
    return text === null ? fallback : JSON.parse(text);
  } catch (_) {
    return fallback; // unreadable (edited by hand, another version): start afresh rather than break the page
  }
}

export function loadSettings() {
  return { ...DEFAULT_SETTINGS, ...read(KEYS.settings, {}) };
}

export function saveSettings(settings) {
  localStorage.setItem(KEYS.settings, JSON.stringify(settings));
}

export function newId() {
  // crypto.randomUUID needs a secure context; a server on a LAN address over http is not one.
  return Date.now().toString(36) + Math.random().toString(36).slice(2, 10);
}

export function newConversation(system) {
  const now = Date.now();
  return { id: newId(), title: "", system, messages: [], created: now, updated: now };
}

// The first 60 characters of the first message (or of a new title); counted in code points, so an emoji
// is never cut in two.
export function titleOf(text, length = 60) {
  return Array.from(text.trim().replace(/\s+/g, " ")).slice(0, length).join("");
}

// A stored conversation as the page can show it, or null: data written by another version of the page,
// edited by hand or cut short must never stop the page from loading, so each message is checked here.
function validConversation(c) {
  if (!c || typeof c !== "object" || !c.id || !Array.isArray(c.messages)) return null;
  const messages = c.messages.map(validMessage).filter(Boolean);
  return { ...c, id: String(c.id), title: typeof c.title === "string" ? c.title : "",
           system: typeof c.system === "string" ? c.system : "", messages,
           updated: Number(c.updated) || 0, created: Number(c.created) || 0 };
}

function validMessage(m) {
  if (!m || typeof m !== "object" || !["user", "assistant"].includes(m.role)) return null;
  const out = { ...m, content: typeof m.content === "string" ? m.content : "" };
  if (!Array.isArray(m.tokens)) delete out.tokens;
  if (!Array.isArray(m.sources)) delete out.sources;
  if (!m.stats || typeof m.stats !== "object") delete out.stats;
  if (m.error !== undefined && typeof m.error !== "string") out.error = String(m.error);
  return out;
}

export function loadConversations() {
  return validList(read(KEYS.conversations, []));
}

// The conversations in a `storage` event's value (another tab saved), checked as loadConversations's.
export function parseConversations(text) {
  try {
    return validList(JSON.parse(text));
  } catch (_) {
    return [];
  }
}

function validList(list) {
  return Array.isArray(list) ? list.map(validConversation).filter(Boolean) : [];
}

export function loadCurrentId() {
  return read(KEYS.current, null);
}

// The ids of conversations deleted (in any tab): a conversation imported under one would not be kept.
export function deletedIds() {
  const tombstones = read(KEYS.deleted, {});
  return tombstones && typeof tombstones === "object" ? Object.keys(tombstones) : [];
}

function withoutTokens(conversation) {
  return { ...conversation, messages: conversation.messages.map(({ tokens, showTokens, ...m }) => m) };
}

// Saves this tab's conversations, merged with what is stored: other tabs of the page save to the same
// key, so each conversation is taken from whichever side changed it last (`updated`), conversations only
// another tab knows are kept, and those this tab deleted go (`deleted`: id -> `updated` when deleted; a
// copy changed since, in another tab, stays).
//
// When the browser's quota (about 5 MB) is reached, the token probabilities of the least recently used
// conversations are dropped, oldest first, until the rest fits; their text stays. Then, rather than lose
// the current conversation's text, its own probabilities are left out of what is stored (this tab keeps
// showing them). Returns "saved", "without-tokens" (the current one's probabilities were left out), or
// "full" (nothing could be saved).
export function saveConversations(conversations, currentId, deleted = new Map()) {
  // Deletions are stored too: a tab that missed the `storage` event (busy saving, or restored from the
  // back-forward cache) would otherwise bring a deleted conversation back with its next save.
  const tombstones = new Map(Object.entries(read(KEYS.deleted, {})).filter(([, t]) => Number.isFinite(t)));
  for (const [id, updated] of deleted) tombstones.set(id, Math.max(updated, tombstones.get(id) ?? -Infinity));
  const wasDeleted = (c) => tombstones.has(c.id) && c.updated <= tombstones.get(c.id);
  const merged = new Map();
  for (const c of loadConversations()) if (!wasDeleted(c)) merged.set(c.id, c);
  for (const c of conversations) {
    const theirs = merged.get(c.id);
    if (!wasDeleted(c) && (!theirs || theirs.updated <= c.updated)) merged.set(c.id, c);
  }
  try {
    const newest = [...tombstones].sort((a, b) => b[1] - a[1]).slice(0, KEPT_DELETIONS);
    localStorage.setItem(KEYS.deleted, JSON.stringify(Object.fromEntries(newest)));
  } catch (_) { /* full: this tab's own deletions still hold for its saves */ }
  const list = [...merged.values()];
  const oldestFirst = [...list].sort((a, b) => a.updated - b.updated);
  const hasTokens = (c) => c.messages.some((m) => m.tokens);
  let outcome = "saved";
  for (;;) {
    try {
      localStorage.setItem(KEYS.conversations, JSON.stringify(list));
      try {
        localStorage.setItem(KEYS.current, JSON.stringify(currentId));
      } catch (_) { /* which conversation to reopen: not worth dropping any data for */ }
      return outcome;
    } catch (e) {
      const victim = oldestFirst.find((c) => c.id !== currentId && hasTokens(c));
      if (victim) {
        for (const m of victim.messages) delete m.tokens;
        continue;
      }
      const i = list.findIndex((c) => c.id === currentId);
      if (i < 0 || !hasTokens(list[i])) return "full";
      list[i] = withoutTokens(list[i]); // a copy: this tab's Probabilities view keeps working
      outcome = "without-tokens";
    }
  }
}
