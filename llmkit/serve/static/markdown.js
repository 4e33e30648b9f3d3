// A small, safe Markdown renderer for model replies (written for llmkit; no third-party code).
//
// Safety: the text is HTML-escaped before any Markdown rule runs, and the rules only ever add a fixed set
// of tags, so nothing a model writes can become markup; links are kept only for http(s) URLs. The page's
// Content-Security-Policy (no inline scripts) is a second wall. copyCode() (at the end) is the code
// blocks' Copy button.
//
// Supported: fenced code blocks (``` or ~~~, with a language; an unclosed fence while a reply streams
// in is a code block to the end), inline code, **bold**, *italics*, ~~strike~~, [links](https://...),
// headings, bullet and numbered lists (nested by indentation), block quotes, tables (GitHub's: a divider
// row with a cell per header cell; `\|` is a pipe inside a cell, code spans included), rules, paragraphs,
// and backslash escapes (`\*` is a literal asterisk, as in CommonMark).
// Quotes and lists nest at most MAX_DEPTH deep (deeper markers stay text): rendering recurses per level,
// and a reply of thousands of `>` would otherwise overflow the stack.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;
const LIST_ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const TABLE_DIVIDER = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;
export const MAX_DEPTH = 32;

export function renderMarkdown(source) {
  // NUL marks inline placeholders below; a reply cannot contain one.
  const lines = source.replace(/\u0000/g, "").replace(/\r\n?/g, "\n").split("\n");
  return renderBlocks(lines, 0);
}

function leadingSpaces(line) {
  return line.length - line.trimStart().length;
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || LIST_ITEM.test(line);
}

