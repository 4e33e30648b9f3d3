// The parts drawn under a reply besides its text: the sources a retrieval-augmented reply cites, and its
// figures (tokens, speed, prompt, time to the first token, how it ended). Text only, never markup.

// Each figure only if it is a number: replies stored by an older page lack some (tokensPerS, truncated).
export function statsElement(stats) {
  const span = document.createElement("span");
  span.className = "stats";
  const known = (x) => typeof x === "number" && Number.isFinite(x);
  const parts = [`${stats.exact ? "" : "~"}${known(stats.completion) ? stats.completion : "?"} tokens`];
  if (known(stats.tokensPerS)) parts.push(`${stats.tokensPerS.toFixed(1)} tokens/s`);
  if (known(stats.prompt)) parts.push(`prompt ${stats.prompt} tokens${stats.cached ? ` (${stats.cached} cached)` : ""}`);
  if (known(stats.ttftS)) parts.push(`first token ${stats.ttftS.toFixed(2)} s`);
  if (known(stats.truncated) && stats.truncated > 0) {
    const n = stats.truncated;
    parts.push(`the ${n === 1 ? "oldest message was" : `${n} oldest messages were`} left out to fit the context`);
  }
  const reason = { length: "max tokens reached", stopped: "stopped" }[stats.finish];
  if (reason) parts.push(reason);
  span.textContent = parts.join(" \u00b7 ");
  for (const key of ["completion", "prompt", "finish", "truncated"]) span.dataset[key] = String(stats[key]);
  return span;
}

// The passages a retrieval-augmented reply cites (a server started with --rag sends them as `sources`):
// "[2] hamlet.txt, line 1734", the passage itself folded under it. Text only, never markup.
export function sourcesElement(sources) {
  const list = document.createElement("div");
  list.className = "sources";
  const title = document.createElement("div");
  title.className = "sources-title";
  title.textContent = "Sources";
  list.append(title);
  for (const source of sources) {
    const item = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = `[${source.n}] ${source.file}, line ${source.line}`;
    const passage = document.createElement("pre");
    passage.textContent = source.text;
    item.append(summary, passage);
    list.append(item);
  }
  return list;
}
