"""`llmkit answer` and `llmkit judge`: argument parsing, the commands, and the Markdown reports.

    llmkit answer --model smollm2 --questions mt_bench --out smollm2.jsonl [--limit N]
    llmkit judge --judge smollm2 --answers a.jsonl b.jsonl --mode pairwise --out judged/
    llmkit judge --judge http://HOST:PORT/v1 --pairs hh-rlhf --limit 40 --out judged/

A judge run directory holds results.json, results.md and judgements.jsonl (one line per judgement:
the prompt or the pair, the judge's reply(ies), the parsed score or verdicts); while it runs, also
replies.partial.jsonl (every finished reply), from which the same command resumes an interrupted run.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from llmkit.arg_types import COUNT, SIGNED_SEED, int_in
from llmkit.errors import ConfigError, LLMKitError

CACHE = "replies.partial.jsonl"  # the judge's finished replies while a run is under way (judge.ReplyCache)


def add_judge_verbs(verbs, add_model_args) -> None:
    p = verbs.add_parser("answer", help="MT-Bench: a model's answers to two-turn questions (for llmkit judge)")
    add_model_args(p)
    p.add_argument("--questions", default="mt_bench", help="mt_bench (../shared/data/eval/mt_bench, or --task-dir) "
                   "or a JSONL of {question_id, category, turns: [...]}")
    p.add_argument("--task-dir", default=None, help="folder holding mt_bench/question.jsonl")
    p.add_argument("--out", required=True, help="answers JSONL (written atomically)")
    p.add_argument("--limit", type=int, default=None, help="the first N questions")
    p.add_argument("--name", default=None, help="the model's name in the file (default: --model)")
    p.add_argument("--max-new-tokens", type=int_in(COUNT), default=512)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int_in(SIGNED_SEED), default=0, help="with --temperature > 0: per-reply seeds derive from it")
    p.set_defaults(handler=cmd_answer)

    p = verbs.add_parser("judge", help="a model as judge: MT-Bench grades / pairwise Bradley-Terry ratings, or its "
                         "agreement with human preference labels")
    p.add_argument("--judge", required=True, help="checkpoint directory, named model (smollm2) or an "
                   "OpenAI-compatible URL (http://HOST:PORT/v1; $OPENAI_API_KEY is sent if set)")
    p.add_argument("--answers", nargs="+", default=None, help="answer files from `llmkit answer`")
    p.add_argument("--pairs", default=None, help="hh-rlhf (the 400 held-out pairs) or a JSONL(.gz) of "
                   "{chosen, rejected}: measure the judge against the human labels")
    p.add_argument("--mode", choices=("single", "pairwise"), default="single", help="--answers: grade 1-10, or "
                   "compare every pair of models (both orders) and fit Bradley-Terry ratings")
    p.add_argument("--judge-prompts", default=None, help="MT-Bench's judge_prompts.jsonl (default: beside "
                   "the questions, ../shared/data/eval/mt_bench or --task-dir)")
    p.add_argument("--task-dir", default=None, help="folder holding mt_bench/judge_prompts.jsonl")
    p.add_argument("--out", required=True, help="run directory: results.md, results.json, judgements.jsonl")
    p.add_argument("--limit", type=int, default=None, help="the first N questions / pairs")
    p.add_argument("--max-new-tokens", type=int_in(COUNT), default=512, help="tokens the judge may write")
    p.add_argument("--verdict", choices=("text", "probability"), default="text", help="text: the judge writes its "
                   "reasoning and a [[mark]] (MT-Bench); probability: its reply is started with '[[' and the verdict "
                   "read from its next-token probabilities (for small local judges that never write a mark)")
    p.add_argument("--seed", type=int_in(SIGNED_SEED), default=0, help="bootstrap resamples and the pairs' presentation order")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.set_defaults(handler=cmd_judge)


def cmd_answer(args) -> None:
    import llmkit
    from llmkit.atomic import writable_target
    from llmkit.eval.answers import generate_answers, questions_path, read_questions, write_answers
    from llmkit.eval.judge import ReplyCache, model_identity, model_settings

    _check_limit(args.limit)
    source = questions_path(args.questions, args.task_dir)
    if Path(args.out).resolve() == Path(source).resolve():
        raise ConfigError(f"--out {args.out} is the --questions file; writing the answers there would replace the "
                          "questions: choose another --out")
    questions = read_questions(source)[:args.limit]
    writable_target(args.out)  # before the generation, not after it
    llm = llmkit.load(args.model, device=args.device, dtype=args.dtype)
    if not llm.tokenizer.chat_template:
        raise LLMKitError(f"--model {args.model}: its tokenizer has no chat template; MT-Bench answers need a chat "
                          "model")
    # each reply is kept beside --out as its chunk finishes: the same command resumes an interrupted run
    cache = ReplyCache.beside(args.out)
    if cache.entries:
        print(f"resuming: {len(cache.entries)} replies kept from an interrupted run of {args.out}")
    records = generate_answers(llm, questions, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                               seed=args.seed, model_name=args.name or str(args.model), cache=cache,
                               identity=model_identity(str(args.model), model_settings(llm)))
    write_answers(args.out, records)
    cache.remove()
    print(f"wrote {len(records)} answers ({sum(len(r['answers']) for r in records)} turns) to {args.out}")


def cmd_judge(args) -> None:
    from llmkit.atomic import atomic_write_text, make_output_dir
    from llmkit.eval.answers import mt_bench_dir, read_answers
    from llmkit.eval.judge import Judge, ReplyCache, read_judge_prompts
    from llmkit.eval import judge_runs

    if (args.answers is None) == (args.pairs is None):
        raise ConfigError("judge: give --answers A.jsonl [B.jsonl ...] (MT-Bench) or --pairs hh-rlhf|FILE (agreement "
                          "with human labels), not both")
    _check_limit(args.limit)
    prompts_file = Path(args.judge_prompts) if args.judge_prompts else mt_bench_dir(args.task_dir) / "judge_prompts.jsonl"
    prompts = read_judge_prompts(prompts_file)
    answer_sets = [read_answers(a) for a in args.answers] if args.answers else None
    pairs = judge_runs.read_preference_pairs(args.pairs, args.limit) if args.pairs else None
    out = make_output_dir(args.out, ours=lambda d: (d / "judgements.jsonl").is_file() or (d / CACHE).is_file(),
                          what="an earlier judge run")
    judge = Judge.load(args.judge, device=args.device, dtype=args.dtype, max_new_tokens=args.max_new_tokens,
                       api_key=os.environ.get("OPENAI_API_KEY"), verdict=args.verdict)
    # every finished judge reply is kept in --out as it comes: the same command resumes a run cut short
    judge.cache = ReplyCache(out / CACHE)
    if judge.cache.entries:
        print(f"resuming: {len(judge.cache.entries)} judge replies kept from an interrupted run in {out}")
    if pairs is not None:
        summary, records = judge_runs.agreement_with_humans(judge, prompts, pairs[0], seed=args.seed)
        summary["source"] = pairs[1]
    elif args.mode == "single":
        summary, records = judge_runs.single_grades(judge, prompts, answer_sets, args.limit, seed=args.seed)
    else:
        summary, records = judge_runs.pairwise_ratings(judge, prompts, answer_sets, args.limit, seed=args.seed)
    summary["max_new_tokens"], summary["verdict"] = args.max_new_tokens, args.verdict
    atomic_write_text(out / "judgements.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    table = format_judge_report(summary)
    atomic_write_text(out / "results.md", table + "\n")
    judge.cache.remove()  # the run is complete: judgements.jsonl holds every reply
    print(table)
    print(f"\nwrote {out / 'results.md'}, {out / 'results.json'} and {out / 'judgements.jsonl'}")


def _check_limit(limit) -> None:
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit {limit}: give a number >= 1")


def _num(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _ci(m: dict, digits: int = 2, scale: float = 1.0) -> str:
    low, high = m["ci95"]
    value = m["value"]
    if value is None or math.isnan(value):
        return "n/a"
    return f"{_num(scale * value, digits)} ({_num(scale * low, digits)}-{_num(scale * high, digits)})"


def format_judge_report(summary: dict) -> str:
    lines = [f"judge: {summary['judge']}"]
    if summary["mode"] == "single":
        lines += [f"MT-Bench single-answer grading (1-10), {summary['questions']} questions; 95% bootstrap intervals",
                  "", "| model | turn 1 | turn 2 | overall | judged | unparsable | replies cut | prompts truncated |",
                  "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
        for name, m in summary["models"].items():
            lines.append(f"| {name} | {_ci(m['turn_1'])} | {_ci(m['turn_2'])} | {_ci(m['overall'])} | {m['judged']} | "
                         f"{m['unparsable']} | {m['replies_cut']} | {m['prompts_truncated']} |")
    elif summary["mode"] == "pairwise":
        lines += [f"MT-Bench pairwise, {summary['questions']} questions, {summary['comparisons']} comparisons asked in "
                  f"both orders: {summary['order_flips']} verdicts flipped with the order (counted as ties), "
                  f"{summary['unparsable']} unparsable (left out); {summary['replies_cut']} judge replies cut at "
                  "--max-new-tokens", "",
                  "| model | Bradley-Terry rating (95% CI) | games | wins | ties |", "| --- | --- | ---: | ---: | ---: |"]
        for r in summary["ratings"]:
            lines.append(f"| {r['model']} | {r['rating']:.0f} ({_num(r['ci95'][0], 0)}-{_num(r['ci95'][1], 0)}) | "
                         f"{r['games']} | {r['wins']} | {r['ties']} |")
    else:
        lines += [f"agreement with human preference labels: {summary['pairs']} pairs from {summary.get('source', '?')}, "
                  f"{summary['unparsable']} unparsable (left out); {summary['replies_cut']} judge replies cut at --max-new-tokens, "
                  f"{summary['prompts_truncated']} prompts cut to fit the judge's context"
                  + (f"; {summary['identical_left_out']} pairs with identical replies left out"
                     if summary.get("identical_left_out") else ""), "", "| measure | value (95% CI) | n |",
                  "| --- | --- | ---: |"]
        rows = [("Cohen's kappa (judge vs human; bootstrap CI)", summary["kappa"], 3, 1.0),
                ("accuracy: picks the human's reply (both orders; tie = miss) %", summary["accuracy"], 1, 100.0),
                ("ties (order flips included) %", summary["ties"], 1, 100.0),
                ("accuracy asked once (first order only) %", summary["accuracy_one_order"], 1, 100.0),
                ("position consistency (same verdict in both orders) %", summary["position_consistency"], 1, 100.0),
                ("first position picked (decisive single verdicts) %", summary["first_position_picked"], 1, 100.0),
                ("judge picks the longer reply (decisive verdicts) %", summary["judge_picks_longer"], 1, 100.0),
                ("humans picked the longer reply %", summary["humans_pick_longer"], 1, 100.0)]
        if "accuracy_order_averaged" in summary:
            rows.insert(2, ("accuracy by P(first) averaged over both orders (--verdict probability) %",
                            summary["accuracy_order_averaged"], 1, 100.0))
        for label, m, digits, scale in rows:
            lines.append(f"| {label} | {_ci(m, digits, scale)} | {m['n']} |")
    return "\n".join(lines)
