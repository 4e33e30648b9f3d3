// Conversations to and from a JSON file: Export (one, or all) downloads one; Import reads one back.
//
// The file (README.md, "The chat page"): {"format": "llmkit-conversations", "version": 1, "exported":
// ISO time, "conversations": [{"id", "title", "system", "created", "updated" (ms since 1970), "messages":
// [{"role": "user"|"assistant", "content", and optionally "stats", "sources", "error", "tokens"}]}]}.
// Only `messages`, each with its role and content, is required, so other tools can write one.
//
// An imported file is untrusted data: it is checked whole before anything changes, field by field (the
// first bad field is named, with its path), and only the known fields are kept; what it holds is then
// drawn the way a reply is (text via textContent, replies through the Markdown renderer, which escapes
// HTML first).

import { newId, titleOf } from "./store.js";

export const FORMAT = "llmkit-conversations";
export const VERSION = 1;
export const MAX_IMPORT_BYTES = 20 * 1024 * 1024; // the browser keeps about 5 MB: a bigger file cannot fit

export class ImportError extends Error {}

// --- export ------------------------------------------------------------------------------------------------
export function exportData(conversations) {
  return {
    format: FORMAT, version: VERSION, exported: new Date().toISOString(),
    conversations: conversations.map((c) => ({
      id: c.id, title: c.title, system: c.system || "", created: c.created, updated: c.updated,
      // `showTokens` (which view a reply is shown in) is this page's state, not the conversation's.
      messages: c.messages.map(({ showTokens, ...m }) => m),
    })),
  };
}

// "llmkit-chat-the-capital-of-france.json", or "llmkit-chats-2025-01-31.json" for all of them.
export function exportFileName(conversation) {
  if (!conversation) return `llmkit-chats-${new Date().toISOString().slice(0, 10)}.json`;
  const words = Array.from((conversation.title || "").normalize("NFKC").replace(/[^\p{L}\p{N}]+/gu, "-")
    .replace(/^-+|-+$/g, "").toLowerCase()).slice(0, 40).join("").replace(/-+$/, "");
  return `llmkit-chat-${words || "untitled"}.json`;
}

export function download(name, data) {
  const blob = new Blob([JSON.stringify(data, null, 2) + "\n"], { type: "application/json" });
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000); // the download has started long before
}

// --- import ------------------------------------------------------------------------------------------------
// Which of a file's conversations to add to `existing`: one already there (same id, same `updated`) is
// left out, and so is one without messages (the page keeps none); one whose id is taken, or was deleted
// here (`gone`: saving would drop it again), gets a new id. Titles are tidied as the page's own are.
export function newConversations(imported, existing, gone) {
  const taken = new Map(existing.map((c) => [c.id, c]));
  const added = [];
  let skipped = 0;
  for (const c of imported.filter((c) => c.messages.length)) {
    if (taken.has(c.id) && taken.get(c.id).updated === c.updated) {
      skipped++;
      continue;
    }
    const first = c.messages.find((m) => m.role === "user");
    const conversation = { ...c, id: !c.id || taken.has(c.id) || gone.has(c.id) ? newId() : c.id,
                           title: titleOf(c.title, 200) || (first ? titleOf(first.content) : "") };
    added.push(conversation);
    taken.set(conversation.id, conversation);
  }
  return { added, skipped, empty: imported.filter((c) => !c.messages.length).length };
}