function renderBlocks(lines, depth) {
  const nests = depth < MAX_DEPTH; // past the limit, quote and list markers are paragraph text
  const out = [];
  let paragraph = [];
  const flush = () => {
    if (paragraph.length) out.push(`<p>${paragraph.map((l) => inline(l.trim())).join("<br>")}</p>`);
    paragraph = [];
  };
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if ((m = line.match(FENCE))) {
      flush();
      const marker = m[1];
      const body = [];
      i++;
      const closes = (l) => l.trim().startsWith(marker) && l.trim().replace(/[`~]/g, "") === "";
      while (i < lines.length && !closes(lines[i])) body.push(lines[i++]);
      i++; // the closing fence (or past the end while the reply is still streaming)
      out.push(codeBlock(body.join("\n"), m[2]));
    } else if (line.trim() === "") {
      flush();
      i++;
    } else if ((m = line.match(HEADING))) {
      flush();
      const level = m[1].length;
      out.push(`<h${level}>${inline(m[2])}</h${level}>`);
      i++;
    } else if (RULE.test(line)) {
      flush();
      out.push("<hr>");
      i++;
    } else if (nests && QUOTE.test(line)) {
      flush();
      const quoted = [];
      while (i < lines.length && (m = lines[i].match(QUOTE))) {
        quoted.push(m[1]);
        i++;
      }
      out.push(`<blockquote>${renderBlocks(quoted, depth + 1)}</blockquote>`);
    } else if (nests && LIST_ITEM.test(line)) {
      flush();
      i = renderList(lines, i, out, depth);
    } else if (line.trim() === "\\[") {
      // LaTeX display math over several lines (`\[`, the lines, `\]`): no math is typeset here, so it is
      // shown as written; the backslash escapes would eat its delimiters and halve its `\\` row breaks
      flush();
      const body = [lines[i++].trim()];
      while (i < lines.length && lines[i].trim() !== "\\]") body.push(lines[i++]);
      if (i < lines.length) body.push(lines[i++].trim());
      out.push(`<p>${body.map(escapeHtml).join("<br>")}</p>`);
    } else if (line.includes("|") && i + 1 < lines.length && TABLE_DIVIDER.test(lines[i + 1]) &&
               lines[i + 1].includes("-") && tableCells(line).length === tableCells(lines[i + 1]).length) {
      // (as GitHub's tables: a paragraph line that holds a pipe, such as `ls | wc`, above a rule "---"
      // is no table; its one-cell divider does not match the header's two cells)
      flush();
      i = renderTable(lines, i, out);
    } else {
      paragraph.push(line);
      i++;
    }
  }
  flush();
  return out.join("\n");
}

function codeBlock(code, language) {
  const lang = escapeHtml(language || "");
  return `<div class="code-block"><div class="code-bar"><span>${lang}</span>` +
    `<button type="button" class="copy-code">Copy</button></div>` +
    `<pre><code${lang ? ` class="language-${lang}"` : ""}>${escapeHtml(code)}</code></pre></div>`;
}

// A list from line i: its items, each item's continuation lines (indented, or lazy paragraph lines), and
// nested lists (indented deeper) rendered recursively. Returns the index after the list.
function renderList(lines, i, out, depth) {
  const first = lines[i].match(LIST_ITEM);
  const indent = first[1].length;
  const ordered = /\d/.test(first[2]);
  const items = [];
  while (i < lines.length) {
    const line = lines[i];
    const m = line.match(LIST_ITEM);
    if (m && m[1].length <= indent + 1) {
      if (/\d/.test(m[2]) !== ordered) break; // another kind of list starts
      const contentIndent = m[0].length - m[3].length;
      items.push({ lines: [m[3]], contentIndent });
      i++;
    } else if (line.trim() === "") {
      let j = i;
      while (j < lines.length && lines[j].trim() === "") j++;
      const next = j < lines.length ? lines[j] : null;
      const nextItem = next !== null && next.match(LIST_ITEM);
      const sameList = nextItem && nextItem[1].length <= indent + 1 && /\d/.test(nextItem[2]) === ordered;
      if (next !== null && (sameList || leadingSpaces(next) > indent)) {
        if (!sameList) items[items.length - 1].lines.push("");
        i = j;
      } else {
        break;
      }
    } else if (leadingSpaces(line) > indent) {
      const item = items[items.length - 1];
      item.lines.push(line.slice(Math.min(leadingSpaces(line), item.contentIndent)));
      i++;
    } else if (!startsBlock(line)) {
      items[items.length - 1].lines.push(line); // a lazy continuation of the item's paragraph
      i++;
    } else {
      break;
    }
  }
  const tag = ordered ? "ol" : "ul";
  const start = ordered ? parseInt(first[2], 10) : 1;
  const body = items.map((item) => {
    const inner = item.lines.length === 1 ? inline(item.lines[0]) : renderBlocks(item.lines, depth + 1);
    return `<li>${inner}</li>`;
  });
  out.push(`<${tag}${start !== 1 ? ` start="${start}"` : ""}>${body.join("")}</${tag}>`);
  return i;
}

function tableCells(line) {
  let text = line.trim();
  if (text.startsWith("|")) text = text.slice(1);
  if (text.endsWith("|")) text = text.slice(0, -1);
  // `\|` is a pipe in the cell's text, inside a code span too (as on GitHub): unescaped before inline().
  return text.split(/(?<!\\)\|/).map((c) => c.trim().replace(/\\\|/g, "|"));
}

function renderTable(lines, i, out) {
  const header = tableCells(lines[i]);
  const aligns = tableCells(lines[i + 1]).map((c) =>
    c.startsWith(":") && c.endsWith(":") ? "center" : c.endsWith(":") ? "right" : c.startsWith(":") ? "left" : "");
  const cell = (tag, text, k) => `<${tag}${aligns[k] ? ` class="align-${aligns[k]}"` : ""}>${inline(text)}</${tag}>`;
  const rows = [];
  i += 2;
  while (i < lines.length && lines[i].includes("|") && lines[i].trim() !== "") {
    rows.push(`<tr>${tableCells(lines[i]).map((c, k) => cell("td", c, k)).join("")}</tr>`);
    i++;
  }
  out.push(`<table><thead><tr>${header.map((c, k) => cell("th", c, k)).join("")}</tr></thead>` +
           `<tbody>${rows.join("")}</tbody></table>`);
  return i;
}

// Inline rules on one line (or paragraph) of raw text: code spans are cut out first (their text is only
// escaped), then the rest is escaped, links are cut out in turn (so that no emphasis rule reaches into an
// href: `#object.__init__` stays a URL), the emphasis rules add their fixed tags, and the cut-outs go back.
// A backslash before ASCII punctuation (CommonMark's escapes) is cut out too, after the code spans (whose
// text stays as written), so that `\*` or `snake\_case` is no emphasis and shows no backslash.
// A placeholder is NUL, a kind letter and a number, NUL: text that no rule below matches.
export function inline(raw) {
  const cut = { c: [], a: [], e: [], m: [] };
  const placeholder = (kind, html) => `\u0000${kind}${cut[kind].push(html) - 1}\u0000`;
  let text = raw.replace(/\u0000/g, "").replace(/(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g,
    (_, ticks, code) => placeholder("c", `<code>${escapeHtml(code)}</code>`));
  // LaTeX math, \(...\) or \[...\], is kept as written (as code spans are): without a math renderer, its
  // delimiters and `\\` are what says it is math, and an escape would take their backslashes away
  // (at most 2,000 characters: a reply of thousands of unclosed `\(` stays quick to draw)
  text = text.replace(/\\\((?:[^\\]|\\(?!\))){1,2000}?\\\)|\\\[(?:[^\\]|\\(?!\])){1,2000}?\\\]/g,
    (math) => placeholder("m", escapeHtml(math)));
  text = text.replace(/\\([!-/:-@[-`{-~])/g, (_, c) => placeholder("e", escapeHtml(c)));
  text = escapeHtml(text);
  // A URL may hold one level of balanced parentheses (Wikipedia's `Python_(programming_language)`).
  text = text.replace(/\[([^\]\n]+)\]\((https?:\/\/(?:[^\s()]|\([^\s()]*\))+)\)/g, (_, label, url) =>
    placeholder("a", `<a href="${url}" target="_blank" rel="noopener noreferrer">${emphasis(label)}</a>`));
  text = emphasis(text);
  for (const kind of ["a", "c", "e", "m"]) { // links first: a link's label (or URL) may hold the others
    text = text.replace(new RegExp(`\u0000${kind}(\\d+)\u0000`, "g"), (_, n) => cut[kind][Number(n)]);
  }
  return text;
}

function emphasis(text) {
  text = text.replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>");
  text = text.replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?![\w])/g, "$1<strong>$2</strong>");
  text = text.replace(/(^|[^*\w])\*([^\s*](?:[^*]*?[^\s*])?)\*(?![*\w])/g, "$1<em>$2</em>");
  text = text.replace(/(^|[^\w])_([^\s_](?:[^_]*?[^\s_])?)_(?![\w])/g, "$1<em>$2</em>");
  return text.replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>");
}

// The Copy button that codeBlock() puts on each code block (app.js sends its clicks here).
// navigator.clipboard exists only in secure contexts (https, localhost), not for a server on a LAN
// address over http: then the code is selected and the older copy command asked for; if the browser
// refuses that too, the code stays selected for the user to copy.
export async function copyCode(copyButton) {
  const code = copyButton.closest(".code-block").querySelector("code");
  let copied = false;
  if (navigator.clipboard) {
    try {
      await navigator.clipboard.writeText(code.textContent);
      copied = true;
    } catch (_) { /* refused: try the other way */ }
  }
  if (!copied) {
    const range = document.createRange();
    range.selectNodeContents(code);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    try {
      copied = document.execCommand("copy");
    } catch (_) { /* some browsers throw rather than return false */ }
    if (copied) selection.removeAllRanges();
  }
  copyButton.textContent = copied ? "Copied" : "Copy failed \u2014 select the text";
}
