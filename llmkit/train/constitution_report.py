"""The figures and the readable report of a `llmkit constitution` run: how often a revision changed the
answer (and by how much), how often the judge's two orders agreed, and examples to read — a 135M model's
critiques are best judged by looking at them."""

from __future__ import annotations

import difflib
from collections import Counter

EXAMPLES = 3
SHOWN_CHARS = 700  # an example's answer, critique or revision is cut here in report.md (critiques.jsonl has all)


def similarity(a: str, b: str) -> float:
    """Character-level similarity of two answers, 0..1 (difflib's ratio): 1 = unchanged."""
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 4) if values else 0.0


def revision_summary(traces: list[dict], rounds: int) -> dict:
    kept = [t for t in traces if t["final"] is not None]
    per_round = []
    for r in range(rounds):
        steps = [t["rounds"][r] for t in traces if len(t["rounds"]) > r]
        per_round.append({"round": r + 1, "revised": len(steps),
                          "changed_rate": _mean([float(s["changed"]) for s in steps]),
                          "mean_similarity": _mean([s["similarity"] for s in steps]),
                          # a weak model often answers the revision request by repeating its critique
                          "revision_like_critique": _mean([similarity(s["critique"], s["revision"]) for s in steps]),
                          "empty_revisions": sum(not s["revision"] for s in steps)})
    return {
        "prompts": len(traces), "kept": len(kept), "dropped": len(traces) - len(kept), "rounds": rounds,
        "per_round": per_round,
        # the final answer differs from the first one: what SFT on the revisions can teach at all
        "final_changed_rate": _mean([float(t["final"].strip() != t["initial"].strip()) for t in kept]),
        "final_similarity": _mean([similarity(t["initial"], t["final"]) for t in kept]),
        "initial_chars": _mean([len(t["initial"]) for t in kept]),
        "final_chars": _mean([len(t["final"]) for t in kept]),
        "principles": dict(sorted(Counter(s["principle"] for t in traces for s in t["rounds"]).items())),
    }


def label_summary(rows: list[dict], pairs: int, dropped: int = 0) -> dict:
    compared = [r for r in rows if r["verdict"] != "identical"]
    # the orders agree when the same answer is preferred in both positions (whatever rule kept the pairs)
    agree = sum((r["p_a_first"] > 0.5 and r["p_a_second"] > 0.5) or (r["p_a_first"] < 0.5 and r["p_a_second"] < 0.5)
                for r in compared)
    # how often the judge picked whichever answer was shown first (0.5 = no position bias)
    first = [r["p_a_first"] > 0.5 for r in compared] + [r["p_a_second"] < 0.5 for r in compared]
    return {
        "prompts": len(rows), "dropped": dropped, "pairs": pairs,
        "identical": len(rows) - len(compared), "inconsistent": len(compared) - agree,
        "undecided": sum(r["verdict"] not in ("a", "b") for r in compared),
        "order_agreement": round(agree / len(compared), 4) if compared else 0.0,
        "first_position_preferred": _mean([float(x) for x in first]),
        "principles": dict(sorted(Counter(r["principle"] for r in rows).items())),
    }


def _cut(text: str) -> str:
    text = text.strip()
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + " [...]"


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in (_cut(text) or "(empty)").splitlines())


def _request(prompt: list[dict]) -> str:
    return prompt[-1]["content"] if prompt else ""


def revision_report(traces: list[dict], summary: dict) -> str:
    lines = ["# Constitutional AI: critiques and revisions (SL-CAI)", "",
             f"{summary['prompts']} prompts, {summary['rounds']} round(s); {summary['kept']} revised answers written "
             f"to sft.jsonl ({summary['dropped']} dropped: too long for the context). Principles: "
             f"{summary['settings']['principles']}.", "",
             "| round | revised | answer changed | similarity to the answer before | similarity to the critique | "
             "empty revisions |", "| --- | --- | --- | --- | --- | --- |"]
    for r in summary["per_round"]:
        lines.append(f"| {r['round']} | {r['revised']} | {r['changed_rate']:.0%} | {r['mean_similarity']:.2f} | "
                     f"{r['revision_like_critique']:.2f} | {r['empty_revisions']} |")
    lines += ["", f"Final answer differs from the first: {summary['final_changed_rate']:.0%} of prompts; character "
              f"similarity first -> final {summary['final_similarity']:.2f}; mean length {summary['initial_chars']:.0f} "
              f"-> {summary['final_chars']:.0f} characters.", "", "## Examples", ""]
    for i, t in enumerate([t for t in traces if t["final"] is not None][:EXAMPLES], 1):
        lines += [f"### {i}. {_cut(_request(t['prompt']))[:200]}", "", "**Answer**", "", _quote(t["initial"]), ""]
        for r, step in enumerate(t["rounds"], 1):
            lines += [f"**Round {r} — principle `{step['principle']}`: critique**", "", _quote(step["critique"]), "",
                      f"**Revision** ({'changed' if step['changed'] else 'unchanged'}, similarity "
                      f"{step['similarity']:.2f})", "", _quote(step["revision"]), ""]
    return "\n".join(lines) + "\n"


def label_report(rows: list[dict], summary: dict) -> str:
    settings = summary.get("settings", {})
    if settings.get("rule", "both-orders") == "both-orders":
        rule = "A pair is kept only when both orders prefer the same answer."
    else:
        rule = (f"A pair is kept when the judge's probability for one answer, averaged over its two positions, is "
                f"beyond 0.5 by more than {settings.get('margin', 0.0)} (rule \"averaged\").")
    lines = ["# Constitutional AI: preference labels by principle (RL-CAI)", "",
             f"{summary['prompts']} prompts ({summary['dropped']} dropped: too long for the context); two sampled "
             f"answers each, judged in both orders by a principle drawn per prompt. {rule}", "",
             "| pairs kept | identical answers | orders disagree | two-order agreement | first position preferred |",
             "| --- | --- | --- | --- | --- |",
             f"| {summary['pairs']} | {summary['identical']} | {summary['inconsistent']} | "
             f"{summary['order_agreement']:.0%} | {summary['first_position_preferred']:.0%} |", "", "## Examples", ""]
    shown = [r for r in rows if r["verdict"] in ("a", "b")][:EXAMPLES - 1] + \
        [r for r in rows if r["verdict"] in ("inconsistent", "undecided")][:1]
    for i, r in enumerate(shown, 1):
        lines += [f"### {i}. {_cut(_request(r['prompt']))[:200]}", "",
                  f"Principle `{r['principle']}`; P(A preferred) shown first {r['p_a_first']:.2f}, shown second "
                  f"{r['p_a_second']:.2f}: verdict **{r['verdict']}**.", "", "**A**", "", _quote(r["a"]), "",
                  "**B**", "", _quote(r["b"]), ""]
    return "\n".join(lines) + "\n"
