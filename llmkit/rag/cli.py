"""`llmkit rag index | add | search | ask`: the verb's arguments and handlers (llmkit/cli.py dispatches here).

    llmkit rag index --input plays/ --out plays.idx --model smollm2          # BM25 + dense vectors
    llmkit rag add plays.idx --input poems/                                  # embeds only the new files
    llmkit rag ask plays.idx "Who says 'Friends, Romans, countrymen'?" --model smollm2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llmkit.arg_types import COUNT, SEED, int_in
from llmkit.errors import LLMKitError


def add_rag_verb(verbs, add_model_args, add_sampling_args) -> None:
    p = verbs.add_parser("rag", help="retrieval-augmented answers with citations: index files, search, ask")
    rag = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    d = rag.add_parser("index", help="chunk files (every format `data clean` reads) into a BM25 (+ dense) index")
    d.add_argument("--input", nargs="+", required=True, help=".txt .md .jsonl[.gz] .parquet .html .warc files or folders")
    d.add_argument("--out", required=True, help="index folder")
    size = d.add_mutually_exclusive_group()
    size.add_argument("--chunk-chars", type=int_in(COUNT), default=None, help="chunk length in characters (default 1000)")
    size.add_argument("--chunk-tokens", type=int_in(COUNT), default=None, help="chunk length in tokens of --model's tokenizer")
    d.add_argument("--overlap", type=int_in("[0, 2^31)"), default=None, help="shared between neighbouring chunks (default: a fifth)")
    d.add_argument("--dense", action=argparse.BooleanOptionalAction, default=None,
                   help="also store dense vectors from --model (default: when --model is given)")
    d.add_argument("--model", default=None, help="embedding model: checkpoint directory or named model (smollm2)")
    d.add_argument("--field", default="text", help="JSONL field / Parquet column holding the text")
    d.add_argument("--overwrite", action="store_true", help="replace an --out that holds other files")
    _device_args(d)
    d.set_defaults(handler=cmd_rag_index)

    d = rag.add_parser("add", help="add files to an index (only their chunks are embedded)")
    d.add_argument("index")
    d.add_argument("--input", nargs="+", required=True)
    d.add_argument("--model", default=None, help="embedding model (default: the one the index was built with)")
    _device_args(d)
    d.set_defaults(handler=cmd_rag_add)

    d = rag.add_parser("search", help="the passages an index retrieves for a query, with their sources")
    d.add_argument("index")
    d.add_argument("query")
    _search_args(d)
    d.add_argument("--model", default=None, help="embedding model for dense/hybrid (default: the index's)")
    _device_args(d)
    d.set_defaults(handler=cmd_rag_search)

    d = rag.add_parser("ask", help="answer a question from retrieved passages and cite them")
    d.add_argument("index")
    d.add_argument("question")
    add_model_args(d)
    add_sampling_args(d, max_new_tokens=256)
    d.set_defaults(temperature=0.0)  # factual answers: greedy unless asked otherwise
    _search_args(d)
    d.add_argument("--show-passages", action="store_true", help="print the retrieved passages before the answer")
    d.set_defaults(handler=cmd_rag_ask)

    d = rag.add_parser("make-tool-data", help="arithmetic word problems solved with calculator calls, and (with "
                       "--index) play questions solved with search calls (SFT data, TRL messages with tool_calls)")
    d.add_argument("--out", required=True, help=".jsonl file to write")
    d.add_argument("--n", type=int_in("[0, 2^31)"), default=1000, help="arithmetic problems")
    d.add_argument("--seed", type=int_in(SEED), default=0)
    d.add_argument("--index", default=None, help="an index of the plays (`llmkit rag index --input` the built-in "
                   "corpus): adds --questions built-in task training questions answered by searching it")
    d.add_argument("--questions", type=int_in("[0, 2^31)"), default=500, help="with --index: play questions")
    d.add_argument("--k", type=int_in(COUNT), default=2, help="with --index: passages each search returns")
    d.add_argument("--mode", choices=["bm25", "dense", "hybrid"], default="bm25",
                   help="with --index: how the search ranks (dense and hybrid embed with the index's model)")
    d.set_defaults(handler=cmd_rag_make_tool_data)


def _device_args(p) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16")


def _search_args(p) -> None:
    p.add_argument("--k", type=int_in(COUNT), default=5, help="passages to retrieve")
    p.add_argument("--mode", choices=["bm25", "dense", "hybrid"], default=None,
                   help="default: hybrid when the index has dense vectors, else bm25")


def model_key(name: str) -> str:
    """A model as an index records it: a checkpoint directory by its absolute path, a named model by name."""
    return str(Path(name).resolve()) if Path(name).is_dir() else name


def _progress(what: str):
    """A callback that shows (done, total) on one line of stderr, every 5%."""
    shown = [-1]

    def report(done: int, total: int) -> None:
        twentieths = done * 20 // max(total, 1)
        if twentieths != shown[0]:
            shown[0] = twentieths
            print(f"\r{what}: {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)
    return report


def _embedder(model: str, args):
    import llmkit
    from llmkit.rag.embed import ModelEmbedder

    llm = llmkit.load(model, device=args.device, dtype=args.dtype)
    return ModelEmbedder(llm.model, llm.tokenizer, model_key(model)), llm


def _notice(message: str) -> None:
    print(message, file=sys.stderr)


def _query(text: str, what: str) -> str:
    if not text.strip():
        raise LLMKitError(f"the {what} is empty; give words to look for, e.g. llmkit rag search INDEX \"lighthouse\"")
    return text


def cmd_rag_index(args) -> None:
    from llmkit.rag.chunking import ChunkingConfig, check_apart
    from llmkit.rag.index import RagIndex

    check_apart(args.input, args.out)  # before any work: --out replaced must not delete or swallow an input
    dense = args.dense if args.dense is not None else args.model is not None
    if (dense or args.chunk_tokens) and args.model is None:
        raise LLMKitError(f"{'--dense' if dense else '--chunk-tokens'} needs --model (the model whose "
                          f"{'hidden states embed the chunks' if dense else 'tokenizer counts the tokens'})")
    unit, size = (("tokens", args.chunk_tokens) if args.chunk_tokens is not None else
                  ("chars", 1000 if args.chunk_chars is None else args.chunk_chars))
    overlap = args.overlap if args.overlap is not None else size // 5
    config = ChunkingConfig(unit=unit, size=size, overlap=overlap, text_field=args.field)
    embedder = tokenizer = None
    if args.model is not None:
        embedder, llm = _embedder(args.model, args)
        tokenizer = llm.tokenizer
    index = RagIndex.build(args.input, config, embedder if dense else None, tokenizer,
                           progress=_progress("embedding chunks") if dense else None, notice=_notice)
    index.save(args.out, overwrite=args.overwrite)
    print(f"indexed {len(index.meta['files'])} file(s) as {len(index.chunks)} chunks "
          f"({'BM25 + dense vectors' if dense else 'BM25'}); wrote {args.out} "
          f"(next: llmkit rag ask {args.out} \"question\" --model MODEL)")


def cmd_rag_add(args) -> None:
    from llmkit.rag.index import RagIndex

    index = RagIndex.load(args.index)
    folder = Path(args.index).resolve()
    for item in args.input:
        if Path(item).resolve() == folder or folder in Path(item).resolve().parents:
            raise LLMKitError(f"--input {item}: is inside the index {args.index}, which is replaced when the index "
                              "is written; keep documents outside the index folder")
    embedder = tokenizer = None
    model = args.model or (index.meta["dense"]["model"] if index.has_dense else None)
    if index.meta["chunking"]["unit"] == "tokens" and model is None:
        raise LLMKitError(f"{args.index}: chunks are measured in tokens: give --model (the tokenizer it was built with)")
    if model is not None:
        embedder, llm = _embedder(model, args)
        tokenizer = llm.tokenizer
    before = len(index.chunks)
    index = index.add(args.input, embedder if index.has_dense else None, tokenizer, _progress("embedding chunks"),
                      notice=_notice)
    index.save(args.index, overwrite=False)
    print(f"added {len(index.chunks) - before} chunks; {args.index} holds {len(index.chunks)}")


def _search_embedder(index, mode: str | None, model: str | None, args, llm=None):
    """The embedder a dense or hybrid search needs: the loaded model when it is the index's, else the index's."""
    if (mode or index.default_mode()) == "bm25":
        return None
    from llmkit.rag.embed import ModelEmbedder

    recorded = index.meta["dense"]["model"] if index.has_dense else None
    if llm is not None and model is not None and model_key(model) == recorded:
        return ModelEmbedder(llm.model, llm.tokenizer, recorded)
    return _embedder(recorded, args)[0] if recorded else None


def cmd_rag_search(args) -> None:
    from llmkit.rag.index import RagIndex

    index = RagIndex.load(args.index)
    _query(args.query, "query")
    embedder = None
    if (args.mode or index.default_mode()) != "bm25" and index.has_dense:
        embedder = _embedder(args.model or index.meta["dense"]["model"], args)[0]
    hits = index.search(args.query, args.k, args.mode, embedder)
    for hit in hits:
        print(f"[{hit.rank}] {hit.chunk.citation()}  (score {hit.score:.4f})")
        print("    " + hit.chunk.text.strip().replace("\n", "\n    "))
    if not hits:
        print(f"no chunk matches {args.query[:80]!r}: none of its words (of two or more letters or digits) is in "
              f"the index's {len(index.chunks)} chunks; try other words" +
              ("" if index.has_dense else ", or an index with dense vectors (--model) to search by meaning"))
    for warning in index.changed_sources(hits):
        _notice(f"warning: {warning}")


def cmd_rag_ask(args) -> None:
    import llmkit
    from llmkit.rag.answer import RagAnswer, stream_answer
    from llmkit.rag.index import RagIndex

    index = RagIndex.load(args.index)  # a missing index is the first thing to report, before loading a model
    _query(args.question, "question")
    llm = llmkit.load(args.model, device=args.device, dtype=args.dtype)
    embedder = _search_embedder(index, args.mode, args.model, args, llm)
    sampling = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                    seed=args.seed, stop_strings=args.stop)
    answer = RagAnswer(args.question)
    pieces = stream_answer(llm, index, args.question, args.k, args.mode, embedder, answer, **sampling)
    first = next(pieces, "")  # retrieval has run: the passages can be shown before the answer streams
    if args.show_passages:
        for number, hit in enumerate(answer.passages, 1):
            print(f"[{number}] {hit.chunk.citation()}\n    " + hit.chunk.text.strip().replace("\n", "\n    "))
        print()
    print(first, end="", flush=True)
    for piece in pieces:
        print(piece, end="", flush=True)
    print("\n\nSources:" if answer.passages else "\n\n(no passages retrieved)")
    for line in answer.sources():
        print(line)
    cited = [answer.passages[n - 1] for n in answer.cited or range(1, len(answer.passages) + 1)]
    for warning in index.changed_sources(cited):
        _notice(f"warning: {warning}")


# --- `llmkit chat --rag INDEX --tools calculator,search` and `llmkit serve --rag INDEX` --------------------------
def add_chat_rag_args(p, tools: bool = True) -> None:
    g = p.add_argument_group("retrieval and tools")
    g.add_argument("--rag", default=None, metavar="INDEX", help="answer every turn from passages of this index "
                   "(`llmkit rag index`), citing them")
    _search_args(g)
    if tools:
        g.add_argument("--tools", default=None, help="comma-separated tools the model may call: calculator, "
                       "search (retrieval over --rag INDEX)")
        g.add_argument("--max-tool-rounds", type=int, default=4, help="rounds of tool calls per turn")


def retriever_from(args, llm):
    """The `Retriever` of --rag/--k/--mode (None without --rag); dense search embeds with the loaded model
    when it is the index's, else loads the index's model."""
    if args.rag is None:
        return None
    return make_retriever(args.rag, args.k, args.mode, args.model, llm, args.device, args.dtype)


def make_retriever(path: str, k: int, mode: str | None, model: str, llm, device=None, dtype=None):
    """A `Retriever` over the index at `path`; dense search embeds with `llm` when the index was embedded
    with `model`, else loads the index's model."""
    from llmkit.rag.chat import Retriever
    from llmkit.rag.index import MODES, RagIndex

    index = RagIndex.load(path)
    if k < 1:
        raise LLMKitError(f"--k {k}: retrieve at least one passage")
    if mode is not None and mode not in MODES:
        raise LLMKitError(f"--mode {mode!r}: use one of {', '.join(MODES)}")
    where = argparse.Namespace(device=device, dtype=dtype)
    return Retriever(index, k, mode, _search_embedder(index, mode, model, where, llm))


