"""What `llmkit judge` computes: MT-Bench grades and ratings of models, and the judge's own quality on
human-labelled preference pairs.

MT-Bench (answer files from `llmkit answer`):
  single    each model's mean 1-10 grade per turn and overall, 95% bootstrap interval, unparsable count
  pairwise  every pair of models on every shared question and turn, both orders (judge.py's tie rule),
            then Bradley-Terry ratings with bootstrap intervals (ratings.py); ties count half

Preference pairs (`--pairs hh-rlhf|FILE`): the judge compares each pair's two replies in both orders.
Which reply is shown first is a seeded coin per pair, so the human label ("first" / "second") is
balanced and Cohen's kappa (judge's combined verdict vs the human's) is informative; kappa's interval
is a bootstrap over pairs, accuracy's (the judge picks the human's reply; a tie is not a pick) a Wilson
interval. Position consistency: the share of pairs whose two orders name the same reply (or both say
tie). Length bias: how often the longer reply wins the judge's decisive verdicts, next to how often
humans chose the longer reply.
"""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

from llmkit.errors import DataError
from llmkit.eval.judge import Judge
from llmkit.eval.ratings import Game, rate_models
from llmkit.eval.stats import bootstrap_interval, cohen_kappa, wilson_interval

HH_RLHF = Path("..") / "shared" / "data" / "hh-rlhf" / "harmless-base-test-2000.jsonl.gz"
HH_HELD_OUT = 400  # the last 400 pairs: the post-training benchmark's test split (benchmarks/hh_rlhf.py)


def _mean_interval(values: list[float], seed: int) -> dict:
    if not values:
        return {"value": math.nan, "ci95": [math.nan, math.nan], "n": 0}
    low, high = bootstrap_interval(len(values), lambda idx: sum(values[i] for i in idx) / len(idx), seed=seed)
    return {"value": sum(values) / len(values), "ci95": [low, high], "n": len(values)}


def _shared_questions(answer_sets: list[list[dict]], limit: int | None) -> list:
    ids = [r["question_id"] for r in answer_sets[0]]
    for answers in answer_sets[1:]:
        present = {r["question_id"] for r in answers}
        ids = [i for i in ids if i in present]
    if not ids:
        raise DataError("the answer files share no question_id; answer the same questions (llmkit answer --questions ...)")
    first = {r["question_id"]: r for r in answer_sets[0]}
    for answers in answer_sets[1:]:
        for r in answers:
            if r["question_id"] in first and r["turns"] != first[r["question_id"]]["turns"]:
                raise DataError(f"question_id {r['question_id']!r}: the answer files of {first[r['question_id']]['model']} "
                                f"and {r['model']} hold different questions ({first[r['question_id']]['turns'][0][:60]!r} "
                                f"vs {r['turns'][0][:60]!r}); answer the same questions file with each model")
    return ids[:limit]


def single_grades(judge: Judge, prompts: dict, answer_sets: list[list[dict]], limit: int | None = None,
                  seed: int = 0) -> tuple[dict, list[dict]]:
    """({"models": per-model scores}, per-judgement records)."""
    names = [a[0]["model"] for a in answer_sets]
    if len(set(names)) != len(names):
        raise DataError(f"two answer files name the same model ({', '.join(names)}); give each a distinct \"model\" "
                        "(llmkit answer --name NAME)")
    ids = _shared_questions(answer_sets, limit)
    items, records = [], []
    for answers in answer_sets:
        by_id = {r["question_id"]: r for r in answers}
        for qid in ids:
            r = by_id[qid]
            for turn in range(1, len(r["turns"]) + 1):
                items.append({"question": r, "answers": r["answers"], "turn": turn, "model": r["model"]})
    graded = judge.grade(prompts, items)
    models = {}
    for item, g in zip(items, graded):
        records.append({"model": item["model"], "question_id": item["question"]["question_id"],
                        "category": item["question"]["category"], "turn": item["turn"], **g})
    for name in dict.fromkeys(i["model"] for i in items):
        mine = [r for r in records if r["model"] == name]
        scores = {t: [r["score"] for r in mine if r["turn"] == t and r["score"] is not None] for t in (1, 2)}
        models[name] = {"turn_1": _mean_interval(scores[1], seed), "turn_2": _mean_interval(scores[2], seed),
                        "overall": _mean_interval(scores[1] + scores[2], seed), "judged": len(mine),
                        "unparsable": sum(1 for r in mine if r["score"] is None),
                        "replies_cut": _replies_cut(mine), "prompts_truncated": sum(1 for r in mine if r["truncated"])}
    return {"mode": "single", "judge": judge.name, "questions": len(ids), "models": models}, records


