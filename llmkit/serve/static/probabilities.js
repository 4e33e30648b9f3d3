// The "probabilities" view of a reply: every generated token is a span shaded by how likely the model
// found it; hovering, focusing or tapping one shows the alternatives the model weighed at that step
// (the API's top_logprobs) with their percentages. Model text only ever goes in via textContent.

// Stored per token: [text the token added, its log-probability, [[alternative, log-probability], ...],
// the index of the token itself among the alternatives or -1]. The token is found by its bytes: its text
// can differ from the alternative's (a token holding part of a UTF-8 character adds no text by itself).
export function tokensOf(logprobContent) {
  return logprobContent.map((t) => {
    const top = t.top_logprobs || [];
    const own = JSON.stringify(t.bytes);
    const chosen = t.bytes ? top.findIndex((a) => JSON.stringify(a.bytes) === own) : top.findIndex((a) => a.token === t.token);
    return [t.token, t.logprob, top.map((a) => [a.token, a.logprob]), chosen];
  });
}

export function percent(logprob) {
  const p = Math.exp(logprob) * 100;
  if (p >= 99.95) return "100%";
  return p < 0.1 ? "<0.1%" : `${p.toFixed(1)}%`;
}

// Whitespace made visible, so that " the" and "the" (and a newline) can be told apart in the list.
export function visible(token) {
  // A token that adds no text: part of a UTF-8 character, or a special token the server leaves out.
  if (token === "") return "(no text: part of a character or a special token)";
  return token.replace(/ /g, "\u2423").replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5");
}

function shade(logprob) {
  const p = Math.exp(logprob);
  return p >= 0.9 ? "p-high" : p >= 0.6 ? "p-good" : p >= 0.3 ? "p-mid" : p >= 0.1 ? "p-low" : "p-rare";
}

export function renderTokens(container, tokens) {
  container.replaceChildren();
  tokens.forEach(([text, logprob], i) => {
    const span = document.createElement("span");
    span.className = `tok ${shade(logprob)}`;
    span.textContent = text;
    span.tabIndex = 0;
    span.dataset.token = String(i);
    container.append(span);
  });
}

// One popup for the page, shown next to the token span it describes.
export class TokenPopup {
  constructor(element) {
    this.element = element;
    this.pinned = null; // a span tapped or clicked: stays open until a tap elsewhere or Esc
  }

  show(span, token) {
    const [text, logprob, top, chosen] = token;
    // The sampled token is marked; when it was not among the most likely ones it is listed after them.
    const rows = chosen >= 0 || !top.length ? top : [...top, [text, logprob]];
    const chosenRow = chosen >= 0 ? chosen : rows.length - 1;
    const table = document.createElement("table");
    rows.forEach(([alt, lp], i) => {
      const row = table.insertRow();
      if (i === chosenRow) row.className = "chosen";
      const name = row.insertCell();
      name.textContent = visible(alt);
      const bar = row.insertCell();
      const fill = document.createElement("span");
      fill.className = `bar ${shade(lp)}`;
      fill.dataset.width = String(Math.round(Math.exp(lp) * 100));
      bar.append(fill);
      const value = row.insertCell();
      value.className = "pct";
      value.textContent = percent(lp);
    });
    const title = document.createElement("div");
    title.className = "popup-title";
    title.textContent = `${visible(text)} \u2014 ${percent(logprob)}`;
    this.element.replaceChildren(title, table);
    // Bar widths through the CSSOM: the page's CSP allows no inline style attributes.
    for (const fill of this.element.querySelectorAll(".bar")) fill.style.width = `${fill.dataset.width}px`;
    this.element.hidden = false;
    const box = span.getBoundingClientRect();
    const width = this.element.offsetWidth;
    const left = Math.max(4, Math.min(box.left, window.innerWidth - width - 4));
    const below = box.bottom + 6 + this.element.offsetHeight < window.innerHeight;
    this.element.style.left = `${left + window.scrollX}px`;
    this.element.style.top = `${(below ? box.bottom + 6 : box.top - this.element.offsetHeight - 6) + window.scrollY}px`;
  }

  hide() {
    this.pinned = null;
    this.element.hidden = true;
  }

  // Wires hover, keyboard focus and taps on token spans inside `root`; `tokenAt(span)` finds its data.
  attach(root, tokenAt) {
    const target = (event) => event.target.closest && event.target.closest(".tok");
    root.addEventListener("mouseover", (event) => {
      const span = target(event);
      if (span && !this.pinned) this.show(span, tokenAt(span));
    });
    root.addEventListener("mouseout", (event) => {
      if (target(event) && !this.pinned) this.element.hidden = true;
    });
    root.addEventListener("focusin", (event) => {
      const span = target(event);
      if (span) this.show(span, tokenAt(span));
    });
    root.addEventListener("click", (event) => {
      const span = target(event);
      if (!span) return;
      if (this.pinned === span) {
        this.hide();
      } else {
        this.pinned = span;
        this.show(span, tokenAt(span));
      }
      event.stopPropagation();
    });
    document.addEventListener("click", (event) => {
      if (this.pinned && !this.element.contains(event.target)) this.hide();
    });
  }
}
