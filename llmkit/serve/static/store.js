// What the page keeps in the browser (localStorage): settings, and the conversations with their replies'
// token probabilities and speed. Nothing is stored on the server.

const KEYS = { settings: "llmkit.settings", conversations: "llmkit.conversations", current: "llmkit.current" };

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

export function loadConversations() {
  const list = read(KEYS.conversations, []);
  return Array.isArray(list) ? list.filter((c) => c && c.id && Array.isArray(c.messages)) : [];
}

export function loadCurrentId() {
  return read(KEYS.current, null);
}

// Saves all conversations. When the browser's quota (about 5 MB) is reached, the token probabilities of
// the least recently used conversations are dropped, oldest first, until the rest fits; their text stays.
export function saveConversations(conversations, currentId) {
  localStorage.setItem(KEYS.current, JSON.stringify(currentId));
  const oldestFirst = [...conversations].sort((a, b) => a.updated - b.updated);
  for (;;) {
    try {
      localStorage.setItem(KEYS.conversations, JSON.stringify(conversations));
      return true;
    } catch (e) {
      const victim = oldestFirst.find((c) => c.id !== currentId && c.messages.some((m) => m.tokens));
      if (!victim) return false;
      for (const m of victim.messages) delete m.tokens;
    }
  }
}
