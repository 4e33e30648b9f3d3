"""The command-line side of `llmkit eval`: benchmark tasks, bits per byte, comparisons of two runs, word
tests. `llmkit/cli.py` calls `add_eval_verb` once; everything heavy is imported when the command runs, so
`llmkit --help` stays fast."""

from __future__ import annotations

import json
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
    p.add_argument("--text", nargs="+", default=None, help="bits per byte: text files or directories of .txt files "
                   "(each file one document)")
    p.add_argument("--seq-len", type=int, default=None, help="--text window length (default: context, at most 1024)")
    p.add_argument("--tasks", default=None, help="core | NAME,... | FILE.jsonl; generative: gsm8k_zero, gsm8k, "
                   "gsm8k_direct, gsm8k_cot, humaneval (EXECUTES model-written code in a sandbox; see the README). "
                   "Names are looked up in --task-dir, then $LLMKIT_EVAL_DATA, then ../shared/data/eval, then "
                   "the cache that --fetch fills: the first place holding the file wins")
    p.add_argument("--chat", action="store_true", help="render every prompt with the model's chat template (the "
                   "question as the user's turn, the answer as the assistant's)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="generative tasks: tokens to generate "
                   "(default: 256 for GSM8K, 512 for HumanEval)")
    p.add_argument("--task-dir", default=None, help="folder of NAME.jsonl task files (or core/NAME.jsonl; gsm8k/ and "
                   "humaneval/ for those tasks), searched first; tasks not there are looked up in the other places "
                   "(with --fetch: where to write)")
    p.add_argument("--shots", type=int, default=None, help="few-shot examples (default: a CORE task's published "
                   "number, else 0)")
    p.add_argument("--limit", type=int, default=None, help="the first N examples of each task (quick; not a "
                   "random sample: files are often ordered); with --text, the first N files")
    p.add_argument("--sample", type=int, default=None, help="N examples of each task drawn at random (seeded by "
                   "--sample-seed and the task's name: every model gets the same ones); a CORE score from them "
                   "comes with a 95%% interval); with --text, N files at random")
    p.add_argument("--sample-seed", type=int, default=None, help="--sample's seed (default 0)")
    p.add_argument("--out", default=None, help="run directory: results.md, results.json, examples/TASK.jsonl "
                   "(default: eval-runs/MODEL-TIME); with --text, results.md and results.json of the bits per byte "
                   "(written only when --out is given)")
    p.add_argument("--no-bos", action="store_true", help="do not start sequences (--text: files) with the BOS token")
    p.add_argument("--batch-tokens", type=int_in(COUNT), default=None, help="tokens per forward (default: 4096 CPU, 32768 GPU)")
    p.add_argument("--compile", action="store_true", help="generative tasks: torch.compile the engine's decode "
                   "step (about 2x the batched decode speed on a CPU after a few minutes of compiling; BENCHMARKS.md)")
    p.add_argument("--compare", nargs=2, default=None, metavar=("RUN_A", "RUN_B"),
                   help="paired differences of two run directories with McNemar p-values")
    p.add_argument("--metric", default=None, help="--compare: acc | acc_norm | acc_per_token | exact_match_strict "
                   "| exact_match_flexible | exact_match_numeric | pass@1 (default acc)")
    p.add_argument("--fetch", action="store_true", help="download the CORE task files (or those named by --tasks, "
                   "gsm8k and humaneval too) into --task-dir or the llmkit cache")
    inspect_commands.add_word_eval_args(p)
    p.set_defaults(handler=cmd_eval)


def interrupted_run(out: Path, model: str) -> tuple[dict, dict] | None:
    """The run an interrupted `llmkit eval` left in `out` (its finished tasks), to resume; None if there is
    none (a complete run is evaluated again: its model may have changed since)."""
    from llmkit.eval.report import load_run

    if not (out / "results.json").is_file() or _is_bpb_run(out):  # a bits-per-byte run has no tasks to resume
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


