"""The command-line side of `llmkit eval`: benchmark tasks, bits per byte, comparisons of two runs, word
tests. `llmkit/cli.py` calls `add_eval_verb` once; everything heavy is imported when the command runs, so
`llmkit --help` stays fast."""

from __future__ import annotations

import sys
from pathlib import Path

from llmkit.arg_types import COUNT, int_in
from llmkit.errors import DataError, LLMKitError
from llmkit.inspect import commands as inspect_commands


def add_eval_verb(verbs) -> None:
    p = verbs.add_parser("eval", help="benchmark tasks (multiple choice, schema, language modelling; CORE) or "
                         "bits per byte of text files; compare two runs")
    p.add_argument("--model", default=None, help="checkpoint directory, a named model (smollm2), or with --tasks "
                   "an OpenAI-compatible server's URL (http://HOST:PORT/v1)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--text", nargs="+", default=None, help="bits per byte: text files or directories of .txt files")
    p.add_argument("--seq-len", type=int, default=None, help="--text window length (default: context, at most 1024)")
    p.add_argument("--tasks", default=None, help="core | NAME,... | FILE.jsonl; generative: gsm8k_zero, gsm8k, "
                   "gsm8k_direct, gsm8k_cot, humaneval (EXECUTES model-written code in a sandbox; see the README). "
                   "Names are looked up in --task-dir, $LLMKIT_EVAL_DATA, ../shared/data/eval, then the cache "
                   "that --fetch fills")
    p.add_argument("--chat", action="store_true", help="render every prompt with the model's chat template (the "
                   "question as the user's turn, the answer as the assistant's)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="generative tasks: tokens to generate "
                   "(default: 256 for GSM8K, 512 for HumanEval)")
    p.add_argument("--task-dir", default=None, help="folder of NAME.jsonl task files (with --fetch: where to write)")
    p.add_argument("--shots", type=int, default=None, help="few-shot examples (default: a CORE task's published "
                   "number, else 0)")
    p.add_argument("--limit", type=int, default=None, help="the first N examples of each task (quick; not a "
                   "random sample: files are often ordered)")
    p.add_argument("--sample", type=int, default=None, help="N examples of each task drawn at random (seeded by "
                   "--sample-seed and the task's name: every model gets the same ones); a CORE score from them "
                   "comes with a 95%% interval")
    p.add_argument("--sample-seed", type=int, default=0, help="--sample's seed")
    p.add_argument("--out", default=None, help="run directory: results.md, results.json, examples/TASK.jsonl "
                   "(default: eval-runs/MODEL-TIME)")
    p.add_argument("--no-bos", action="store_true", help="do not start sequences with the BOS token")
    p.add_argument("--batch-tokens", type=int_in(COUNT), default=None, help="tokens per forward (default: 4096 CPU, 32768 GPU)")
    p.add_argument("--compile", action="store_true", help="generative tasks: torch.compile the engine's decode "
                   "step (about 2x the batched decode speed on a CPU after a few minutes of compiling; BENCHMARKS.md)")
    p.add_argument("--compare", nargs=2, default=None, metavar=("RUN_A", "RUN_B"),
                   help="paired differences of two run directories with McNemar p-values")
    p.add_argument("--metric", default="acc", help="--compare: acc | acc_norm | acc_per_token | exact_match_strict "
                   "| exact_match_flexible | exact_match_numeric | pass@1")
    p.add_argument("--fetch", action="store_true", help="download the CORE task files (or those named by --tasks, "
                   "gsm8k and humaneval too) into --task-dir or the llmkit cache")
    inspect_commands.add_word_eval_args(p)
    p.set_defaults(handler=cmd_eval)


def interrupted_run(out: Path, model: str) -> tuple[dict, dict] | None:
    """The run an interrupted `llmkit eval` left in `out` (its finished tasks), to resume; None if there is
    none (a complete run is evaluated again: its model may have changed since)."""
    from llmkit.eval.report import load_run

    if not (out / "results.json").is_file():
        return None
    try:
        summary, examples = load_run(out)
    except DataError as e:
        print(f"not resuming {out}: {e}", file=sys.stderr)
        return None
    if summary.get("complete", True):
        return None
    if summary.get("model") != model:
        raise LLMKitError(f"{out} holds an interrupted evaluation of {summary.get('model')!r}, not {model!r}; "
                          "choose another --out, or resume it with that --model")
    print(f"resuming {out}: {', '.join(summary['tasks']) or 'no task'} finished before", file=sys.stderr)
    return summary, examples


