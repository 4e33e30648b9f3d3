"""Run statistics and the report: documents and bytes in and out of every stage, removal reasons with
examples, duplicate clusters, the mix, and a histogram PNG of quality scores.

Workers fill a `RunStats` per task and return it as a plain dict; the driver merges them in task
order, so the examples shown are the first ones in input order whatever the number of workers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llmkit.atomic import atomic_write_bytes, atomic_write_text

HIST_BINS = 50
SNIPPET_CHARS = 240


def _stage_entry() -> dict:
    return {"docs_in": 0, "docs_out": 0, "bytes_in": 0, "bytes_out": 0, "modified": 0, "seconds": 0.0,
            "removed": {}, "examples": {}, "counts": {}}


class RunStats:
    def __init__(self, stage_names: list[str], examples: int = 3):
        self.examples = examples
        self.data = {"read": {"documents": 0, "bytes": 0, "bad_records": 0},
                     "stages": {name: _stage_entry() for name in stage_names},
                     "quality_hist": [0] * HIST_BINS,
                     "sources": {}}

    def source(self, name: str) -> dict:
        return self.data["sources"].setdefault(name, {"docs_in": 0, "bytes_in": 0, "docs_kept": 0, "bytes_kept": 0,
                                                      "docs_out": 0, "bytes_out": 0, "anneal_docs": 0,
                                                      "anneal_bytes": 0})

    def stage(self, name: str) -> dict:
        return self.data["stages"].setdefault(name, _stage_entry())

    def add_example(self, entry: dict, rule: str, example: dict) -> None:
        shown = entry["examples"].setdefault(rule, [])
        if len(shown) < self.examples:
            shown.append(example)

    def add_quality(self, score: float) -> None:
        self.data["quality_hist"][min(HIST_BINS - 1, max(0, int(score * HIST_BINS)))] += 1

    def merge(self, other: dict) -> None:
        d = self.data
        for k, v in other["read"].items():
            d["read"][k] += v
        for name, s in other["stages"].items():
            mine = self.stage(name)
            for k in ("docs_in", "docs_out", "bytes_in", "bytes_out", "modified", "seconds"):
                mine[k] += s[k]
            for rule, n in s["removed"].items():
                mine["removed"][rule] = mine["removed"].get(rule, 0) + n
            for k, n in s["counts"].items():
                mine["counts"][k] = mine["counts"].get(k, 0) + n
            for rule, examples in s["examples"].items():
                for ex in examples:
                    self.add_example(mine, rule, ex)
        d["quality_hist"] = [a + b for a, b in zip(d["quality_hist"], other["quality_hist"])]
        for name, s in other["sources"].items():
            mine = self.source(name)
            for k, v in s.items():
                mine[k] += v


def is_clean_report(path: Path) -> bool:
    """Is `path` a report.json that `llmkit data clean` wrote? The name alone proves nothing: a folder of
    the user's with its own report/report.json must not be taken for an output a run may replace."""
    try:
        summary = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(summary, dict) and isinstance(summary.get("stages"), list)
            and all(isinstance(summary.get(k), dict) for k in ("read", "output", "mixing")))


def snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS] + "…"