# What each option is for, said when it is given where it does nothing: `llmkit eval` refuses an option the
# way it runs does not read, as a user who passed it expects it to act (--limit on --text, --shots on --text).
PURPOSE = {
    "model": "the model to evaluate", "device": "where the model runs", "dtype": "the model's number format",
    "text": "the text files whose bits per byte are measured",
    "seq_len": "the window --text scores in (tasks cut a context that is too long to the model's)",
    "tasks": "the benchmark tasks to run", "chat": "renders task prompts with the model's chat template",
    "max_new_tokens": "the generative tasks' token budget", "task_dir": "where --tasks names are looked up",
    "shots": "few-shot examples put before each task question", "limit": "the first N task examples (or files)",
    "sample": "N task examples (or files) at random", "sample_seed": "--sample's seed",
    "out": "where a --tasks or --text run writes its results", "no_bos": "starts each sequence without BOS",
    "batch_tokens": "the tokens per forward of task scoring (--text scores one --seq-len window per forward)",
    "compile": "compiles the engine's decode step, which only generative tasks run",
    "compare": "pairs two runs", "metric": "the metric --compare pairs", "fetch": "downloads task files",
    "analogies": "a word-analogy test", "similarity": "word-similarity tests",
}
MODEL = {"model", "device", "dtype"}
USES = {  # the options each way of running reads (--embeddings and --template have defaults: not checked)
    "--analogies/--similarity": MODEL | {"analogies", "similarity"},
    "--compare": {"compare", "metric"},
    "--fetch": {"fetch", "tasks", "task_dir"},
    "--text (bits per byte)": MODEL | {"text", "seq_len", "limit", "sample", "sample_seed", "out", "no_bos"},
    "--tasks": MODEL | {"tasks", "chat", "max_new_tokens", "task_dir", "shots", "limit", "sample", "sample_seed",
                        "out", "no_bos", "batch_tokens", "compile"},
}
SERVED = {"device": "the server runs the model", "dtype": "the server runs the model",
          "batch_tokens": "the server batches", "no_bos": "the server tokenizes the prompts with its own BOS rule"}


def flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def given(args, dest: str) -> bool:
    value = getattr(args, dest)
    return value is not None and value is not False


def check_options(args) -> str:
    """The way this `llmkit eval` runs (a key of USES), after refusing, one line each, any option that way
    would ignore: a user who passed it expects it to act."""
    if args.analogies or args.similarity:
        mode = "--analogies/--similarity"
    elif args.compare:
        mode = "--compare"
    elif args.fetch:
        mode = "--fetch"
    elif not args.model or (args.text is None) == (args.tasks is None):
        raise LLMKitError("eval: give --model with either --tasks (benchmark tasks) or --text (bits per byte); "
                          "or --compare RUN_A RUN_B; or --fetch")
    else:
        mode = "--text (bits per byte)" if args.text is not None else "--tasks"
    served = bool(args.model) and args.model.startswith(("http://", "https://"))
    if served and mode == "--text (bits per byte)":  # said first: the way of running is what is wrong
        raise LLMKitError(f"--model {args.model}: bits per byte (--text) needs the checkpoint itself; "
                          "--tasks can use a server URL")
    for dest in PURPOSE:
        if given(args, dest) and dest not in USES[mode]:
            raise LLMKitError(f"{flag(dest)}: {PURPOSE[dest]}; not used with {mode}: drop it")
    if args.sample_seed is not None and args.sample is None:
        raise LLMKitError(f"--sample-seed {args.sample_seed}: --sample's seed, and no --sample N is given: "
                          "add one or drop --sample-seed")
    for name, value in (("--limit", args.limit), ("--sample", args.sample)):
        if value is not None and value < 1:
            raise LLMKitError(f"{name} {value}: give a number of examples >= 1")
    if args.limit is not None and args.sample is not None:
        raise LLMKitError(f"--limit {args.limit} with --sample {args.sample}: give one (the first N, or N at random)")
    if served:
        if args.compile:
            raise LLMKitError(f"--compile with --model {args.model}: the server runs the model; start it with "
                              "`llmkit serve --compile` instead")
        for dest, why in SERVED.items():
            if given(args, dest):
                raise LLMKitError(f"{flag(dest)} with --model {args.model}: {why}; drop it (the server's settings "
                                  "apply), or evaluate the checkpoint itself")
    return mode


