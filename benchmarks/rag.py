"""Retrieval on the built-in task: recall@1 and @5 of BM25 (and, with --dense MODEL, dense and hybrid)
over the complete works, for the built-in assistant task's held-out questions.

The corpus is the built-in corpus (every play and poem, train and val, as `llmkit data shakespeare`
writes it), chunked as `llmkit rag index` chunks it. The questions are the held-out questions of the
built-in assistant task (seed 0, the task `builtin_task()` caches): "who says this line" (speaker),
"continue this line" (continue) — their gold chunks are those that contain the quoted line whole — and
"which play" (play), whose gold chunks are those of the right play that name the character. "passage"
questions hold their answer in the prompt and are left out. The query is the question as the user asks it.

Also measured: index build speed (MB of text per second, BM25 and dense separately), query latency
p50/p99 per mode, index size on disk.

    python benchmarks/rag.py                          # BM25 only (~1 minute on a 2-core CPU)
    python benchmarks/rag.py --dense smollm2          # + dense and hybrid (embeds ~7,000 chunks)
    python benchmarks/rag.py --answers smollm2,runs/speedrun/sft   # + answer accuracy, closed-book vs RAG

--answers: each model answers every held-out question twice, greedily, through the engine: closed-book
(the question alone as the user's turn) and with the top --answer-k BM25 passages (`llmkit rag ask`'s
prompt: numbered passages, the citation instruction; passages that do not fit the model's context
are dropped from the lowest-ranked up, and the number shown is reported). Graded two ways: exact (the
built-in task's grader: the reply's first line is the answer) and names-it (the reply names the right
option and not the other: each question offers two). Paired by question: gained / lost and McNemar's
exact p.

--teach N (issue 21's "teaching a model to use them"): SmolLM2 learns to call the search tool. N of the
built-in task's *training* questions become search conversations over this index (`llmkit rag
make-tool-data --index`: the quoted line or the character's name as the query, the top --teach-k passages
as the tool's reply, the answer; only questions whose answer the passages hold), LoRA SFT with the
sft-tools-smollm2-lora preset, then the taught model answers the held-out questions through the product's tool
loop (`llm.chat_with_tools`, the search tool offered, greedy), graded as above and paired against
SmolLM2's closed-book answers; per question kind too, with how often the search results name the right
option alone or both options. Every held-out reply and its search results go to RUN-heldout-replies.jsonl
beside the run.

    python benchmarks/rag.py --chunk-chars 300 --overlap 60 --teach 300 --teach-run runs/rag-taught

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

KINDS = ("speaker", "continue", "play")


def gold_rows(index, questions, plays_by_title) -> list[set[int]]:
    """For each question, the rows of the chunks that answer it (see the module's docstring)."""
    out = []
    for q in questions:
        if q.kind in ("speaker", "continue"):
            out.append({i for i, c in enumerate(index.chunks) if q.subject in c.text})
        else:
            file = plays_by_title[q.answer]
            out.append({i for i, c in enumerate(index.chunks) if c.file == file and q.subject in c.text})
    return out


def evaluate(index, questions, gold, mode, embedder) -> tuple[dict, list[float]]:
    found1, found5, latencies = [], [], []
    for q, rows in zip(questions, gold):
        start = time.perf_counter()
        hits = index.search(q.prompt, 5, mode, embedder)
        latencies.append(time.perf_counter() - start)
        ranked = [h.row for h in hits]
        found1.append(bool(ranked[:1]) and ranked[0] in rows)
        found5.append(any(r in rows for r in ranked))
    result = {"recall_at_1": float(np.mean(found1)), "recall_at_5": float(np.mean(found5))}
    for kind in KINDS:
        marks = [(a, b) for q, a, b in zip(questions, found1, found5) if q.kind == kind]
        if marks:
            result[f"{kind}_recall_at_1"] = float(np.mean([a for a, _ in marks]))
            result[f"{kind}_recall_at_5"] = float(np.mean([b for _, b in marks]))
    result["query_p50_ms"] = float(np.percentile(latencies, 50) * 1000)
    result["query_p99_ms"] = float(np.percentile(latencies, 99) * 1000)
    return result, latencies


def names_in(text: str, option: str) -> bool:
    """Whether a text names an option, both as the task grader normalises them (line by line)."""
    from llmkit.data.assistant_task import normalise_answer

    return f" {normalise_answer(option)} " in f" {' '.join(normalise_answer(line) for line in text.splitlines())} "


def names_it(reply: str, right: str, wrong: str) -> bool:
    """The reply names the right option and not the wrong one."""
    return names_in(reply, right) and not names_in(reply, wrong)


def grade(replies: list[str], questions) -> dict[str, list[bool]]:
    """Each reply marked exact (the built-in task's grader) and names-it (see the module's docstring)."""
    from llmkit.data.assistant_task import is_correct

    return {"exact": [is_correct(r, q.answer) for r, q in zip(replies, questions)],
            "names": [names_it(r, q.answer, q.wrong) for r, q in zip(replies, questions)]}


def add_paired(out: dict, before: str, after: str, marks: dict[str, dict[str, list[bool]]]) -> None:
    """Accuracy and Wilson interval of each of the two arms, per grade, and the paired comparison."""
    from llmkit.data.assistant_task import paired_comparison
    from llmkit.eval.stats import wilson_interval

    for name in (before, after):
        for kind, ok in marks[name].items():
            out[f"{name}_{kind}"] = sum(ok) / len(ok)
            out[f"{name}_{kind}_ci95"] = wilson_interval(sum(ok), len(ok))
    for kind in marks[before]:
        out[f"paired_{kind}"] = paired_comparison(marks[before][kind], marks[after][kind])


def paired_row(first: str, figures: dict, before: str, after: str, kind: str, last: str = "") -> str:
    """A Markdown row: `first`, the grade, both arms' accuracy, gained / lost and McNemar's p (add_paired)."""
    c = figures[f"paired_{kind}"]
    return (f"| {first}{kind} | {figures[f'{before}_{kind}']:.3f} | {figures[f'{after}_{kind}']:.3f} | "
            f"{c['gained']} / {c['lost']} | {c['p_value']:.2g} |{last}")


def greedy_replies(llm, conversations: list[list[dict]], max_new_tokens: int) -> list[str]:
    """Greedy replies to the conversations, batched on the engine."""
    from llmkit.infer import SamplingParams
    from llmkit.train.post_common import reply_text

    done = llm.engine.generate_batch([llm.tokenizer.encode_chat(m) for m in conversations],
                                     SamplingParams(max_new_tokens=max_new_tokens, temperature=0))
    return [reply_text(llm.tokenizer, c.token_ids) for c in done]


def answer_accuracy(model: str, index, questions, k: int, max_new_tokens: int, device=None) -> dict:
    """Closed-book vs retrieval-augmented answers of one model (see the module's docstring)."""
    import llmkit
    from llmkit.rag.answer import fitting_messages

    llm = llmkit.load(model, device=device, max_batch_size=32)
    closed = [[{"role": "user", "content": q.prompt}] for q in questions]
    augmented, shown = [], []
    for q in questions:
        messages, kept = fitting_messages(llm, q.prompt, index.search(q.prompt, k, "bm25"), max_new_tokens)
        augmented.append(messages)
        shown.append(len(kept))
    out = {"model": model, "passages_shown_mean": sum(shown) / len(shown)}
    marks = {}
    for name, prompts in (("closed", closed), ("rag", augmented)):
        start = time.perf_counter()
        replies = greedy_replies(llm, prompts, max_new_tokens)
        out[f"{name}_s"] = time.perf_counter() - start
        marks[name] = grade(replies, questions)
        out[f"{name}_examples"] = [{"question": q.prompt, "answer": q.answer, "reply": r}
                                   for q, r in list(zip(questions, replies))[:3]]
    add_paired(out, "closed", "rag", marks)
    return out


def teach_search(index, n: int, k: int, run: Path, max_new_tokens: int, call_tokens: int, heldout,
                 device=None) -> dict:
    """SmolLM2 taught to call search (see the module's docstring): the held-out answers through the tool
    loop (call_tokens per generation: a call quotes a whole line), paired against SmolLM2 closed-book
    (max_new_tokens, as --answers)."""
    import llmkit
    from llmkit.atomic import atomic_write_text
    from llmkit.rag.chat import Retriever, search_tool
    from llmkit.rag.tool_data import builtin_search_examples

    search = search_tool(Retriever(index, k=k, mode="bm25"))
    out: dict = {"teach_questions": n, "teach_k": k}
    if not (run / "model.safetensors").exists():
        examples, out["teach_skipped"] = builtin_search_examples(search, n)
        data = run.with_name(run.name + "-data.jsonl")
        data.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(data, "".join(json.dumps(e) + "\n" for e in examples))
        start = time.perf_counter()  # two ~480-token conversations per 1,024-token row
        subprocess.run([sys.executable, "-m", "llmkit.cli", "sft", "--preset", "sft-tools-smollm2-lora", "--out", str(run),
                        f"data={data}", "seq_len=1024", "micro_batch=2", "eval_every=0", "plot=false", "ckpt_every=0"],
                       check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        out["teach_sft_s"] = time.perf_counter() - start
    base = greedy_replies(llmkit.load("smollm2", device=device, max_batch_size=32),
                          [[{"role": "user", "content": q.prompt}] for q in heldout], max_new_tokens)
    taught = llmkit.load(run, device=device)
    replies, found, calls, malformed, start = [], [], 0, 0, time.perf_counter()
    for q in heldout:
        chat = taught.chat_with_tools([{"role": "user", "content": q.prompt}], [search], max_tool_rounds=2,
                                      max_new_tokens=call_tokens, temperature=0)
        replies.append(chat.reply)
        found.append("\n".join(str(m.get("content") or "") for m in chat.messages if m.get("role") == "tool"))
        calls, malformed = calls + chat.calls, malformed + chat.errors
    out.update(taught_s=time.perf_counter() - start, taught_calls=calls, taught_malformed=malformed,
               taught_examples=[{"question": q.prompt, "answer": q.answer, "reply": r}
                                for q, r in list(zip(heldout, replies))[:3]])
    marks = {"closed": grade(base, heldout), "taught": grade(replies, heldout)}
    add_paired(out, "closed", "taught", marks)
    # per question kind, and whether the passages the search returned name the right option, the wrong one or
    # both: a reply can only be read off the passages when they name the right option alone
    by_kind: dict = {}
    for kind in sorted({q.kind for q in heldout}):
        picked = [i for i, q in enumerate(heldout) if q.kind == kind]
        shown = [(names_in(found[i], heldout[i].answer), names_in(found[i], heldout[i].wrong)) for i in picked]
        by_kind[kind] = {"n": len(picked), **{f"{arm}_exact": sum(marks[arm]["exact"][i] for i in picked) / len(picked)
                                              for arm in marks},
                         "found_right_only": sum(a and not b for a, b in shown) / len(picked),
                         "found_both": sum(a and b for a, b in shown) / len(picked)}
    out["taught_by_kind"] = by_kind
    atomic_write_text(run.with_name(run.name + "-heldout-replies.jsonl"), "".join(
        json.dumps({"kind": q.kind, "question": q.prompt, "answer": q.answer, "wrong": q.wrong, "closed": b,
                    "taught": r, "search_results": f}) + "\n" for q, b, r, f in zip(heldout, base, replies, found)))
    return out


MEMORY_PROBE = """
import json, os, sys
def rss():  # resident set size, MiB (Linux: /proc/self/statm counts pages)
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
import bm25s  # (the library's own import is not the index's memory)
from llmkit.rag.index import RagIndex
before = rss()
index = RagIndex.load(sys.argv[1])
loaded = rss()
for query in json.loads(sys.argv[2]):
    index.search(query, 5, "bm25")
print(json.dumps({"index_rss_loaded_mib": loaded - before, "index_rss_queried_mib": rss() - before}))
"""


def index_memory(folder: Path, queries: list[str]) -> dict:
    """Resident memory an index adds to a fresh process (imports excluded): once loaded, and after BM25
    queries (the memory-mapped arrays are paged in as they are read)."""
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(folder), json.dumps(queries)], check=True,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    return json.loads(done.stdout.strip().splitlines()[-1])


def folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dense", default=None, metavar="MODEL", help="also dense and hybrid, embedded by MODEL")
    parser.add_argument("--chunk-chars", type=int, default=1000)
    parser.add_argument("--overlap", type=int, default=200)
    parser.add_argument("--heldout-per-kind", type=int, default=100)
    parser.add_argument("--device", default=None)
    parser.add_argument("--answers", default=None, metavar="MODEL,...",
                        help="also answer accuracy closed-book vs with retrieval, for these models")
    parser.add_argument("--answer-k", type=int, default=3, help="--answers: BM25 passages in the prompt")
    parser.add_argument("--answer-tokens", type=int, default=32, help="--answers: new tokens per reply")
    parser.add_argument("--teach", type=int, default=0, metavar="N",
                        help="teach SmolLM2 to call search on N training questions, then answer with it")
    parser.add_argument("--teach-k", type=int, default=2, help="--teach: passages each search returns")
    parser.add_argument("--teach-run", type=Path, default=Path("runs/rag-taught"), help="--teach: the SFT run")
    parser.add_argument("--teach-tokens", type=int, default=64, help="--teach: new tokens per generation of the "
                        "tool loop (the call quotes a whole line)")
    args = parser.parse_args()

    from llmkit.data.assistant_task import make_questions, parse_play, read_plays
    from llmkit.data.corpus import cache_root, fetch_shakespeare
    from llmkit.rag.chunking import ChunkingConfig
    from llmkit.rag.index import RagIndex

    corpus = fetch_shakespeare(cache_root() / "data" / "shakespeare")
    # the built-in task's held-out questions (builtin_task: seed 0, 2 x 1,000 training questions per kind)
    _, heldout = make_questions(read_plays(corpus / "train"), 0, 2000, args.heldout_per_kind)
    questions = [q for q in heldout if q.kind in KINDS]
    plays_by_title = {}
    for path in sorted((corpus / "train").glob("*.txt")):
        play = parse_play(path)
        if play is not None:
            plays_by_title[play.title] = path.name
    inputs = [corpus / "train", corpus / "val"]
    text_mb = sum(p.stat().st_size for folder in inputs for p in folder.glob("*.txt")) / 1e6
    config = ChunkingConfig(size=args.chunk_chars, overlap=args.overlap)

    start = time.perf_counter()
    index = RagIndex.build(inputs, config)
    bm25_build_s = time.perf_counter() - start
    figures = {"corpus_mb": text_mb, "chunks": len(index.chunks), "questions": len(questions),
               "bm25_build_s": bm25_build_s, "bm25_build_mb_s": text_mb / bm25_build_s}
    gold = gold_rows(index, questions, plays_by_title)
    figures["questions_without_gold"] = sum(not g for g in gold)
    modes = {"bm25": None}
    if args.dense:
        import llmkit
        from llmkit.rag.embed import ModelEmbedder

        llm = llmkit.load(args.dense, device=args.device)
        embedder = ModelEmbedder(llm.model, llm.tokenizer, args.dense)
        start = time.perf_counter()
        index.embeddings = embedder.embed([c.text for c in index.chunks])
        index.meta["dense"] = embedder.describe()
        dense_s = time.perf_counter() - start
        figures.update(dense_build_s=dense_s, dense_build_mb_s=text_mb / dense_s)
        modes.update(dense=embedder, hybrid=embedder)
    folder = Path(tempfile.mkdtemp()) / "index"
    try:
        index.save(folder)
        figures["index_mib"] = folder_mib(folder)
        figures.update(index_memory(folder, [q.prompt for q in questions]))
        index = RagIndex.load(folder)
        for mode, embedder in modes.items():
            result, _ = evaluate(index, questions, gold, mode, embedder)
            figures.update({f"{mode}_{k}": v for k, v in result.items()})
        answers = [answer_accuracy(m, index, questions, args.answer_k, args.answer_tokens, args.device)
                   for m in (args.answers.split(",") if args.answers else [])]
        taught = (teach_search(index, args.teach, args.teach_k, args.teach_run, args.answer_tokens,
                               args.teach_tokens, questions, args.device) if args.teach else None)
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)

    print(f"corpus {text_mb:.1f} MB -> {len(index.chunks)} chunks of {args.chunk_chars} characters "
          f"(overlap {args.overlap}); {len(questions)} held-out questions "
          f"({figures['questions_without_gold']} without a gold chunk); index {figures['index_mib']:.1f} MiB on disk, "
          f"{figures['index_rss_loaded_mib']:.1f} MiB resident once loaded, {figures['index_rss_queried_mib']:.1f} "
          f"after the BM25 queries")
    print(f"build: BM25 {figures['bm25_build_mb_s']:.2f} MB/s"
          + (f", dense {figures['dense_build_mb_s']:.3f} MB/s" if args.dense else ""))
    print(f"{'mode':<8} {'R@1':>6} {'R@5':>6} " + " ".join(f"{k[:8] + ' R@1':>13} {k[:8] + ' R@5':>13}" for k in KINDS)
          + f" {'p50 ms':>8} {'p99 ms':>8}")
    for mode in modes:
        f = {k[len(mode) + 1:]: v for k, v in figures.items() if k.startswith(mode + "_")}
        print(f"{mode:<8} {f['recall_at_1']:6.3f} {f['recall_at_5']:6.3f} "
              + " ".join(f"{f.get(f'{k}_recall_at_1', float('nan')):13.3f} {f.get(f'{k}_recall_at_5', float('nan')):13.3f}"
                         for k in KINDS) + f" {f['query_p50_ms']:8.2f} {f['query_p99_ms']:8.2f}")
    if answers:
        print(f"\nanswer accuracy on the {len(questions)} questions, greedy, {args.answer_tokens} new tokens; RAG: "
              f"top {args.answer_k} BM25 passages")
        print("| model | grade | closed-book | with retrieval | gained / lost | McNemar p | passages shown |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for a in answers:
            for kind in ("exact", "names"):
                print(paired_row(f"{a['model']} | ", a, "closed", "rag", kind, f" {a['passages_shown_mean']:.2f} |"))
            for e in a["rag_examples"]:
                print(f"  {a['model']} RAG: {e['question'][:90]!r} -> {e['reply'][:80]!r} (answer {e['answer']!r})")
        figures["answers"] = answers
    if taught:
        print(f"\nSmolLM2 taught to call search ({args.teach} training questions, top {args.teach_k} BM25 passages "
              f"per search), the held-out questions through the tool loop: {taught['taught_calls']} calls, "
              f"{taught['taught_malformed']} malformed, {taught['taught_s']:.0f} s")
        print("| grade | SmolLM2 closed-book | taught, with search | gained / lost | McNemar p |")
        print("| --- | --- | --- | --- | --- |")
        for kind in ("exact", "names"):
            print(paired_row("", taught, "closed", "taught", kind))
        print("| kind | questions | closed-book exact | taught exact | search found the right option alone | both |")
        print("| --- | --- | --- | --- | --- | --- |")
        for kind, k in taught["taught_by_kind"].items():
            print(f"| {kind} | {k['n']} | {k['closed_exact']:.3f} | {k['taught_exact']:.3f} | "
                  f"{k['found_right_only']:.3f} | {k['found_both']:.3f} |")
        for e in taught["taught_examples"]:
            print(f"  taught: {e['question'][:90]!r} -> {e['reply'][:80]!r} (answer {e['answer']!r})")
        figures["taught"] = taught
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
