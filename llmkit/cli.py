"""`llmkit <verb>`: one verb per stage, no logic of its own.

A user error (LLMKitError) prints one line, `error: ...`, and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llmkit.errors import LLMKitError


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint directory or a named model (smollm2)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: bf16 on GPU, fp32 on CPU)")


def add_sampling_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    g.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--top-p", type=float, default=0.9)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def sampling_from(args) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                seed=args.seed, stop_strings=args.stop)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmkit", description="A complete LLM system: data, tokenizer, "
                                     "pretraining, alignment, fast inference and serving.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("convert", help="import a GGUF file / Hugging Face directory, or export to Hugging Face")
    p.add_argument("src", help="a .gguf file, a Hugging Face model directory, an llmkit checkpoint (with --to hf), "
                   "or a named model (smollm2)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--to", choices=["llmkit", "hf"], default="llmkit")
    p.add_argument("--dtype", default=None, help="store weights as float32 | bfloat16 | float16")

    p = verbs.add_parser("tokenizer", help="train a byte-level BPE tokenizer")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    t = sub.add_parser("train", help="train on text files")
    t.add_argument("--input", nargs="+", required=True, help="text files or directories of .txt files")
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--min-frequency", type=int, default=2)
    t.add_argument("--out", required=True)

    p = verbs.add_parser("tokenize", help="show each token of a text with its id")
    p.add_argument("--tokenizer", required=True, help="directory with tokenizer.json, or a .gguf file")
    p.add_argument("text")

    p = verbs.add_parser("generate", help="continue a prompt")
    add_model_args(p)
    add_sampling_args(p, max_new_tokens=128)
    p.add_argument("--no-bos", action="store_true", help="do not prepend the BOS token")
    p.add_argument("prompt")

    p = verbs.add_parser("chat", help="multi-turn chat in the terminal (streamed)")
    add_model_args(p)
    add_sampling_args(p, max_new_tokens=512)
    p.add_argument("--system", default=None, help="system prompt")

    p = verbs.add_parser("score", help="log-probability of sentences, token by token")
    add_model_args(p)
    p.add_argument("texts", nargs="+")
    return parser


def run(args) -> int:
    if args.verb == "convert":
        from llmkit.api import parse_dtype
        from llmkit.convert import convert

        out = convert(args.src, args.out, to=args.to, dtype=parse_dtype(args.dtype))
        print(f"wrote {out}")
    elif args.verb == "tokenizer":
        from llmkit.tokenizer import Tokenizer, read_text_files

        files = expand_inputs(args.input)
        tokenizer = Tokenizer.train(read_text_files(files), args.vocab_size, args.min_frequency)
        tokenizer.save(args.out)
        print(f"trained a {tokenizer.vocab_size}-token BPE on {len(files)} file(s); wrote {Path(args.out) / 'tokenizer.json'}")
    elif args.verb == "tokenize":
        from llmkit.tokenizer import Tokenizer

        pieces = Tokenizer.load(args.tokenizer).pieces(args.text)
        for token_id, piece in pieces:
            print(f"{token_id:>8}  {piece!r}")
        print(f"{len(pieces)} tokens")
    elif args.verb == "generate":
        import llmkit

        llm = llmkit.load(args.model, device=args.device, dtype=args.dtype)
        print(args.prompt, end="", flush=True)
        for piece in llm.stream(args.prompt, add_bos=not args.no_bos, **sampling_from(args)):
            print(piece, end="", flush=True)
        print()
    elif args.verb == "chat":
        import llmkit
        from llmkit.serve.terminal_chat import run_chat

        llm = llmkit.load(args.model, device=args.device, dtype=args.dtype)
        run_chat(llm, system=args.system, sampling=sampling_from(args))
    elif args.verb == "score":
        import llmkit

        llm = llmkit.load(args.model, device=args.device, dtype=args.dtype)
        for text in args.texts:
            result = llm.score(text)
            print(f"{result.total_logprob:10.3f}  log p({text!r})   perplexity {result.perplexity:.2f}")
            for token in result.tokens:
                print(f"            {token.prob:8.2%}  {token.text!r}")
    return 0


def expand_inputs(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*.txt") if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise LLMKitError(f"{path}: no such file or directory")
    if not files:
        raise LLMKitError(f"no .txt files found in {', '.join(inputs)}")
    return files


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except LLMKitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