def cmd_eval(args) -> None:
    mode = check_options(args)
    if args.sample_seed is None:
        args.sample_seed = 0
    if mode == "--analogies/--similarity":
        from llmkit.inspect.commands import cmd_eval_words

        return cmd_eval_words(args)
    if mode == "--compare":
        from llmkit.eval import compare_runs, format_comparison

        print(format_comparison(compare_runs(*args.compare, metric=args.metric or "acc"), *args.compare))
        return
    if mode == "--fetch":
        from llmkit.eval import fetch_tasks

        names = None if args.tasks in (None, "core") else [t.strip() for t in args.tasks.split(",") if t.strip()]
        written = fetch_tasks(args.task_dir, names)
        print(f"{len(written)} task file(s): {', '.join(sorted({str(p.parent) for p in written}))}")
        return
    if mode == "--tasks":
        cmd_eval_tasks(args)
        return
    cmd_eval_text(args)


def cmd_eval_text(args) -> None:
    """Bits per byte of --text files; with --out, results.json and results.md as well."""
    import llmkit
    from llmkit.atomic import make_output_dir
    from llmkit.device import parse_dtype, resolve_device
    from llmkit.eval.bpb import evaluate_texts, text_window
    from llmkit.eval.report import BPB_KIND, bpb_record, write_bpb_run
    from llmkit.eval.runner import chosen_indices

    files = [p for item in args.text for p in (sorted(Path(item).glob("*.txt")) if Path(item).is_dir() else [Path(item)])]
    if not files:
        raise DataError(f"--text {' '.join(args.text)}: no .txt files there; pass text files or folders holding them")
    missing = next((f for f in files if not f.is_file()), None)
    if missing is not None:  # before the model loads, as every other bad flag
        raise DataError(f"{missing}: no such file; --text takes text files or folders of .txt files")
    # the documents lm-evaluation-harness's --limit counts on a perplexity task are its files here
    chosen = [files[i] for i in chosen_indices(len(files), "text", args.limit, args.sample, args.sample_seed)]
    out = Path(args.out) if args.out else None
    if out is not None:
        resolve_device(args.device)  # flags that fail at load time fail before the output folder is made
        parse_dtype(args.dtype)
        make_output_dir(out, ours=_is_bpb_run, what="an earlier bits-per-byte run")
    llm = llmkit.load(args.model, device=args.device, dtype=args.dtype)
    seq_len = text_window(llm.model, args.seq_len)
    per_file: list[dict] = []
    result = evaluate_texts(llm.model, llm.tokenizer, chosen, llm.device, seq_len=seq_len, add_bos=not args.no_bos,
                            on_file=lambda path, r: per_file.append({"path": str(path), **bpb_record(r)}))
    count = f"{len(chosen)} of {len(files)}" if len(chosen) < len(files) else f"{len(files)}"
    print(f"{count} file(s), {result.tokens:,} tokens, {int(result.bytes):,} bytes: "
          f"bits per byte {result.bpb:.4f}, perplexity {result.perplexity:.2f} (loss {result.loss:.4f} nats/token)")
    if out is not None:
        add_bos = not args.no_bos and llm.tokenizer.bos_id is not None
        settings = {"seq_len": seq_len, "add_bos": add_bos, "limit": args.limit,
                    **({"sample": args.sample, "sample_seed": args.sample_seed} if args.sample is not None else {}),
                    "device": str(llm.device), "dtype": str(llm.model.tok_emb.weight.dtype).removeprefix("torch.")}
        write_bpb_run(out, {"kind": BPB_KIND, "model": args.model, "settings": settings, "of": len(files),
                            "files": per_file, "total": bpb_record(result), "complete": True})
        print(f"wrote {out / 'results.md'} and {out / 'results.json'}")


