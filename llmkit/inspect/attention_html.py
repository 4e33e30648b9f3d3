"""A self-contained HTML page of a text's attention: pick a layer and a head (or the mean over heads),
click a token on the left and lines to the tokens it attends to appear on the right, as thick and as
dark as the weight, with percentages. No network, no libraries: the weights travel inside the page as
bytes (weight x 255, lower triangle only: a token never attends to later ones)."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import torch

from llmkit.atomic import atomic_write_text


def attention_bytes(weights: torch.Tensor) -> bytes:
    """(layers, heads, seq, seq) -> bytes of (layers, heads + 1, lower triangle) with the head mean last."""
    with_mean = torch.cat([weights, weights.mean(dim=1, keepdim=True)], dim=1)
    seq = weights.shape[-1]
    rows, cols = torch.tril_indices(seq, seq)
    return (with_mean[..., rows, cols] * 255).round().clamp(0, 255).to(torch.uint8).numpy().tobytes()


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Attention: __TITLE__</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
#controls { margin-bottom: 1em; } select { margin-right: 1.5em; }
#view { position: relative; display: flex; gap: 0; }
.col { display: flex; flex-direction: column; }
.tok { height: 20px; line-height: 20px; padding: 0 6px; white-space: pre; font-family: monospace;
       cursor: pointer; border-radius: 3px; }
.left .tok { text-align: right; } .left .tok.sel { background: #f4b400; }
.right .tok { cursor: default; }
svg { width: 260px; }
#summary { margin-top: 1em; font-family: monospace; white-space: pre; }
</style></head><body>
<h3>What each token attends to</h3>
<p>__TITLE__ &mdash; click a token on the left (the one that attends); the lines go to the earlier
tokens it reads, with their weights.</p>
<div id="controls">layer <select id="layer"></select> head <select id="head"></select></div>
<div id="view"><div class="col left" id="left"></div><svg id="lines"></svg><div class="col right" id="right"></div></div>
<div id="summary"></div>
<script>
const tokens = __TOKENS__;
const L = __LAYERS__, H = __HEADS__, T = tokens.length, TRI = T * (T + 1) / 2;
const raw = atob("__DATA__");
const data = new Uint8Array(raw.length);
for (let i = 0; i < raw.length; i++) data[i] = raw.charCodeAt(i);
function weight(layer, head, i, j) { return data[(layer * (H + 1) + head) * TRI + i * (i + 1) / 2 + j] / 255; }
const layerSel = document.getElementById("layer"), headSel = document.getElementById("head");
for (let l = 0; l < L; l++) layerSel.add(new Option(String(l), l));
headSel.add(new Option("mean", H));
for (let h = 0; h < H; h++) headSel.add(new Option(String(h), h));
const show = t => JSON.stringify(t).slice(1, -1);
const left = document.getElementById("left"), right = document.getElementById("right");
const svg = document.getElementById("lines");
tokens.forEach((t, i) => {
  const a = document.createElement("div"); a.className = "tok"; a.textContent = show(t); a.onclick = () => select(i);
  left.appendChild(a);
  const b = document.createElement("div"); b.className = "tok"; b.textContent = show(t); right.appendChild(b);
});
svg.setAttribute("height", 20 * T);
let current = T - 1;
function select(i) {
  current = i;
  const layer = +layerSel.value, head = +headSel.value;
  [...left.children].forEach((el, k) => el.classList.toggle("sel", k === i));
  svg.innerHTML = "";
  const ranked = [];
  [...right.children].forEach((el, j) => {
    const w = j <= i ? weight(layer, head, i, j) : 0;
    el.style.background = `rgba(66, 133, 244, ${w})`;
    el.title = (100 * w).toFixed(1) + "%";
    if (j <= i) ranked.push([w, j]);
    if (w < 0.01) return;
    const line = document.createElementNS("http://www.w3.org/2000/svg", "line");
    line.setAttribute("x1", 0); line.setAttribute("y1", 20 * i + 10);
    line.setAttribute("x2", 260); line.setAttribute("y2", 20 * j + 10);
    line.setAttribute("stroke", "#4285f4"); line.setAttribute("stroke-opacity", Math.max(0.15, w));
    line.setAttribute("stroke-width", 1 + 6 * w);
    svg.appendChild(line);
  });
  ranked.sort((x, y) => y[0] - x[0]);
  document.getElementById("summary").textContent = `token ${i} "${show(tokens[i])}", layer ${layer}, ` +
    (head === H ? "mean of the heads" : `head ${head}`) + ":\\n" +
    ranked.slice(0, 8).map(([w, j]) => `  ${(100 * w).toFixed(0).padStart(3)}%  ${j}: "${show(tokens[j])}"`).join("\\n");
}
layerSel.onchange = headSel.onchange = () => select(current);
layerSel.value = __START_LAYER__;
select(T - 1);
</script></body></html>
"""


PLACEHOLDER = re.compile(r"__(TITLE|TOKENS|LAYERS|HEADS|START_LAYER|DATA)__")


def write_attention_html(maps, path: str | Path, title: str = "", layer: int | None = None) -> Path:
    fields = {"TITLE": html.escape(title or "attention"),
              "TOKENS": json.dumps(maps.tokens).replace("</", "<\\/"),
              "LAYERS": str(maps.n_layers), "HEADS": str(maps.n_heads),
              "START_LAYER": str(layer if layer is not None else maps.n_layers // 2),
              "DATA": base64.b64encode(attention_bytes(maps.weights)).decode("ascii")}
    # one pass over the template: chained replaces would also rewrite a placeholder's name inside the user's
    # text (a title or token holding "__TOKENS__" got the raw, unescaped token list put into the page's HTML)
    page = PLACEHOLDER.sub(lambda m: fields[m[1]], PAGE)
    atomic_write_text(path, page)
    return Path(path)