def cmd_eval(args) -> None:
    if args.analogies or args.similarity:
        from llmkit.inspect.commands import cmd_eval_words

        return cmd_eval_words(args)
    if args.compare:
        from llmkit.eval import compare_runs, format_comparison

        print(format_comparison(compare_runs(*args.compare, metric=args.metric), *args.compare))
        return
    if args.fetch:
        from llmkit.eval import fetch_tasks

        names = None if args.tasks in (None, "core") else [t.strip() for t in args.tasks.split(",") if t.strip()]
        written = fetch_tasks(args.task_dir, names)
        print(f"{len(written)} task file(s): {', '.join(sorted({str(p.parent) for p in written}))}")
        return
    if not args.model or (args.text is None) == (args.tasks is None):
        raise LLMKitError("eval: give --model with either --tasks (benchmark tasks) or --text (bits per byte); "
                          "or --compare RUN_A RUN_B; or --fetch")
    if args.model.startswith(("http://", "https://")) and args.text is not None:
        raise LLMKitError(f"--model {args.model}: bits per byte (--text) needs the checkpoint itself; "
                          "--tasks can use a server URL")
    import llmkit

    if args.tasks is not None:
        cmd_eval_tasks(args)
        return
    from llmkit.eval.bpb import evaluate_texts

    llm = llmkit.load(args.model, device=args.device, dtype=args.dtype)
    files = [p for item in args.text for p in (sorted(Path(item).glob("*.txt")) if Path(item).is_dir() else [Path(item)])]
    if not files:
        raise DataError(f"--text {' '.join(args.text)}: no .txt files there; pass text files or folders holding them")
    result = evaluate_texts(llm.model, llm.tokenizer, files, llm.device, seq_len=args.seq_len)
    print(f"{len(files)} file(s), {result.tokens:,} tokens, {int(result.bytes):,} bytes: "
          f"bits per byte {result.bpb:.4f}, perplexity {result.perplexity:.2f} (loss {result.loss:.4f} nats/token)")


def cmd_eval_tasks(args) -> None:
    import os
    import re
    import time

    import llmkit
    from llmkit.atomic import make_output_dir
    from llmkit.eval import evaluate_tasks, evaluate_with, format_table, parse_task_list, write_run
    from llmkit.device import parse_dtype, resolve_device
    from llmkit.eval.remote import RemoteBackend, is_url

    specs = parse_task_list(args.tasks, args.task_dir, shots=args.shots, max_new_tokens=args.max_new_tokens)
    for flag, value in (("--limit", args.limit), ("--sample", args.sample)):
        if value is not None and value < 1:
            raise LLMKitError(f"{flag} {value}: give a number of examples >= 1")
    if args.limit is not None and args.sample is not None:
        raise LLMKitError(f"--limit {args.limit} with --sample {args.sample}: give one (the first N, or N at random)")
    if is_url(args.model) and args.compile:
        raise LLMKitError(f"--compile with --model {args.model}: the server runs the model; start it with "
                          "`llmkit serve --compile` instead")
    if not is_url(args.model):  # flags that fail at load time fail before the output folder is made
        resolve_device(args.device)
        parse_dtype(args.dtype)
    name = re.sub(r"[^\w.-]+", "_", args.model.split("://")[-1]) if is_url(args.model) else Path(args.model).name
    out = Path(args.out or Path("eval-runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    resume = interrupted_run(out, args.model)
    if resume is not None:  # the settings known before the model loads (backends' settings() has the rest)
        from llmkit.eval.runner import check_resumed_settings

        known = {"limit": args.limit, **({"sample": args.sample, "sample_seed": args.sample_seed}
                                        if args.sample is not None else {}), "chat": args.chat}
        if not is_url(args.model):
            known.update(add_bos=not args.no_bos and not args.chat, compile=bool(args.compile))
        check_resumed_settings(resume[0], known, only_given=True)
    # before the evaluation, not after it; a folder of other files (a model) is not written into
    make_output_dir(out, ours=lambda d: (d / "results.json").is_file(), what="an earlier evaluation run")
    finished: list[str] = []

    def save(partial: dict) -> None:  # after every task: an interruption loses the task it was in, no more
        write_run(out, {**partial, "model": args.model})
        finished[:] = list(partial["tasks"])

    try:
        if is_url(args.model):
            # a server started with --api-key wants it; OPENAI_API_KEY is where OpenAI's own clients look
            backend = RemoteBackend(args.model, chat=args.chat, api_key=os.environ.get("OPENAI_API_KEY"))
            run = evaluate_with(backend, specs, limit=args.limit, sample=args.sample, sample_seed=args.sample_seed,
                                resume=resume, on_task=save)
        else:
            llm = llmkit.load(args.model, device=args.device, dtype=args.dtype, compile=args.compile)
            run = evaluate_tasks(llm.model, llm.tokenizer, specs, limit=args.limit, sample=args.sample,
                                 sample_seed=args.sample_seed, add_bos=not args.no_bos,
                                 batch_tokens=args.batch_tokens, chat=args.chat, engine=llm.engine,
                                 resume=resume, on_task=save)
    except KeyboardInterrupt:
        # the CLI prints the interrupt's message alone, as its one line
        raise KeyboardInterrupt(f"interrupted: {len(finished)} of {len(specs)} tasks finished and are in {out}"
                                + (f"; run the same command with --out {out} to resume" if finished else "")) from None
    run["model"] = args.model
    write_run(out, run)
    print(format_table(run))
    print(f"\nwrote {out / 'results.md'}, {out / 'results.json'} and per-example records in {out / 'examples'}")