def _is_bpb_run(directory: Path) -> bool:
    """Whether `directory` holds an earlier bits-per-byte run (which --out may replace): a task run's
    examples/ would be left beside a results.json that no longer names them."""
    from llmkit.eval.report import BPB_KIND

    try:
        return json.loads((directory / "results.json").read_text(encoding="utf-8")).get("kind") == BPB_KIND
    except (OSError, ValueError, AttributeError):
        return False


def lookup_notes(tasks: str, specs: list, task_dir: str | None) -> list[str]:
    """Where the tasks were read from, when it may not be what the user meant, one line each, printed once
    the model (or server) is reached so that a command that fails prints its error line alone:
    - per folder that tasks were read from after --task-dir or $LLMKIT_EVAL_DATA did not hold them: the
      search goes on to the other places (locations.py), and a user who meant their own copy (a misnamed
      file, gsm8k/ one level off) learns it at the start, not from results.json's paths;
    - per CORE task read from a file that is not the pinned one (its SHA-256 differs): a --task-dir copy
      replaces the stored file for that task alone, and CORE-18 is then computed over it."""
    from llmkit.eval.locations import user_roots

    notes = unpinned_notes(specs)
    named = {Path(t).resolve() for t in (t.strip() for t in tasks.split(",")) if t.endswith(".jsonl") or Path(t).is_file()}
    if all(Path(spec.path).resolve() in named for spec in specs):
        return notes  # every task a file named by its path: no folder was searched
    roots = user_roots(task_dir)
    if not roots:
        return notes
    mine = [root.resolve() for _, root in roots]
    elsewhere: dict[Path, list[str]] = {}
    for spec in specs:
        path = Path(spec.path).resolve()
        if path not in named and not any(path.is_relative_to(root) for root in mine):
            elsewhere.setdefault(Path(spec.path).parent, []).append(spec.name)
    searched = " or ".join(f"{label} {root}" for label, root in roots)
    for folder, names in elsewhere.items():
        notes.append(f"note: {', '.join(names)} not in {searched}: read from {folder}")
    return notes


def unpinned_notes(specs: list) -> list[str]:
    import hashlib

    from llmkit.eval.tasks import core_settings

    table = core_settings()["tasks"]
    return [f"note: {spec.name} read from {spec.path}, not the pinned CORE file (its SHA-256 differs): its score, "
            "and a CORE score over it, are not the published task's"
            for spec in specs if (row := table.get(spec.name))
            and hashlib.sha256(Path(spec.path).read_bytes()).hexdigest() != row["sha256"]]


def say_notes(notes: list[str]) -> None:
    for note in notes:
        print(note, file=sys.stderr, flush=True)


def cmd_eval_tasks(args) -> None:
    import os
    import re
    import time

    import llmkit
    from llmkit.atomic import make_output_dir
    from llmkit.eval import evaluate_tasks, evaluate_with, format_table, parse_task_list, write_run
    from llmkit.device import parse_dtype, resolve_device
    from llmkit.eval.generative import GenerativeSpec
    from llmkit.eval.remote import RemoteBackend, is_url

    specs = parse_task_list(args.tasks, args.task_dir, shots=args.shots, max_new_tokens=args.max_new_tokens)
    notes = lookup_notes(args.tasks, specs, args.task_dir)
    if not any(isinstance(s, GenerativeSpec) for s in specs):
        for dest in ("max_new_tokens", "compile"):
            if given(args, dest):
                raise LLMKitError(f"{flag(dest)}: {PURPOSE[dest]}; --tasks {args.tasks} has none (its tasks are "
                                  "scored, not generated): drop it")
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
            say_notes(notes)
            run = evaluate_with(backend, specs, limit=args.limit, sample=args.sample, sample_seed=args.sample_seed,
                                resume=resume, on_task=save)
        else:
            llm = llmkit.load(args.model, device=args.device, dtype=args.dtype, compile=args.compile)
            say_notes(notes)
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