def write_report(report_dir: Path, summary: dict) -> None:
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    hist = summary.get("quality", {}).get("histogram", [])
    if sum(hist):
        atomic_write_bytes(report_dir / "quality_hist.png", quality_histogram_png(hist))
        summary["quality"]["png"] = "quality_hist.png"
    atomic_write_text(report_dir / "report.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(report_dir / "mixture.json", json.dumps(summary["mixing"], indent=2) + "\n")
    atomic_write_text(report_dir / "report.md", format_markdown(summary))


def quality_histogram_png(hist: list[int]) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.linspace(0.0, 1.0, len(hist) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.bar(edges[:-1], hist, width=edges[1] - edges[0], align="edge", color="#4a7ab5", edgecolor="white")
    ax.set_xlabel("quality-model score")
    ax.set_ylabel("documents")
    ax.set_title(f"Quality scores of {sum(hist):,} documents")
    ax.set_xlim(0, 1)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _mb(n: int) -> str:
    return f"{n / 1e6:,.2f}"


def stage_table(summary: dict) -> list[list[str]]:
    rows = [["stage", "docs in", "docs out", "removed", "MB in", "MB out", "s (CPU)"]]
    for s in summary["stages"]:
        removed = s["docs_in"] - s["docs_out"]
        pct = f"{removed} ({100 * removed / s['docs_in']:.1f}%)" if s["docs_in"] else "0"
        rows.append([s["name"], f"{s['docs_in']:,}", f"{s['docs_out']:,}", pct, _mb(s["bytes_in"]),
                     _mb(s["bytes_out"]), f"{s['seconds']:.1f}"])
    return rows


def format_table(summary: dict) -> str:
    """The per-stage table the CLI prints."""
    rows = stage_table(summary)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    o = summary["output"]
    out.append(f"read {summary['read']['documents']:,} documents ({_mb(summary['read']['bytes'])} MB); wrote "
               f"{o['train_docs']:,} to train/ ({_mb(o['train_bytes'])} MB) and {o['anneal_docs']:,} to anneal/ "
               f"in {summary['seconds']:.1f} s with {summary['workers']} worker(s) ({summary['engine']})")
    return "\n".join(out)


def format_markdown(summary: dict) -> str:
    rows = stage_table(summary)
    md = ["# Data cleaning report", "", f"Config: `{summary['config']}`; {summary['workers']} worker(s), "
          f"engine {summary['engine']}, {summary['seconds']:.1f} s.", "",
          f"Read {summary['read']['documents']:,} documents, {_mb(summary['read']['bytes'])} MB"
          f" ({summary['read']['bad_records']} malformed records skipped).", "", "## Stages", ""]
    md.append("| " + " | ".join(rows[0]) + " |")
    md.append("|" + "---|" * len(rows[0]))
    md += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    md += ["", "## Removal reasons", ""]
    for s in summary["stages"]:
        for rule, n in sorted(s["removed"].items(), key=lambda kv: -kv[1]):
            md.append(f"- **{rule}**: {n:,}")
            for ex in s["examples"].get(rule, []):
                detail = f" ({ex['detail']})" if ex.get("detail") else ""
                md.append(f"  - `{ex['id']}`{detail}: {ex['text']}")
        if s["counts"]:
            md.append(f"- {s['name']} counts: " + ", ".join(f"{k} {v:,}" for k, v in sorted(s["counts"].items())))
    d = summary.get("dedup")
    if d:
        md += ["", "## Duplicate clusters", "",
               f"{d['exact_clusters']} exact and {d['near_clusters']} near-duplicate clusters; "
               f"{d['dropped']} documents dropped (all clusters in `dedup_clusters.jsonl`).", ""]
        for c in d["largest"]:
            md.append(f"- {c['kind']}, {len(c['members'])} documents, kept `{c['kept_id']}`: "
                      + ", ".join(f"`{m}`" for m in c["member_ids"][:6]) + (" …" if len(c["member_ids"]) > 6 else ""))
    q = summary.get("quality", {})
    if q.get("png"):
        md += ["", "## Quality scores", "", f"![quality scores]({q['png']})"]
    md += ["", "## Mix", "", "| source | weight | docs kept | docs written | MB written | share | anneal docs |",
           "|---|---|---|---|---|---|---|"]
    for name, s in summary["mixing"]["sources"].items():
        md.append(f"| {name} | {s['weight']} | {s['docs_kept']:,} | {s['docs_out']:,} | {_mb(s['bytes_out'])} | "
                  f"{100 * s['share_of_bytes']:.1f}% | {s['anneal_docs']:,} |")
    return "\n".join(md) + "\n"