def pairwise_ratings(judge: Judge, prompts: dict, answer_sets: list[list[dict]], limit: int | None = None,
                     seed: int = 0, resamples: int = 1000) -> tuple[dict, list[dict]]:
    names = [a[0]["model"] for a in answer_sets]
    if len(set(names)) != len(names):
        raise DataError(f"two answer files name the same model ({', '.join(names)}); pairwise needs distinct \"model\" "
                        "fields (llmkit answer --name NAME)")
    if len(answer_sets) < 2:
        raise DataError("--mode pairwise needs two or more answer files")
    ids = _shared_questions(answer_sets, limit)
    by_model = {a[0]["model"]: {r["question_id"]: r for r in a} for a in answer_sets}
    items = []
    for x, y in itertools.combinations(names, 2):
        for qid in ids:
            q = by_model[x][qid]
            for turn in range(1, len(q["turns"]) + 1):
                items.append({"question": q, "turn": turn, "first": q["answers"], "second": by_model[y][qid]["answers"],
                              "models": (x, y)})
    verdicts = judge.compare(prompts, items)
    records, games = [], []
    for item, v in zip(items, verdicts):
        x, y = item["models"]
        records.append({"first": x, "second": y, "question_id": item["question"]["question_id"],
                        "category": item["question"]["category"], "turn": item["turn"], **v})
        if v["winner"] is not None:
            games.append(Game(x, y, {"first": 1.0, "second": 0.0, "tie": 0.5}[v["winner"]]))
    decided = [r for r in records if r["verdict_first_as_a"] is not None and r["verdict_first_as_b"] is not None]
    flips = sum(1 for r in decided if r["winner"] == "tie" and "tie" not in (r["verdict_first_as_a"], r["verdict_first_as_b"]))
    summary = {"mode": "pairwise", "judge": judge.name, "questions": len(ids), "comparisons": len(records),
               "unparsable": len(records) - len(games), "order_flips": flips, "replies_cut": _replies_cut(records),
               "prompts_truncated": sum(1 for r in records if r.get("truncated")),
               "ratings": rate_models(games, resamples=resamples, seed=seed) if games else []}
    return summary, records


def _replies_cut(records: list[dict]) -> int:
    """Judge replies stopped by max_new_tokens (the usual reason a verdict is missing)."""
    return sum(reasons.count("length") for r in records
               for reasons in [r.get("finish_reasons") or [r.get("finish_reason")]])


# --- agreement with people ---------------------------------------------------------------------------------
def read_preference_pairs(source: str, limit: int | None = None) -> tuple[list[dict], str]:
    """[{"prompt": text, "chosen": reply, "rejected": reply}] and where they came from. `hh-rlhf`: the last
    400 pairs of ../shared/data/hh-rlhf/harmless-base-test-2000.jsonl.gz (held out from post-training)."""
    from llmkit.train.chat_data import parse_hh_transcript, read_json_records, split_implicit_prompt

    path = HH_RLHF if source == "hh-rlhf" else Path(source)
    if not path.is_file():
        raise DataError(f"{path}: no such preference file; give --pairs hh-rlhf (beside a checkout) or a JSONL(.gz) "
                        'of {"chosen", "rejected"} (HH-RLHF transcripts or a "prompt" field)')
    rows = read_json_records(path)  # gzip, UTF-8 and JSON errors named with file and line
    if source == "hh-rlhf":
        rows = rows[-HH_HELD_OUT:]
    pairs = []
    for where, row in rows[:limit] if limit else rows:
        if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row:
            raise DataError(f'{where}: expected {{"chosen", "rejected"}} JSON')
        chosen, rejected = row["chosen"], row["rejected"]
        if "prompt" in row:
            prompt = row["prompt"]
        else:
            to_messages = (lambda f, t: parse_hh_transcript(where, f, t) if isinstance(t, str) and t.startswith("\n\nHuman:") else t)
            prompt, chosen, rejected = split_implicit_prompt(where, to_messages("chosen", chosen),
                                                             to_messages("rejected", rejected))
        pairs.append({"prompt": _as_text(prompt, where, "prompt", conversation=True),
                      "chosen": _as_text(chosen, where, "chosen"), "rejected": _as_text(rejected, where, "rejected")})
    if not pairs:
        raise DataError(f"{path}: no preference pairs")
    return pairs, str(path)


