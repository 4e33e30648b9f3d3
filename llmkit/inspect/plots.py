"""Pictures of the model's insides (matplotlib, written atomically): attention heatmaps, the logit-lens
grid, a 2-D map of word vectors, and the sentence-probability comparison."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from llmkit.atomic import atomic_open


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path, dpi: int = 110) -> Path:
    path = Path(path)
    with atomic_open(path) as f:
        fig.savefig(f, format="png", dpi=dpi)
    _pyplot().close(fig)
    return path


def _label(text: str, width: int = 12) -> str:
    from llmkit.inspect.attention import visible

    shown = visible(text)
    return shown if len(shown) <= width else shown[: width - 1] + "~"


def plot_attention(maps, path: str | Path, layer: int | None = None, head: int | None = None) -> Path:
    """Tokens x tokens heatmaps (row = the token that attends, column = the token attended to): one panel
    per head of `layer`, or one panel per layer (mean over heads, or `head` only) when no layer is given."""
    plt = _pyplot()
    if layer is not None:
        heads = range(maps.n_heads) if head is None else [head]
        panels = [(f"layer {layer} head {h}", maps.weights[layer, h]) for h in heads]
    else:
        panels = [(f"layer {lay}" + (f" head {head}" if head is not None else " (mean)"),
                   maps.weights[lay, head] if head is not None else maps.weights[lay].mean(dim=0))
                  for lay in range(maps.n_layers)]
    seq = len(maps.tokens)
    cols = min(len(panels), 3 if seq > 24 else 6)
    rows = math.ceil(len(panels) / cols)
    size = max(3.0, min(9.0, 0.16 * seq + 1.5))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size), squeeze=False)
    labels = [_label(t) for t in maps.tokens]
    font = max(3, min(8, 400 // max(seq, 1)))
    for ax, (title, weights) in zip(axes.flat, panels):
        image = ax.imshow(weights.numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(seq), labels, rotation=90, fontsize=font)
        ax.set_yticks(range(seq), labels, fontsize=font)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    # which axis attends and what a colour weighs: without these a reader cannot tell rows from columns
    # (the matrix is not symmetric) nor whether a bright cell is 10% or 90%
    fig.supylabel("token that attends (row)", fontsize=9)
    fig.supxlabel("token attended to (column)", fontsize=9)
    fig.tight_layout()
    fig.colorbar(image, ax=list(axes.flat), label="attention weight", shrink=0.8)
    return _save(fig, path)


def plot_lens(result, path: str | Path) -> Path:
    """Layers (rows, embeddings at the bottom) x positions (columns): each cell names the top next token
    that layer predicts, coloured by its probability."""
    plt = _pyplot()
    columns = len(result.positions)
    probs = result.top_probs[:, :, 0].numpy()
    n_rows = result.n_rows
    fig, ax = plt.subplots(figsize=(1.5 + 0.62 * columns, 1.2 + 0.24 * n_rows))
    ax.imshow(probs, cmap="Blues", vmin=0, vmax=1, aspect="auto", origin="lower")
    for row in range(n_rows):
        for col in range(columns):
            ax.text(col, row, _label(result.top_texts[row][col][0], 8), ha="center", va="center", fontsize=5.5,
                    color="white" if probs[row, col] > 0.6 else "black")
    ax.set_xticks(range(columns), [_label(result.tokens[p], 10) for p in result.positions], rotation=90, fontsize=7)
    ax.set_yticks(range(n_rows), ["emb"] + [str(i) for i in range(1, n_rows)], fontsize=6)
    ax.set_xlabel("input token (each cell: the next token predicted after it)")
    ax.set_ylabel("layer")
    ax.set_title("logit lens: top next token at each layer (colour = its probability)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_word_map(words: list[str], vectors: torch.Tensor, path: str | Path, title: str) -> Path:
    from llmkit.inspect.embeddings import pca_2d

    plt = _pyplot()
    points = pca_2d(vectors).numpy()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    ax.scatter(points[:, 0], points[:, 1], s=14)
    for (x, y), word in zip(points, words):
        ax.annotate(word, (x, y), fontsize=9, xytext=(3, 3), textcoords="offset points")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    fig.tight_layout()
    return _save(fig, path)


def plot_sentences(ranked, path: str | Path) -> Path:
    """Each sentence's total log-probability, and its per-token log-probabilities, best sentence first."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 1.2 + 0.5 * len(ranked)), gridspec_kw={"width_ratios": [1, 2]})
    names = [_label(r.text, 40) for r in ranked]
    left.barh(range(len(ranked)), [r.total_logprob for r in ranked], color="tab:blue")
    left.set_yticks(range(len(ranked)), names, fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("total log-probability (nats)")
    for i, r in enumerate(ranked):
        right.plot(range(len(r.tokens)), [t.logprob for t in r.tokens], marker="o", label=names[i])
    right.set_xlabel("token")
    right.set_ylabel("log p(token | before)")
    right.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)
