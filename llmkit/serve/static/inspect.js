// The Inspect view: what the model computes for a text or for the conversation up to its last reply,
// from this server's /v1/inspect/* endpoints (the same functions as `llmkit inspect`):
//   attention   pick a token; for every layer, the tokens it attends to (one head or the mean over heads),
//               the tokens shaded by their weight, and the chosen layer's tokens x tokens heatmap;
//   logit lens  the next token each layer would predict after each token (nostalgebraist 2020);
//   next token  the model's most likely next tokens with their probabilities.
// Model text only ever goes in via textContent; colours are set through the CSSOM (the CSP allows no
// inline style attributes).

import { ApiError, inspect } from "./api.js";
import { percent, visible } from "./probabilities.js";

const $ = (id) => document.getElementById(id);
const TOP_ATTENDED = 5;

function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

function pct(weight) {
  return `${(100 * weight).toFixed(1)}%`;
}

// The `count` largest weights of a row, as [weight, token index], largest first.
function ranked(row, count) {
  return row.map((w, j) => [w, j]).sort((a, b) => b[0] - a[0]).slice(0, count);
}

// The accent colour at opacity `alpha`, for a cell or a token shaded by its weight.
function accent(alpha) {
  return `rgba(47, 95, 208, ${Math.max(0, Math.min(1, alpha)).toFixed(3)})`;
}

export class Inspector {
  // conversation(): the current conversation {system, messages}; apiKey(), model(): the page's;
  // onUnauthorized(): ask the user for the key.
  constructor({ conversation, apiKey, model, onUnauthorized }) {
    Object.assign(this, { conversation, apiKey, model, onUnauthorized });
    this.ui = {
      view: $("inspect-view"), chat: [$("messages"), $("composer")], tabChat: $("view-chat"),
      tabInspect: $("view-inspect"), text: $("inspect-text"), sourceText: $("source-text"),
      sourceReply: $("source-reply"), status: $("inspect-status"), output: $("inspect-output"),
    };
    this.attention = null; // the last attention reply, and what it was asked with
    this.request = 0; // replies to earlier requests are dropped
    this.ui.tabChat.addEventListener("click", () => this.show(false));
    this.ui.tabInspect.addEventListener("click", () => this.show(true));
    $("run-attention").addEventListener("click", () => this.runAttention({}));
    $("run-lens").addEventListener("click", () => this.runLens());
    $("run-next").addEventListener("click", () => this.runNext());
    for (const radio of [this.ui.sourceText, this.ui.sourceReply]) radio.addEventListener("change", () => this.sourceChanged());
  }

  sourceChanged() {
    this.ui.text.disabled = this.ui.sourceReply.checked; // the text box is not what is inspected then
  }

  show(on) {
    this.ui.view.hidden = !on;
    for (const el of this.ui.chat) el.hidden = on;
    this.ui.tabChat.classList.toggle("current", !on);
    this.ui.tabInspect.classList.toggle("current", on);
    this.ui.tabChat.setAttribute("aria-pressed", String(!on)); // which view is shown, for a screen reader
    this.ui.tabInspect.setAttribute("aria-pressed", String(on));
    if (on) {
      const reply = this.lastReply();
      this.ui.sourceReply.disabled = !reply;
      if (!reply) this.ui.sourceText.checked = true;
      this.ui.sourceReply.parentElement.title = reply ? "" : "the current conversation has no reply yet";
      this.sourceChanged();
    }
  }

  lastReply() {
    const conversation = this.conversation();
    const messages = conversation ? conversation.messages : [];
    const last = messages[messages.length - 1];
    return last && last.role === "assistant" && last.content ? last : null;
  }

  // The request's input: the text box, or the conversation (system prompt, turns, the last reply).
  input() {
    if (this.ui.sourceReply.checked && this.lastReply()) {
      const conversation = this.conversation();
      const messages = [];
      if (conversation.system && conversation.system.trim()) messages.push({ role: "system", content: conversation.system });
      for (const m of conversation.messages) if (m.content) messages.push({ role: m.role, content: m.content });
      return { messages };
    }
    return { text: this.ui.text.value };
  }

  async call(kind, body) {
    const id = ++this.request;
    this.ui.status.textContent = "computing\u2026";
    this.ui.status.classList.remove("error");
    const model = this.model();
    try {
      const reply = await inspect(kind, { ...(model ? { model } : {}), ...body }, this.apiKey());
      if (id !== this.request) return null;
      this.ui.status.textContent = `${reply.tokens.length} tokens`;
      return reply;
    } catch (e) {
      if (id !== this.request) return null;
      this.ui.status.textContent = e instanceof ApiError ? e.message : `The request failed: ${e.message}`;
      this.ui.status.classList.add("error");
      if (e.status === 401) this.onUnauthorized();
      return null;
    }
  }