def _as_text(value, where: str, field: str, conversation: bool = False) -> str:
    """A reply or a prompt as text: a string, or a list of {"role", "content"} messages."""
    if isinstance(value, str):
        return value.strip()
    if not (isinstance(value, list) and value and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and isinstance(m.get("role"), str) for m in value)):
        raise DataError(f'{where}: field {field!r} must be text or a list of {{"role", "content"}} messages')
    if conversation and len(value) > 1:
        return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in value)
    return "\n\n".join(m["content"] for m in value).strip()


def agreement_with_humans(judge: Judge, prompts: dict, pairs: list[dict], seed: int = 0) -> tuple[dict, list[dict]]:
    # two identical replies carry no preference to agree with: a judge's (right) tie on them was counted
    # a miss against the human's arbitrary pick. They are left out, and counted in the report.
    identical = sum(1 for p in pairs if p["chosen"].strip() == p["rejected"].strip())
    pairs = [p for p in pairs if p["chosen"].strip() != p["rejected"].strip()]
    if not pairs:
        raise DataError(f"all {identical} preference pairs have identical chosen and rejected replies: nothing to judge")
    coin = random.Random(seed)
    firsts, seconds, human = [], [], []
    for p in pairs:
        chosen_first = coin.random() < 0.5
        first, second = (p["chosen"], p["rejected"]) if chosen_first else (p["rejected"], p["chosen"])
        firsts.append(first)
        seconds.append(second)
        human.append("first" if chosen_first else "second")
    verdicts = judge.compare_replies(prompts, [p["prompt"] for p in pairs], firsts, seconds)
    records = []
    for p, first, second, label, v in zip(pairs, firsts, seconds, human, verdicts):
        longer = None if len(first) == len(second) else ("first" if len(first) > len(second) else "second")
        records.append({"prompt": p["prompt"], "first": first, "second": second, "human": label, "longer": longer, **v})
    return {**agreement_summary(records, judge.name, seed), "identical_left_out": identical}, records


def agreement_summary(records: list[dict], judge_name: str, seed: int = 0) -> dict:
    parsed = [r for r in records if r["winner"] is not None]
    n = len(parsed)
    right = sum(1 for r in parsed if r["winner"] == r["human"])
    kappa = cohen_kappa([r["winner"] for r in parsed], [r["human"] for r in parsed])
    low, high = bootstrap_interval(n, lambda idx: cohen_kappa([parsed[i]["winner"] for i in idx],
                                                              [parsed[i]["human"] for i in idx]), seed=seed)
    both = [r for r in records if r["verdict_first_as_a"] is not None and r["verdict_first_as_b"] is not None]
    consistent = sum(1 for r in both if r["winner"] != "tie" or r["verdict_first_as_a"] == r["verdict_first_as_b"] == "tie")
    singles = [v for r in records for v in (r["verdict_first_as_a"], r["verdict_first_as_b"]) if v in ("A", "B")]
    decisive = [r for r in parsed if r["winner"] != "tie" and r["longer"] is not None]
    longer_wins = sum(1 for r in decisive if r["winner"] == r["longer"])
    unequal = [r for r in records if r["longer"] is not None]
    human_longer = sum(1 for r in unequal if r["human"] == r["longer"])
    # the judge asked once (first order only), as a single-order judge would be used
    once = [r for r in records if r["verdict_first_as_a"] is not None]
    once_right = sum(1 for r in once if {"A": "first", "B": "second"}.get(r["verdict_first_as_a"]) == r["human"])

    def share(k: int, total: int) -> dict:
        return {"value": k / total if total else math.nan, "ci95": list(wilson_interval(k, total)), "k": k, "n": total}

    # a probability judge: the order-averaged P(first wins) decides (label.py's rule); exactly 0.5 is a miss
    averaged = [r for r in records if r.get("p_first") is not None]
    averaged_right = sum(1 for r in averaged if r["p_first"] != 0.5 and (r["p_first"] > 0.5) == (r["human"] == "first"))
    extra = {"accuracy_order_averaged": share(averaged_right, len(averaged))} if averaged else {}

    return {"mode": "agreement", "judge": judge_name, "pairs": len(records), "unparsable": len(records) - n,
            "replies_cut": _replies_cut(records), "prompts_truncated": sum(1 for r in records if r.get("truncated")),
            "kappa": {"value": kappa, "ci95": [low, high], "n": n},
            "accuracy": share(right, n), "ties": share(sum(1 for r in parsed if r["winner"] == "tie"), n),
            "accuracy_one_order": share(once_right, len(once)),
            "position_consistency": share(consistent, len(both)),
            "first_position_picked": share(singles.count("A"), len(singles)),
            "judge_picks_longer": share(longer_wins, len(decisive)),
            "humans_pick_longer": share(human_longer, len(unequal)), **extra}