def chat_options(args, llm) -> dict:
    """run_chat's retrieval and tool arguments from the command line."""
    retriever = retriever_from(args, llm)
    names = [t.strip() for t in (args.tools or "").split(",") if t.strip()]
    tools: list = []
    for name in names:
        if name == "search":
            if retriever is None:
                raise LLMKitError("--tools search searches an index: give it with --rag INDEX")
            from llmkit.rag.chat import search_tool

            tools.append(search_tool(retriever))
        else:
            from llmkit.rag.tools import resolve_tools

            tools += resolve_tools([name])  # an unknown name is refused with the list of built-in tools
    if args.max_tool_rounds < 0:
        raise LLMKitError(f"--max-tool-rounds {args.max_tool_rounds}: give 0 or more")
    # With tools, retrieval is one of them (search): a turn does not also retrieve on its own.
    return {"retriever": None if tools else retriever, "tools": tools or None, "max_tool_rounds": args.max_tool_rounds}


def cmd_rag_make_tool_data(args) -> None:
    import json
    import random

    from llmkit.atomic import atomic_open
    from llmkit.rag.tool_data import tool_examples

    examples = tool_examples(args.n, args.seed)
    searched = 0
    if args.index:
        from llmkit.rag.chat import search_tool
        from llmkit.rag.tool_data import builtin_search_examples

        retriever = make_retriever(args.index, args.k, args.mode, None, None)
        found, skipped = builtin_search_examples(search_tool(retriever), args.questions,
                                                 _progress("play questions answered from the index"))
        searched = len(found)
        examples += found
        random.Random(args.seed).shuffle(examples)
        print(f"{searched} play questions whose answer the top {args.k} passages hold ({skipped} skipped: answer not "
              "in the passages, or a passage question)", file=sys.stderr)
    if not examples:
        raise LLMKitError("nothing to write: --n 0 and no --index questions")
    with atomic_open(args.out, "w", encoding="utf-8") as f:
        for example in examples:
            f.write(json.dumps(example, ensure_ascii=False) + "\n")
    print(f"wrote {len(examples)} tool-use conversations ({args.n} calculator, {searched} search) to {args.out} "
          f"(next: llmkit sft --preset sft-tools-smollm2-lora --out RUN data={args.out})")