  // --- attention -------------------------------------------------------------------------------------------
  // changes: {token, layer, head} to ask for; the input is kept from the last run unless none was made.
  async runAttention(changes) {
    const fresh = !("token" in changes || "layer" in changes || "head" in changes) || !this.attention;
    const asked = fresh ? { input: this.input(), token: null, layer: null, head: null }
      : { ...this.attention.asked, ...changes };
    const body = { ...asked.input };
    for (const field of ["token", "layer", "head"]) if (asked[field] !== null) body[field] = asked[field];
    const reply = await this.call("attention", body);
    if (!reply) return;
    this.attention = { reply, asked: { ...asked, token: reply.token, layer: reply.layer, head: reply.head } };
    this.renderAttention();
  }

  renderAttention() {
    const { reply } = this.attention;
    const { tokens, token, layer, head, n_layers: layers, n_heads: heads } = reply;
    const box = element("div", "attention");
    box.id = "attention";

    const controls = element("div", "inspect-controls");
    const layerSelect = element("select");
    layerSelect.id = "attention-layer";
    layerSelect.setAttribute("aria-label", "Layer of the heatmap and shading");
    for (let l = 0; l < layers; l++) layerSelect.add(new Option(`layer ${l}`, String(l)));
    layerSelect.value = String(layer);
    const headSelect = element("select");
    headSelect.id = "attention-head";
    headSelect.setAttribute("aria-label", "Head, or the mean of the heads");
    headSelect.add(new Option("mean of the heads", ""));
    for (let h = 0; h < heads; h++) headSelect.add(new Option(`head ${h}`, String(h)));
    headSelect.value = head === null ? "" : String(head);
    layerSelect.addEventListener("change", () => this.runAttention({ layer: Number(layerSelect.value) }));
    headSelect.addEventListener("change", () => this.runAttention({ head: headSelect.value === "" ? null : Number(headSelect.value) }));
    controls.append("Heatmap and shading: ", layerSelect, " ", headSelect);

    const rowOf = (l) => (head === null ? reply.mean[l] : reply.heads[l][head]);
    const strip = element("div", "token-strip");
    strip.id = "attention-tokens";
    const shown = rowOf(layer);
    const most = Math.max(...shown); // shaded relative to the largest weight, so that a flat row still shows its shape
    tokens.forEach((t, i) => {
      const span = element("span", "itok" + (i === token ? " sel" : ""), visible(t));
      span.dataset.i = String(i);
      span.tabIndex = 0;
      span.setAttribute("role", "button"); // chosen with Enter or Space as well as a click
      if (i <= token) {
        span.style.backgroundColor = accent(0.8 * shown[i] / most);
        span.title = pct(shown[i]);
      }
      strip.append(span);
    });
    strip.addEventListener("click", (event) => {
      const span = event.target.closest(".itok");
      if (span) this.runAttention({ token: Number(span.dataset.i) });
    });
    strip.addEventListener("keydown", (event) => {
      const span = event.target.closest(".itok");
      if (span && (event.key === "Enter" || event.key === " ")) {
        event.preventDefault(); // Space would scroll the view
        this.runAttention({ token: Number(span.dataset.i) });
      }
    });

    const caption = element("p", "hint", `Token ${token} \u201c${visible(tokens[token])}\u201d attends to (top ${TOP_ATTENDED}, `
      + `${head === null ? "mean of the heads" : `head ${head}`}; ${layers} layers x ${heads} heads). Click a token to choose it.`);
    const table = element("table", "attention-table");
    table.id = "attention-table";
    const headRow = table.createTHead().insertRow();
    for (const name of ["layer", "attends to"]) headRow.append(element("th", "", name));
    const rows = table.createTBody();
    for (let l = 0; l < layers; l++) {
      const tr = rows.insertRow();
      tr.dataset.layer = String(l);
      if (l === layer) tr.className = "current";
      tr.append(element("td", "layer", String(l)));
      const cell = tr.insertCell();
      for (const [w, j] of ranked(rowOf(l), TOP_ATTENDED)) {
        const chip = element("span", "chip", `${visible(tokens[j])} ${pct(w)}`);
        chip.dataset.token = String(j);
        chip.dataset.weight = String(w);
        chip.style.backgroundColor = accent(w * 0.6);
        cell.append(chip);
      }
    }
    rows.addEventListener("click", (event) => {
      const tr = event.target.closest("tr");
      if (tr) this.runAttention({ layer: Number(tr.dataset.layer) });
    });

    const figure = element("figure", "heatmap");
    figure.append(this.heatmap(reply), element("figcaption", "hint",
      `Layer ${layer}, ${head === null ? "mean of the heads" : `head ${head}`}: row = the token that attends, `
      + "column = the token it reads (darker = more weight). Click a row to choose its token."));
    const panels = element("div", "attention-panels");
    const left = element("div");
    left.append(caption, table);
    panels.append(left, figure);
    box.append(controls, strip, panels);
    // The view is drawn anew on each answer: a keyboard user's focus (on a token, or the layer or head
    // list) goes to the same control in the new drawing rather than to the page's body.
    const active = document.activeElement;
    const focused = this.ui.output.contains(active) ? active : null;
    this.ui.output.replaceChildren(box);
    const again = !focused ? null : focused.id ? box.querySelector(`#${focused.id}`)
      : focused.classList.contains("itok") ? strip.querySelector(".itok.sel") : null;
    if (again) again.focus();
  }

