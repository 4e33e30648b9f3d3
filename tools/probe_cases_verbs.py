"""Cases of tools/probe_bad_inputs.py for the verbs added after the first probe: rag, scaling, constitution,
answer, judge, inspect, eval --tasks files and serve. Same rules as probe_cases.py: each case is a command
line and what a careful program does with it (run it, or refuse it in one line with exit 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from probe_cases import _tree_hash

MT_BENCH = Path(__file__).resolve().parents[1] / "tests" / "data" / "eval"  # question.jsonl, judge_prompts.jsonl


def build_verb_fixtures(root: Path, f: dict, env: dict) -> None:
    """Files the newer verbs read: documents and a BM25 index (and broken copies), sweep results, MT-Bench
    questions and answers, constitutions, task files of the wrong shape."""
    f["_env"] = env
    docs = root / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"doc{i}.txt").write_text(f"Document {i}. " + "The quick brown fox jumps over the lazy dog. " * 30)
    f["docs"] = docs
    f["index"] = root / "index"
    subprocess.run([sys.executable, "-m", "llmkit.cli", "rag", "index", "--input", str(docs), "--out", str(f["index"]),
                    "--chunk-chars", "200"], check=True, capture_output=True, env=env)
    for name, edit in {
        "index_bad_json": lambda p: (p / "index.json").write_text("{format"),
        "index_no_chunks": lambda p: (p / "chunks.jsonl").unlink(),
        "index_garbage_chunks": lambda p: (p / "chunks.jsonl").write_bytes(os.urandom(500)),
        "index_bad_format": lambda p: _set_json(p / "index.json", format="something-else"),
    }.items():
        path = root / name
        subprocess.run(["cp", "-r", str(f["index"]), str(path)], check=True)
        edit(path)
        f[name] = path

    # scaling: runs.jsonl of sweeps (a good one of 9 runs over 3 budgets, and broken ones); fit.json
    runs = []
    for budget in (1e12, 3e12, 1e13):
        for n in (1e5, 3e5, 1e6):
            d = budget / (6 * n)
            runs.append({"params": n, "tokens": d, "flops": budget, "budget": budget,
                         "val_loss": 2.0 + 400 / n ** 0.34 + 400 / d ** 0.28})
    for name, text in {
        "sweep_good": "".join(json.dumps(r) + "\n" for r in runs),
        "sweep_empty": "",
        "sweep_garbage": "not json\n",
        "sweep_one_run": json.dumps(runs[0]) + "\n",
        "sweep_negative": json.dumps({**runs[0], "val_loss": -1}) + "\n",
        "sweep_nan": '{"params": NaN, "tokens": 1, "flops": 1, "val_loss": 1}\n',
        "sweep_binary": None,
    }.items():
        path = root / name
        path.mkdir()
        if text is None:
            (path / "runs.jsonl").write_bytes(os.urandom(400))
        else:
            (path / "runs.jsonl").write_text(text)
        f[name] = path
    f["fit_garbage"] = root / "fit_garbage"
    f["fit_garbage"].mkdir()
    (f["fit_garbage"] / "fit.json").write_text("[1, 2")
    f["fit_wrong"] = root / "fit_wrong"
    f["fit_wrong"].mkdir()
    (f["fit_wrong"] / "fit.json").write_text(json.dumps({"approach2": "x", "approach3": [1]}))

    # MT-Bench questions and answers
    questions = (MT_BENCH / "mt_bench" / "question.jsonl").read_text().splitlines()[:2]
    f["questions"] = root / "questions.jsonl"
    f["questions"].write_text("\n".join(questions) + "\n")
    for name, text in {
        "questions_no_turns": json.dumps({"question_id": 1, "category": "x"}) + "\n",
        "questions_list_turns": json.dumps({"question_id": 1, "category": "x", "turns": [1, 2]}) + "\n",
        "questions_garbage": "{{{\n",
        "answers_wrong": json.dumps({"question_id": 81, "category": "writing", "turns": ["a", "b"],
                                     "answers": ["only one"]}) + "\n",
    }.items():
        f[name] = root / f"{name}.jsonl"
        f[name].write_text(text)
    f["answers"] = root / "answers.jsonl"
    f["answers"].write_text("".join(json.dumps({**json.loads(q), "answers": ["Yes.", "No."], "model": "m"}) + "\n"
                                    for q in questions))
    f["pairs_wrong"] = root / "pairs_wrong.jsonl"
    f["pairs_wrong"].write_text(json.dumps({"chosen": 5, "rejected": ["x"]}) + "\n")

    # constitutions
    for name, text in {
        "principles_empty": "principles: []\n",
        "principles_number": "principles:\n  - {name: a, critique: 1.5, revision: r, compare: c}\n",
        "principles_garbage": "principles: [\n",
        "principles_short": "principles:\n  - {name: a, critique: 'Flaws?', revision: Fix it., compare: 'Better?'}\n",
    }.items():
        f[name] = root / f"{name}.yaml"
        f[name].write_text(text)

    # eval task files of the wrong shape
    for name, records in {
        "task_gold_out_of_range": [{"query": "Is it?", "choices": ["yes", "no"], "gold": 7}],
        "task_no_choices": [{"query": "Is it?", "choices": [], "gold": 0}],
        "task_string_gold": [{"query": "Is it?", "choices": ["yes", "no"], "gold": "yes"}],
        "task_list_file": None,
    }.items():
        f[name] = root / f"{name}.jsonl"
        if records is None:
            f[name].write_text(json.dumps([{"query": "q", "choices": ["a"], "gold": 0}]))
        else:
            f[name].write_text("".join(json.dumps(r) + "\n" for r in records))


def _set_json(path: Path, **fields) -> None:
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


def verb_cases(f: dict, Case, fresh_out) -> list:
    """The cases; `fresh_out()` gives a new output path each call."""
    M = f["model"]
    cases = []

    def add(name, args, expect="error", **kw):
        cases.append(Case(name, list(args), expect, **kw))

    o = fresh_out
    model_hash = _tree_hash(M)

    def model_unchanged(result) -> str | None:
        return "the model folder changed" if _tree_hash(M) != model_hash else None

    # -- rag
    index = ["rag", "index", "--input", f["docs"]]
    add("rag index ok", [*index, "--out", o(), "--chunk-chars", "200"], "ok")
    for flag, value in [("--chunk-chars", "0"), ("--chunk-chars", "-5"), ("--chunk-tokens", "0"), ("--overlap", "-1"),
                        ("--chunk-chars", str(10**30))]:
        add(f"rag index {flag} {value[:12]}", [*index, "--out", o(), flag, value])
    add("rag index --overlap >= chunk", [*index, "--out", o(), "--chunk-chars", "100", "--overlap", "100"])
    add("rag index --chunk-tokens without --model", [*index, "--out", o(), "--chunk-tokens", "50"])
    add("rag index --dense without --model", [*index, "--out", o(), "--dense"])
    add("rag index --input missing", ["rag", "index", "--input", "/nonexistent", "--out", o()])
    add("rag index --input empty dir", ["rag", "index", "--input", f["empty_dir"], "--out", o()])
    add("rag index --input binary", ["rag", "index", "--input", f["binary_txt"], "--out", o()], "any")
    add("rag index --out a file", [*index, "--out", f["a_file"]],
        check=lambda r: "the file was replaced" if not f["a_file"].is_file() else None)
    add("rag index --out under a file", [*index, "--out", f["a_file"] / "idx"])
    add("rag index --out in /proc", [*index, "--out", "/proc/llmkit-index"])
    add("rag index --out the model (no loss)", [*index, "--out", M], check=model_unchanged)
    add("rag search ok", ["rag", "search", f["index"], "quick fox"], "ok")
    for flag, value in [("--k", "0"), ("--k", "-1"), ("--k", str(10**30))]:
        add(f"rag search {flag} {value[:12]}", ["rag", "search", f["index"], "fox", flag, value])
    add("rag search --mode dense on a BM25 index", ["rag", "search", f["index"], "fox", "--mode", "dense"])
    add("rag search empty query", ["rag", "search", f["index"], ""], "any")
    add("rag search query not utf-8", ["rag", "search", f["index"], b"fox \xff"], "any")
    add("rag search index missing", ["rag", "search", "/nonexistent", "fox"])
    add("rag search index is a file", ["rag", "search", f["a_file"], "fox"])
    add("rag search index is the model", ["rag", "search", M, "fox"])
    for name in ("index_bad_json", "index_no_chunks", "index_garbage_chunks", "index_bad_format"):
        add(f"rag search {name}", ["rag", "search", f[name], "fox"])
    ask = ["rag", "ask", "--model", M, "--max-new-tokens", "2"]
    add("rag ask ok", [*ask, f["index"], "What jumps?"], "ok")
    add("rag ask --k 0", [*ask, "--k", "0", f["index"], "What jumps?"])
    add("rag ask --temperature nan", [*ask, "--temperature", "nan", f["index"], "What jumps?"])
    add("rag ask --model missing", ["rag", "ask", "--model", "/nonexistent", f["index"], "q"])
    add("rag ask --model weights_nan", ["rag", "ask", "--model", f["weights_nan"], "--max-new-tokens", "2",
                                        f["index"], "q"], check=lambda r: "NaN text" if "nan" in r.stdout.lower() else None)
    add("rag ask index_bad_json", [*ask, f["index_bad_json"], "q"])

    # -- scaling
    sweep = ["scaling", "sweep", "--sizes", "1x32", "--dry-run"]
    add("scaling sweep --dry-run ok", [*sweep, "--out", o(), "--budgets", "1e9"], "ok")
    for budgets in ("abc", "-1e12", "0", "nan", "inf", "1e12,,", ""):
        add(f"scaling sweep --budgets {budgets!r}", [*sweep, "--out", o(), "--budgets", budgets])
    for sizes in ("0x128", "axb", "2x7x3", "2x128x0", "-1x64", "1000000x1000000"):
        add(f"scaling sweep --sizes {sizes}", ["scaling", "sweep", "--dry-run", "--out", o(), "--budgets", "1e12",
                                               "--sizes", sizes])
    for flag, value in [("--warmup-fraction", "2"), ("--warmup-fraction", "-0.1"), ("--warmup-fraction", "nan"),
                        ("--width-per-layer", "0"), ("--head-dim", "0")]:
        add(f"scaling sweep {flag} {value}", ["scaling", "sweep", "--dry-run", "--out", o(), "--budgets", "1e12",
                                              "--depths", "1,2", flag, value])
    add("scaling sweep --depths 0", ["scaling", "sweep", "--dry-run", "--out", o(), "--budgets", "1e12",
                                     "--depths", "0"])
    add("scaling sweep grad_clip=-1", [*sweep, "--out", o(), "--budgets", "1e9", "grad_clip=-1"])
    add("scaling sweep unknown field", [*sweep, "--out", o(), "--budgets", "1e9", "learning_rate=1"])
    add("scaling sweep --preset unknown", [*sweep, "--out", o(), "--budgets", "1e9", "--preset", "nope"])
    sweep_run = ["scaling", "sweep", "--sizes", "1x32", "--budgets", "1e9", "seq_len=32", "micro_batch=2",
                 "eval_every=0", "eval_tokens=64", "plot=false", "threads=1", f"data={f['shards']}",
                 f"val_data={f['shards']}"]
    add("scaling sweep --out in /proc", [*sweep_run, "--out", "/proc/llmkit-sweep"])
    add("scaling sweep --out a file", [*sweep_run, "--out", f["a_file"]],
        check=lambda r: "the file was replaced" if not f["a_file"].is_file() else None)
    add("scaling sweep --out the model (no loss)", [*sweep_run, "--out", M], check=model_unchanged)
    add("scaling fit ok", ["scaling", "fit", f["sweep_good"], "--no-plots", "--bootstrap", "5"], "ok")
    for name in ("sweep_empty", "sweep_garbage", "sweep_one_run", "sweep_negative", "sweep_nan", "sweep_binary"):
        add(f"scaling fit {name}", ["scaling", "fit", f[name], "--no-plots"])
    add("scaling fit missing", ["scaling", "fit", "/nonexistent", "--no-plots"])
    add("scaling fit a folder without runs", ["scaling", "fit", f["empty_dir"], "--no-plots"])
    add("scaling fit --bootstrap -1", ["scaling", "fit", f["sweep_good"], "--no-plots", "--bootstrap", "-1"])
    add("scaling fit --max-epochs -1", ["scaling", "fit", f["sweep_good"], "--no-plots", "--max-epochs", "-1"])
    add("scaling fit --max-epochs nan", ["scaling", "fit", f["sweep_good"], "--no-plots", "--max-epochs", "nan"])
    add("scaling predict ok", ["scaling", "predict", f["sweep_good"], "--budget", "1e14"], "ok",
        setup=lambda: subprocess.run([sys.executable, "-m", "llmkit.cli", "scaling", "fit", str(f["sweep_good"]),
                                      "--no-plots", "--bootstrap", "5"], capture_output=True, env=f["_env"]))
    for budget in ("-1", "0", "nan", "inf", "1e400"):
        add(f"scaling predict --budget {budget}", ["scaling", "predict", f["sweep_good"], "--budget", budget])
    add("scaling predict no fit.json", ["scaling", "predict", f["empty_dir"], "--budget", "1e14"])
    add("scaling predict fit.json garbage", ["scaling", "predict", f["fit_garbage"], "--budget", "1e14"])
    add("scaling predict fit.json wrong shape", ["scaling", "predict", f["fit_wrong"], "--budget", "1e14"])

    # -- constitution
    for action in ("revise", "label"):
        con = ["constitution", action, "--model", M, "--prompts", f["prompts"], "--max-new-tokens", "2"]
        # (the shipped principles are longer than the tiny model's 128-token context: a short constitution)
        add(f"constitution {action} ok", [*con, "--principles", f["principles_short"], "--limit", "1", "--out", o()],
            "ok")
        add(f"constitution {action} --model missing", ["constitution", action, "--model", "/nonexistent", "--prompts",
                                                       f["prompts"], "--out", o()])
        add(f"constitution {action} --prompts missing", ["constitution", action, "--model", M, "--prompts",
                                                         "/nonexistent.jsonl", "--out", o()])
        add(f"constitution {action} --prompts binary", ["constitution", action, "--model", M, "--prompts",
                                                        f["binary_txt"], "--out", o()])
        add(f"constitution {action} --prompts bad jsonl", ["constitution", action, "--model", M, "--prompts",
                                                           f["bad_jsonl"], "--out", o()])
        for name in ("principles_empty", "principles_number", "principles_garbage"):
            add(f"constitution {action} {name}", [*con, "--principles", f[name], "--out", o()])
        add(f"constitution {action} --principles missing", [*con, "--principles", "/nonexistent.yaml", "--out", o()])
        for flag, value in [("--limit", "-1"), ("--max-batch-size", "0"), ("--temperature", "nan"),
                            ("--seed", str(10**30)), ("--max-new-tokens", "-1")]:
            add(f"constitution {action} {flag} {value[:12]}", [*con, flag, value, "--out", o()])
        add(f"constitution {action} --records 3 1", [*con, "--records", "3", "1", "--out", o()])
        add(f"constitution {action} --out in /proc", [*con, "--limit", "1", "--out", "/proc/llmkit-con"])
        add(f"constitution {action} --out under a file", [*con, "--limit", "1", "--out", f["a_file"] / "x.jsonl"])
        add(f"constitution {action} --out == --prompts (no loss)", [*con, "--limit", "1", "--out", f["prompts"]],
            check=lambda r: "the prompts file changed" if "Question 0" not in f["prompts"].read_text() else None)
        add(f"constitution {action} --out the model (no loss)", [*con, "--limit", "1", "--out", M],
            check=model_unchanged)
    add("constitution revise --rounds 0", ["constitution", "revise", "--model", M, "--prompts", f["prompts"],
                                           "--rounds", "0", "--out", o()])
    add("constitution revise --top-p 2", ["constitution", "revise", "--model", M, "--prompts", f["prompts"],
                                          "--top-p", "2", "--out", o()])
    add("constitution label --judge missing", ["constitution", "label", "--model", M, "--prompts", f["prompts"],
                                               "--judge", "/nonexistent", "--out", o()])

    # -- answer / judge
    answer = ["answer", "--model", M, "--questions", f["questions"], "--max-new-tokens", "2"]
    add("answer ok", [*answer, "--limit", "1", "--out", o()], "ok")
    for name in ("questions_no_turns", "questions_list_turns", "questions_garbage", "binary_txt", "empty_txt"):
        add(f"answer --questions {name}", ["answer", "--model", M, "--questions", f[name], "--out", o()])
    add("answer --questions missing", ["answer", "--model", M, "--questions", "/nonexistent.jsonl", "--out", o()])
    for flag, value in [("--limit", "-1"), ("--limit", "0"), ("--max-new-tokens", "-1"), ("--temperature", "nan"),
                        ("--seed", str(10**30))]:
        add(f"answer {flag} {value[:12]}", [*answer, flag, value, "--out", o()])
    add("answer --out in /proc", [*answer, "--limit", "1", "--out", "/proc/llmkit-answers.jsonl"])
    add("answer --out a folder", [*answer, "--limit", "1", "--out", f["empty_dir"]])
    add("answer --out == --questions (no loss)", [*answer, "--limit", "1", "--out", f["questions"]],
        check=lambda r: "the questions changed" if "turns" not in f["questions"].read_text()
        or "answers" in f["questions"].read_text() else None)
    add("answer --model weights_nan", ["answer", "--model", f["weights_nan"], "--questions", f["questions"],
                                       "--max-new-tokens", "2", "--limit", "1", "--out", o()])
    judge = ["judge", "--judge", M, "--judge-prompts", MT_BENCH / "mt_bench" / "judge_prompts.jsonl",
             "--max-new-tokens", "2"]
    add("judge ok", [*judge, "--answers", f["answers"], "--limit", "1", "--out", o()], "ok")
    add("judge --answers missing", [*judge, "--answers", "/nonexistent.jsonl", "--out", o()])
    add("judge --answers wrong shape", [*judge, "--answers", f["answers_wrong"], "--out", o()])
    add("judge --answers binary", [*judge, "--answers", f["binary_txt"], "--out", o()])
    add("judge --answers and --pairs", [*judge, "--answers", f["answers"], "--pairs", f["answers"], "--out", o()])
    add("judge neither", [*judge, "--out", o()])
    add("judge --pairs wrong shape", [*judge, "--pairs", f["pairs_wrong"], "--out", o()])
    add("judge --pairs missing", [*judge, "--pairs", "/nonexistent.jsonl", "--out", o()])
    add("judge --mode pairwise one model", [*judge, "--answers", f["answers"], "--mode", "pairwise", "--out", o()])
    add("judge --judge missing", ["judge", "--judge", "/nonexistent", "--answers", f["answers"], "--out", o()])
    add("judge --judge-prompts garbage", ["judge", "--judge", M, "--judge-prompts", f["bad_jsonl"], "--answers",
                                          f["answers"], "--out", o()])
    add("judge --limit -1", [*judge, "--answers", f["answers"], "--limit", "-1", "--out", o()])
    add("judge --max-new-tokens 0", ["judge", "--judge", M, "--answers", f["answers"], "--max-new-tokens", "0",
                                     "--out", o()])
    add("judge --out in /proc", [*judge, "--answers", f["answers"], "--limit", "1", "--out", "/proc/llmkit-judge"])
    add("judge --out a file", [*judge, "--answers", f["answers"], "--limit", "1", "--out", f["a_file"]],
        check=lambda r: "the file was replaced" if not f["a_file"].is_file() else None)
    add("judge --out the model (no loss)", [*judge, "--answers", f["answers"], "--limit", "1", "--out", M],
        check=model_unchanged)

    # -- inspect
    for verb, extra in [("attention", []), ("lens", [])]:
        base = ["inspect", verb, "--model", M, *extra]
        add(f"inspect {verb} ok", [*base, "ROMEO: hello"], "ok")
        add(f"inspect {verb} empty text --no-bos", [*base, "--no-bos", ""])
        add(f"inspect {verb} --top 0", [*base, "--top", "0", "hi there"])
        add(f"inspect {verb} --top -1", [*base, "--top", "-1", "hi there"])
        add(f"inspect {verb} --png in /proc", [*base, "--png", "/proc/llmkit.png", "hi there"])
        add(f"inspect {verb} --png under a file", [*base, "--png", f["a_file"] / "x.png", "hi there"])
        add(f"inspect {verb} weights_nan", ["inspect", verb, "--model", f["weights_nan"], "hi there"], "any",
            check=lambda r: "printed NaN figures" if r.returncode == 0 and "nan" in r.stdout.lower() else None)
        add(f"inspect {verb} long text", [*base, "word " * 5000], "any", timeout=120)
    add("inspect attention --layer 100", ["inspect", "attention", "--model", M, "--layer", "100", "hi there"])
    add("inspect attention --layer -1", ["inspect", "attention", "--model", M, "--layer", "-1", "hi there"], "any")
    add("inspect attention --head 99", ["inspect", "attention", "--model", M, "--layer", "0", "--head", "99", "hi"])
    add("inspect attention --token 99", ["inspect", "attention", "--model", M, "--token", "99", "hi there"])
    add("inspect lens --positions bad", ["inspect", "lens", "--model", M, "--positions", "a:b", "hi there"])
    add("inspect lens --positions 999", ["inspect", "lens", "--model", M, "--positions", "999", "hi there"])
    add("inspect embeddings --neighbours unknown", ["inspect", "embeddings", "--model", M, "--neighbours",
                                                    "xqzjkwv"], "any")
    add("inspect embeddings --analogy bad", ["inspect", "embeddings", "--model", M, "--analogy", "a b c"])
    add("inspect embeddings --map one word", ["inspect", "embeddings", "--model", M, "--map", "the"], "any")
    add("inspect embeddings --top 0", ["inspect", "embeddings", "--model", M, "--neighbours", "the", "--top", "0"])

    # -- eval task files
    for name in ("task_gold_out_of_range", "task_no_choices", "task_string_gold", "task_list_file", "binary_txt",
                 "empty_txt"):
        add(f"eval --tasks {name}", ["eval", "--model", M, "--tasks", f[name]])
    add("eval --tasks --shots -1", ["eval", "--model", M, "--tasks", f["tasks"], "--shots", "-1"])
    add("eval --tasks --batch-tokens 0", ["eval", "--model", M, "--tasks", f["tasks"], "--batch-tokens", "0"])
    add("eval --tasks --out the model (no loss)", ["eval", "--model", M, "--tasks", f["tasks"], "--out", M],
        check=model_unchanged)

    # -- serve: refusals only (a valid one runs until stopped); each must exit, not hang
    # --port 0 (a free port): two cases running at once never meet on 8000 (a later --port wins in argparse)
    serve = ["serve", "--model", M, "--port", "0"]
    for flag, value in [("--port", "-1"), ("--port", "70000"), ("--port", "abc"), ("--max-batch-size", "0"),
                        ("--kv-cache-mib", "-1"), ("--kv-cache-mib", "nan"), ("--prefix-cache-mib", "-1"),
                        ("--max-waiting", "-1"), ("--max-body-mib", "0"), ("--prefill-chunk", "0"),
                        ("--host", "256.1.1.1"), ("--device", "banana"), ("--rag", "/nonexistent"),
                        ("--rag", str(f["index_bad_json"])), ("--k", "0"), ("--draft-tokens", "0")]:
        add(f"serve {flag} {value[:20]}", [*serve, flag, value], timeout=60)
    add("serve --model missing", ["serve", "--model", "/nonexistent", "--port", "0"], timeout=60)
    add("serve --model a file", ["serve", "--model", f["a_file"], "--port", "0"], timeout=60)
    add("serve --model weights_truncated", ["serve", "--model", f["weights_truncated"], "--port", "0"], timeout=60)
    return cases