function megabytes(n) {
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

// The conversations in an exported file, checked, as the page stores them; throws ImportError saying
// what is wrong and where (the page shows it: "x.json" was not imported: ...).
export async function readImport(file) {
  if (file.size > MAX_IMPORT_BYTES) {
    throw new ImportError(`it is ${megabytes(file.size)}, and the page imports files up to ${megabytes(MAX_IMPORT_BYTES)}`);
  }
  let text;
  try {
    text = await file.text();
  } catch (e) {
    throw new ImportError(`it could not be read (${e.message})`);
  }
  let data;
  try {
    data = JSON.parse(text);
  } catch (e) {
    throw new ImportError(`it is not JSON (${e.message}); export conversations with this page's Export to get one`);
  }
  return parseExport(data);
}

export function parseExport(data) {
  if (!isObject(data) || data.format !== FORMAT) {
    throw new ImportError(`it is not an llmkit conversations file (its "format" must be "${FORMAT}")`);
  }
  if (data.version === undefined) throw new ImportError(`it has no "version" (this page reads version ${VERSION})`);
  if (data.version !== VERSION) {
    throw new ImportError(`it is version ${JSON.stringify(data.version)} of the llmkit conversations format, and ` +
                          `this page reads version ${VERSION} only (was it written by a newer llmkit?)`);
  }
  if (!Array.isArray(data.conversations)) fail("conversations", "a list");
  return data.conversations.map((c, i) => conversationOf(c, `conversations[${i}]`));
}

function isObject(x) {
  return x !== null && typeof x === "object" && !Array.isArray(x);
}

function fail(path, what, value) {
  const got = value === undefined ? "" : ` (it is ${describe(value)})`;
  throw new ImportError(`${path} must be ${what}${got}`);
}

function describe(value) {
  if (value === null) return "null";
  if (Array.isArray(value)) return "a list";
  if (typeof value === "string") return JSON.stringify(Array.from(value).slice(0, 30).join(""));
  return typeof value === "object" ? "an object" : String(value);
}

function optional(object, key, path, check, what) {
  if (object[key] === undefined) return undefined;
  if (!check(object[key])) fail(`${path}.${key}`, what, object[key]);
  return object[key];
}

const isString = (x) => typeof x === "string";
const isNumber = (x) => typeof x === "number" && Number.isFinite(x);
const isNumberOrNull = (x) => x === null || isNumber(x);
const isScalar = (x) => isString(x) || isNumber(x);

function conversationOf(c, path) {
  if (!isObject(c)) fail(path, "an object", c);
  if (!Array.isArray(c.messages)) fail(`${path}.messages`, "a list", c.messages);
  const messages = c.messages.map((m, i) => messageOf(m, `${path}.messages[${i}]`));
  const updated = optional(c, "updated", path, isNumber, "a number (milliseconds since 1970)");
  const created = optional(c, "created", path, isNumber, "a number (milliseconds since 1970)");
  const id = optional(c, "id", path, isScalar, "a string");
  return {
    id: id === undefined ? "" : String(id), messages,
    title: optional(c, "title", path, isString, "a string") ?? "",
    system: optional(c, "system", path, isString, "a string") ?? "",
    created: created ?? updated ?? Date.now(), updated: updated ?? created ?? Date.now(),
  };
}

function messageOf(m, path) {
  if (!isObject(m)) fail(path, "an object", m);
  if (m.role !== "user" && m.role !== "assistant") fail(`${path}.role`, '"user" or "assistant"', m.role);
  if (!isString(m.content)) fail(`${path}.content`, "a string", m.content);
  const out = { role: m.role, content: m.content };
  const error = optional(m, "error", path, isString, "a string");
  if (error !== undefined) out.error = error;
  if (m.stats !== undefined && m.stats !== null) out.stats = statsOf(m.stats, `${path}.stats`);
  if (m.sources !== undefined) out.sources = sourcesOf(m.sources, `${path}.sources`);
  if (m.tokens !== undefined) out.tokens = tokensOf(m.tokens, `${path}.tokens`);
  return out;
}

// Under a reply: its token counts, speed and how it ended (app.js's statsElement).
const STATS = { completion: isNumberOrNull, prompt: isNumberOrNull, cached: isNumberOrNull, ttftS: isNumberOrNull,
                tokensPerS: isNumberOrNull, truncated: isNumberOrNull, exact: (x) => typeof x === "boolean",
                finish: (x) => x === null || isString(x) };

function statsOf(stats, path) {
  if (!isObject(stats)) fail(path, "an object", stats);
  const out = {};
  for (const [key, check] of Object.entries(STATS)) {
    const value = optional(stats, key, path, check, key === "exact" ? "true or false" : key === "finish"
      ? "a string" : "a number");
    if (value !== undefined) out[key] = value;
  }
  return out;
}

// The passages a retrieval-augmented reply cites (llmkit/serve/retrieval.py).
function sourcesOf(sources, path) {
  if (!Array.isArray(sources)) fail(path, "a list", sources);
  return sources.map((s, i) => {
    if (!isObject(s)) fail(`${path}[${i}]`, "an object", s);
    const out = {};
    for (const key of ["n", "file", "line", "start", "end", "text"]) {
      const value = optional(s, key, `${path}[${i}]`, isScalar, "a string or a number");
      if (value !== undefined) out[key] = value;
    }
    return out;
  });
}

// Per token (probabilities.js): [text, log-probability, [[alternative, log-probability], ...], index].
function tokensOf(tokens, path) {
  if (!Array.isArray(tokens)) fail(path, "a list", tokens);
  const what = "[text, log-probability, [[alternative, log-probability], ...], index of the token or -1]";
  return tokens.map((t, i) => {
    const ok = Array.isArray(t) && t.length === 4 && isString(t[0]) && isNumberOrNull(t[1]) && Array.isArray(t[2]) &&
      t[2].every((a) => Array.isArray(a) && a.length === 2 && isString(a[0]) && isNumberOrNull(a[1])) &&
      Number.isInteger(t[3]) && t[3] >= -1 && t[3] < t[2].length;
    if (!ok) fail(`${path}[${i}]`, what);
    return [t[0], t[1], t[2].map(([a, lp]) => [a, lp]), t[3]];
  });
}