  heatmap(reply) {
    const { tokens, matrix, token } = reply;
    const n = tokens.length;
    const cell = Math.max(2, Math.min(16, Math.floor(480 / n)));
    const canvas = element("canvas");
    canvas.id = "attention-heatmap";
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", `Attention heatmap, ${n} x ${n} tokens (the table gives the numbers)`);
    canvas.width = canvas.height = n * cell;
    const context = canvas.getContext("2d");
    context.fillStyle = "#ffffff";
    context.fillRect(0, 0, canvas.width, canvas.height);
    matrix.forEach((row, i) => row.forEach((w, j) => {
      context.fillStyle = accent(w);
      context.fillRect(j * cell, i * cell, cell, cell);
    }));
    context.strokeStyle = "#f4b400";
    context.lineWidth = 2;
    context.strokeRect(1, token * cell + 1, canvas.width - 2, cell - 2);
    const at = (event) => {
      const box = canvas.getBoundingClientRect();
      return [Math.floor((event.clientY - box.top) / cell), Math.floor((event.clientX - box.left) / cell)];
    };
    canvas.addEventListener("mousemove", (event) => {
      const [i, j] = at(event);
      canvas.title = i >= 0 && i < n && j >= 0 && j <= i
        ? `${visible(tokens[i])} \u2192 ${visible(tokens[j])}: ${pct(matrix[i][j])}` : "";
    });
    canvas.addEventListener("click", (event) => {
      const [i] = at(event);
      if (i >= 0 && i < n) this.runAttention({ token: i });
    });
    return canvas;
  }

  // --- the logit lens --------------------------------------------------------------------------------------
  async runLens() {
    const reply = await this.call("lens", { ...this.input(), top: 5 });
    if (!reply) return;
    const table = element("table", "lens-table");
    table.id = "lens-table";
    const head = table.createTHead().insertRow();
    head.append(element("th", "", "layer \\ after"));
    for (const p of reply.positions) head.append(element("th", "", visible(reply.tokens[p])));
    const body = table.createTBody();
    reply.top_texts.forEach((row, r) => {
      const tr = body.insertRow();
      tr.append(element("th", "", r === 0 ? "emb" : String(r)));
      row.forEach((texts, c) => {
        const probs = reply.top_probs[r][c];
        const td = element("td", "", `${visible(texts[0])} ${Math.round(100 * probs[0])}`);
        td.style.backgroundColor = accent(probs[0] * 0.7);
        td.title = texts.map((t, k) => `${visible(t)} ${pct(probs[k])}`).join("\n");
        tr.append(td);
      });
    });
    const note = element("p", "hint", "Each column: the next token predicted after that token, read at every layer "
      + "(the final norm and output head applied to the residual stream; the last row is the model's own prediction). "
      + "Top 1 and its %; hover for the top 5.");
    const scroll = element("div", "lens-scroll");
    scroll.append(table);
    this.ui.output.replaceChildren(note, scroll);
  }

  // --- next-token probabilities ----------------------------------------------------------------------------
  async runNext() {
    const reply = await this.call("next_token", { ...this.input(), top: 10 });
    if (!reply) return;
    const tail = reply.tokens.slice(-8).map(visible).join("");
    const note = element("p", "hint", `The model's next token after \u201c\u2026${tail}\u201d:`);
    const table = element("table", "next-table");
    table.id = "next-table";
    reply.top_texts.forEach((text, k) => {
      const tr = table.insertRow();
      tr.append(element("td", "", visible(text)));
      const bar = element("span", "bar");
      bar.style.width = `${Math.max(1, Math.round(200 * Math.exp(reply.top_logprobs[k])))}px`;
      const barCell = tr.insertCell();
      barCell.append(bar);
      tr.append(element("td", "pct", percent(reply.top_logprobs[k])));
    });
    this.ui.output.replaceChildren(note, table);
  }
}
