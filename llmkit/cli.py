"""`llmkit <verb>`: one verb per stage, no logic of its own.

Each verb is an argument parser plus a `cmd_*` function that calls into the package. A user error
(LLMKitError) prints one line, `error: ...`, and exits with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from llmkit import fill_cli
from llmkit.arg_types import SIGNED_SEED, environment_problem, int_in, undecodable_argument
from llmkit.classify import commands as classify_commands
from llmkit.errors import (ConversionError, GenerationError, LLMKitError, discard_output, flush_output,
                           interrupted, os_error_message, say)
from llmkit.eval import commands as eval_commands
from llmkit.eval import judge_cli as judge_commands
from llmkit.inspect import commands as inspect_commands
from llmkit.rag import cli as rag_commands
from llmkit.scaling import commands as scaling_commands
from llmkit.serve import commands as serve_commands
from llmkit.train import constitution_cli


# what the closing hint of `pretrain` suggests typing, by objective (a masked word; a span's sentinel)
HINT_PROMPTS = {"mlm": "ROMEO: My [MASK] is Juliet.", "span": "ROMEO: My <extra_id_0> is Juliet."}


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


def add_engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inference engine")
    g.add_argument("--compile", action="store_true", help="torch.compile the decode step (slow first call)")
    g.add_argument("--speculative", default=None, metavar="DRAFT",
                   help="speculative decoding: prompt-lookup | layers:N (the model's first N layers) | draft model")
    g.add_argument("--draft-tokens", type=int_in("[1, 2^31)"), default=None,
                   help="tokens drafted per speculative step (with --speculative; default 4)")
    g.add_argument("--prefill-chunk", type=int_in("[1, 2^31)"), default=512,
                   help="prompt tokens prefilled per engine step, between decode steps (chunked prefill)")
    g.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "float32", "float16", "int8"],
                   help="auto: float16 where llmkit's CPU attention kernel reads the cache (int4/int8 models "
                        "with int8 activations), else the model's dtype; int8 (that kernel too): half float16's "
                        "bytes, one scale per position and kv head")


def engine_from(args) -> dict:
    if args.draft_tokens is not None and not args.speculative:  # it would be ignored without a word
        raise GenerationError("--draft-tokens is the tokens drafted per speculative step: give --speculative too")
    return dict(compile=args.compile, speculative=args.speculative, draft_tokens=args.draft_tokens or 4,
                prefill_chunk=args.prefill_chunk, kv_cache_dtype=args.kv_cache_dtype)


def sampling_from(args) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                seed=args.seed, stop_strings=args.stop)


# --- verbs -----------------------------------------------------------------------------------------------
def cmd_convert(args) -> None:
    from llmkit.convert import convert
    from llmkit.device import parse_dtype

    out = convert(args.src, args.out, to=args.to, dtype=parse_dtype(args.dtype), overwrite=args.overwrite)
    print(f"wrote {out}")


def cmd_tokenizer_train(args) -> None:
    from llmkit.atomic import staged_directory
    from llmkit.data.prepare import PrepareStats, expand_inputs, iter_documents
    from llmkit.tokenizer import Tokenizer

    files = expand_inputs(args.input)
    stats = PrepareStats()
    documents = iter_documents(files, args.field, skip_bad=args.skip_bad, stats=stats)
    # a long document comes as an iterator of pieces cut at whitespace: BPE counts words, so pieces train alike
    texts = (piece for doc in documents for piece in ([doc] if isinstance(doc, str) else doc))
    tokenizer = Tokenizer.train(texts, args.vocab_size, args.min_frequency)
    with staged_directory(args.out, overwrite=args.overwrite, what="the tokenizer") as folder:
        tokenizer.save(folder)
    skipped = f"; skipped {stats.skipped_lines} malformed record(s)" if stats.skipped_lines else ""
    print(f"trained a {tokenizer.vocab_size}-token BPE on {len(files)} file(s); "
          f"wrote {Path(args.out) / 'tokenizer.json'}{skipped}")


def cmd_tokenize(args) -> None:
    from llmkit.convert import read_tokenizer

    pieces = read_tokenizer(args.tokenizer).pieces(args.text)
    for token_id, piece in pieces:
        print(f"{token_id:>8}  {piece!r}")
    print(f"{len(pieces)} tokens")


def cmd_generate(args) -> None:
    import llmkit

    llm = llmkit.load(args.model, device=args.device, dtype=args.dtype, **engine_from(args))
    llm.sampling_params(**sampling_from(args))  # a bad sampling value is the error to report first
    wanted = args.max_new_tokens
    prompt_tokens, room = llm.room(args.prompt, wanted or 1, add_bos=not args.no_bos)
    if wanted and room < wanted:  # asked for more than fits: say so rather than stop short without a word
        print(f"note: the prompt has {prompt_tokens} tokens and the model's context is {llm.model.text_context}: "
              f"generating at most {room} tokens, not {wanted}", file=sys.stderr)
    if args.show_probs:
        print(args.prompt)
        for step in llm.stream_probs(args.prompt, top=args.show_probs, add_bos=not args.no_bos, **sampling_from(args)):
            others = ", ".join(f"{text!r} {prob:.0%}" for text, prob in step.alternatives)
            print(f"{step.text!r:>16} {step.prob:6.1%}   | {others}")
        return
    if not llm.model.config.n_encoder_layers:  # an encoder-decoder's reply is not a continuation of its prompt
        print(args.prompt, end="", flush=True)
    for piece in llm.stream(args.prompt, add_bos=not args.no_bos, **sampling_from(args)):
        print(piece, end="", flush=True)
    print()


def cmd_chat(args) -> None:
    import llmkit
    from llmkit.serve.terminal_chat import run_chat

    llm = llmkit.load(args.model, device=args.device, dtype=args.dtype, **engine_from(args))
    failed: list[str] = []
    run_chat(llm, system=args.system, sampling=sampling_from(args), failed=failed,
             **rag_commands.chat_options(args, llm))
    if failed and not sys.stdin.isatty():  # a script piped in: its exit status says that turns failed
        raise GenerationError(f"{len(failed)} chat turn{'s' if len(failed) > 1 else ''} failed; the first: {failed[0]}")


def cmd_quantize(args) -> None:
    from llmkit.convert import quantize_checkpoint

    if args.group_size is not None and 4 not in (args.bits, args.lm_head_bits):  # int8 scales whole rows
        raise ConversionError(f"--group-size {args.group_size} is for int4 layers (--bits 4 or --lm-head-bits 4): "
                              "int8 keeps one scale per output row; leave it out")
    group_size = 32 if args.group_size is None else args.group_size
    info = quantize_checkpoint(args.model, args.out, args.bits, group_size, args.lm_head_bits, overwrite=args.overwrite)
    print(f"int{info['bits']} weights (head int{info['lm_head_bits']}): {info['bytes_before'] / 2**20:.0f} MiB -> "
          f"{info['bytes_after'] / 2**20:.0f} MiB; wrote {info['out']} "
          f"(measure the cost: llmkit eval --model {info['out']} --text FILES)")


def cmd_score(args) -> None:
    import llmkit
    from llmkit.atomic import writable_target
    from llmkit.inspect import InspectError

    if args.png:  # before the model loads and the texts are scored
        if len(args.texts) < 2:
            raise InspectError("--png compares sentences: give two or more texts to score")
        writable_target(args.png)  # not a folder, nor in a missing one
    llm = llmkit.load(args.model, device=args.device, dtype=args.dtype)
    scored = []
    for text in args.texts:
        result = llm.score(text)
        scored.append((text, result))
        print(f"{result.total_logprob:10.3f}  log p({text!r})   perplexity {result.perplexity:.2f}")
        for token in result.tokens:
            print(f"            {token.prob:8.2%}  {token.text!r}")
    from llmkit.inspect.commands import report_sentence_ranking

    report_sentence_ranking(scored, args.png)


def cmd_data_shakespeare(args) -> None:
    from llmkit.data.corpus import fetch_shakespeare

    out = fetch_shakespeare(args.out)
    print(f"wrote {len(list((out / 'train').glob('*.txt')))} training and "
          f"{len(list((out / 'val').glob('*.txt')))} validation texts to {out}")


def cmd_data_download(args) -> None:
    from llmkit.data.corpus import download_corpus

    print(f"wrote {download_corpus(args.name, args.out)}")


def cmd_data_prepare(args) -> None:
    from llmkit.data.prepare import prepare

    stats = prepare(args.input, args.tokenizer, args.out, field_name=args.field, skip_bad=args.skip_bad,
                    shard_tokens=args.shard_tokens, overwrite=args.overwrite)
    print(f"{stats.documents} documents, {stats.tokens:,} tokens, {stats.bytes:,} bytes "
          f"({stats.bytes / max(stats.tokens, 1):.2f} bytes/token) in {len(stats.shards)} shard(s) -> {args.out}"
          + (f"; skipped {stats.skipped_lines} malformed record(s)" if stats.skipped_lines else ""))


def cmd_data_clean(args) -> None:
    from llmkit.data.clean import load_config, parse_inputs, run_pipeline
    from llmkit.data.clean.report import format_table

    summary = run_pipeline(load_config(args.config), args.out, inputs=parse_inputs(args.input, args.text_field),
                           workers=args.workers, engine=args.engine)
    print(format_table(summary))
    out, output = args.out, summary["output"]
    bad = summary["read"]["bad_records"]
    skipped = f"; skipped {bad} malformed record(s)" if bad else ""
    anneal = f", {out}/anneal" if output["anneal_docs"] else ""
    if not output["train_docs"]:  # no part was written: there is no OUT/train to prepare
        also = f"{out}/anneal and " if output["anneal_docs"] else ""
        print(f"0 documents kept in the mix; nothing written to {out}/train; wrote {also}the report "
              f"{out}/report/report.md (it says what removed them){skipped}")
        return
    print(f"wrote {out}/train (next: llmkit data prepare --input {out}/train ...){anneal} "
          f"and the report {out}/report/report.md{skipped}")


def cmd_data_train_quality(args) -> None:
    from llmkit.data.clean import parse_inputs, train_quality

    info = train_quality(parse_inputs(args.good, args.text_field), parse_inputs(args.bad, args.text_field), args.out,
                         bits=args.bits, epochs=args.epochs, max_docs=args.max_docs)
    held = info.get("held_out")
    shown = (f"; held-out accuracy {held['accuracy']:.3f}, precision {held['precision']:.3f}, "
             f"recall {held['recall']:.3f} on {held['n']} documents") if held else ""
    print(f"trained on {info['good_docs']} good and {info['bad_docs']} bad documents{shown}; wrote {args.out}")


def training_config_class(verb: str) -> type:
    """The config dataclass of a training verb (imported when used, so that `llmkit --help` stays fast)."""
    from llmkit.train.config import TrainConfig
    from llmkit.train.post_config import DistillConfig, DPOConfig, RewardConfig, RLConfig, SFTConfig

    return {"pretrain": TrainConfig, "sft": SFTConfig, "reward": RewardConfig, "dpo": DPOConfig, "rlhf": RLConfig,
            "distill": DistillConfig}[verb]


def training_config(args):
    """A training verb's configuration: its preset (--preset) with the command line's field=value overrides."""
    overrides = args.overrides + (["fsdp=true"] if getattr(args, "fsdp", False) else [])
    return training_config_class(args.training_verb).preset(args.preset, overrides)


def cmd_pretrain(args) -> None:
    from llmkit.train.config import machine_note
    from llmkit.train.pretrain import pretrain

    config = training_config(args)
    note = machine_note(args.preset, config)
    if note:
        print(note)
    if args.scaling:  # the token budget from a fitted scaling law instead of 20 tokens per parameter
        config = scaling_commands.scaled_pretrain(config, args.scaling, args.overrides)
    result = pretrain(config, args.out, resume=args.resume)
    shown = "".join(f"; {k} {v:.4f}" for k, v in result.eval.items())  # nothing without validation data
    print(f"done: {result.steps} steps, {result.tokens:,} tokens, {result.train_time_s:.1f} s of training"
          f"{shown}; model in {args.out} (try: llmkit {'fill' if config.objective == 'mlm' else 'generate'} "
          f"--model {args.out} \"{HINT_PROMPTS.get(config.objective, 'ROMEO:')}\")")


def report_post_training(result, out) -> None:
    shown = "".join(f"; {k} {v:.4f}" for k, v in result.eval.items())  # nothing when eval_every=0
    print(f"done: {result.steps} steps, {result.train_time_s:.1f} s of training{shown}; model in {out}")


# each post-training verb's run function, llmkit.train.MODULE.FUNCTION(config, out, resume=...)
POST_TRAINING = {"sft": ("sft", "run_sft"), "reward": ("reward", "run_reward"), "dpo": ("dpo", "run_dpo"),
                 "rlhf": ("rl", "run_rl"), "distill": ("distill", "run_distill")}


def cmd_post_training(args) -> None:
    import importlib

    module, function = POST_TRAINING[args.training_verb]
    run_stage = getattr(importlib.import_module(f"llmkit.train.{module}"), function)
    report_post_training(run_stage(training_config(args), args.out, resume=args.resume), args.out)


def cmd_label(args) -> None:
    from llmkit.train.label import label_by_answer, label_preferences

    if args.judge == "answers":
        stats = label_by_answer(args.policy, args.input, args.out, records=args.records, samples=args.samples,
                                max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
        print(f"wrote {stats['pairs']} preference pairs for {stats['prompts']} prompts to {args.out} "
              f"({stats['on_policy']} rejected replies are the policy's own wrong answers; its greedy accuracy "
              f"{stats['greedy_accuracy']:.3f})")
        if stats["too_long"]:
            print(f"{stats['too_long']} prompts fill the policy's context: no answer, their own pairs kept")
        return
    if args.samples:  # a judge model compares two sampled replies per prompt: more would be ignored
        raise GenerationError(f"--samples {args.samples} is for --judge answers (sampled answers besides the greedy "
                              "one); a judge model compares two replies per prompt: leave it out")
    stats = label_preferences(args.judge, args.policy, args.input, args.out, records=args.records,
                              max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    print(f"wrote {stats['pairs']} preference pairs to {args.out} ({stats['ties']} ties skipped; judge agreed "
          f"with itself under swapped order on {stats['consistent']:.0%} of pairs)")


def cmd_speedrun(args) -> None:
    from llmkit.speedrun import speedrun

    report = speedrun(args.out, size="gpu" if args.gpu else "cpu", overrides=args.overrides)
    for name, result in report["accuracy"].items():
        print(f"{name:>6}: held-out accuracy {result['accuracy']:.3f} "
              f"(95% CI {result['ci95'][0]:.3f}-{result['ci95'][1]:.3f})")
    for turn in report["chat"]:
        print(f"\nuser: {turn['user']}\nassistant: {turn['assistant']}")
    print(f"\ndone in {report['total_s'] / 60:.1f} min; report card: {report['report']}; "
          f"talk to the final model: llmkit chat --model {Path(args.out) / 'dpo'}")


# --- parser ------------------------------------------------------------------------------------------------
class VerbParser(argparse.ArgumentParser):
    """A verb's parser. A training verb's --help ends with its configuration fields, their defaults (and
    its preset's values) and meanings, read from the config dataclass only when help is asked for."""

    def format_help(self) -> str:
        text = super().format_help()
        verb = self.get_default("training_verb")
        if verb is None:
            return text
        from llmkit.config_help import fields_help
        from llmkit.errors import ConfigError
        from llmkit.yaml_config import load_preset

        preset_name = self.get_default("preset")
        try:
            preset = load_preset("train", preset_name, "training preset")[0]
        except ConfigError:
            preset, preset_name = {}, None
        return text + "\n" + fields_help(training_config_class(verb), preset, preset_name)


def add_training_args(p: argparse.ArgumentParser, verb: str, preset: str, overrides_help: str) -> None:
    p.add_argument("--preset", default=preset, help=f"a training preset (llmkit/presets/train; default {preset})")
    p.add_argument("--out", required=True, help="run directory: checkpoints, metrics.jsonl, loss.png, final model")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.set_defaults(training_verb=verb)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmkit", description="A complete LLM system: data, tokenizer, "
                                     "pretraining, alignment, fast inference and serving.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=VerbParser)

    p = verbs.add_parser("convert", help="import a GGUF file / Hugging Face directory, or export to Hugging Face")
    p.add_argument("src", help="a .gguf file, a Hugging Face model directory, an llmkit checkpoint (with --to hf), "
                   "or a named model (smollm2)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--to", choices=["llmkit", "hf"], default="llmkit")
    p.add_argument("--dtype", default=None, help="store weights as float32 | bfloat16 | float16")
    p.add_argument("--overwrite", action="store_true", help="replace an --out that holds other files")
    p.set_defaults(handler=cmd_convert)

    p = verbs.add_parser("tokenizer", help="train a byte-level BPE tokenizer")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    t = sub.add_parser("train", help="train on text files")
    t.add_argument("--input", nargs="+", required=True, help=".txt / .jsonl(.gz) / .parquet files or directories")
    t.add_argument("--field", default="text", help="JSONL field / Parquet column holding the text")
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--min-frequency", type=int, default=2)
    t.add_argument("--skip-bad", action="store_true", help="skip and count malformed JSONL lines instead of stopping")
    t.add_argument("--out", required=True)
    t.add_argument("--overwrite", action="store_true", help="replace an --out that holds other files")
    t.set_defaults(handler=cmd_tokenizer_train)

    p = verbs.add_parser("tokenize", help="show each token of a text with its id")
    p.add_argument("--tokenizer", required=True, help="directory with tokenizer.json, or a .gguf file")
    p.add_argument("text")
    p.set_defaults(handler=cmd_tokenize)

    p = verbs.add_parser("generate", help="continue a prompt")
    add_model_args(p)
    add_sampling_args(p, max_new_tokens=128)
    add_engine_args(p)
    p.add_argument("--no-bos", action="store_true", help="do not prepend the BOS token")
    p.add_argument("--show-probs", type=int_in("[0, 20]"), nargs="?", const=5, default=0, metavar="N",
                   help="print each token with the model's N most likely next tokens and their probabilities "
                        "(N up to 20, the engine's logprobs limit; 0 = off)")
    p.add_argument("prompt")
    p.set_defaults(handler=cmd_generate)

    p = verbs.add_parser("chat", help="multi-turn chat in the terminal (streamed)")
    add_model_args(p)
    add_sampling_args(p, max_new_tokens=512)
    add_engine_args(p)
    p.add_argument("--system", default=None, help="system prompt")
    rag_commands.add_chat_rag_args(p)
    p.set_defaults(handler=cmd_chat)

    serve_commands.add_serve_verb(verbs, add_model_args, add_engine_args, engine_from)

    p = verbs.add_parser("quantize", help="weight-only int8 / int4 quantization of a checkpoint's Linear layers")
    p.add_argument("--model", required=True, help="floating-point checkpoint directory or a named model (smollm2)")
    p.add_argument("--bits", type=int, required=True, choices=[8, 4])
    p.add_argument("--group-size", type=int, default=None, help="int4: input columns sharing a scale (32, 64, 128 "
                   "or 256; default 32)")
    p.add_argument("--lm-head-bits", type=int, default=None, choices=[8, 4],
                   help="the output head's bits (default: 8; llama.cpp's Q4 files also keep it at 8 bits)")
    p.add_argument("--out", required=True, help="output checkpoint directory")
    p.add_argument("--overwrite", action="store_true", help="replace an --out that holds other files")
    p.set_defaults(handler=cmd_quantize)

    p = verbs.add_parser("score", help="log-probability of sentences, token by token")
    add_model_args(p)
    p.add_argument("texts", nargs="+")
    p.add_argument("--png", default=None, help="with several texts: a picture comparing their log-probabilities")
    p.set_defaults(handler=cmd_score)

    p = verbs.add_parser("data", help="corpora, cleaning and token shards")
    data = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    d = data.add_parser("shakespeare", help="fetch the built-in corpus (train / val split)")
    d.add_argument("--out", required=True)
    d.set_defaults(handler=cmd_data_shakespeare)
    d = data.add_parser("download", help="download a known corpus (needs internet): tinystories, fineweb-edu-10bt")
    d.add_argument("name")
    d.add_argument("--out", required=True)
    d.set_defaults(handler=cmd_data_download)
    d = data.add_parser("prepare", help="tokenize documents into token shards")
    d.add_argument("--input", nargs="+", required=True, help=".txt / .jsonl(.gz) / .parquet files or directories")
    d.add_argument("--tokenizer", required=True, help="directory with tokenizer.json")
    d.add_argument("--out", required=True)
    d.add_argument("--field", default="text", help="JSONL field / Parquet column holding the text")
    d.add_argument("--skip-bad", action="store_true", help="skip and count malformed JSONL lines instead of stopping")
    d.add_argument("--shard-tokens", type=int, default=100_000_000)
    d.add_argument("--overwrite", action="store_true", help="replace an --out that holds other files")
    d.set_defaults(handler=cmd_data_prepare)
    d = data.add_parser("clean", help="clean raw text/HTML/WARC/JSONL/Parquet: filters, PII, dedup, quality, mixing")
    d.add_argument("--config", default="default", help="pipeline YAML (default: llmkit/presets/clean/default.yaml)")
    d.add_argument("--input", nargs="+", default=None, help="PATH or NAME=PATH (NAME = source for mixing weights); "
                   "default: the config's inputs")
    d.add_argument("--out", required=True, help="output directory: train/, anneal/, report/")
    d.add_argument("--workers", type=int_in("[0, 2^16)"), default=None,
                   help="processes (default: the config's, 0 = every core)")
    d.add_argument("--engine", choices=["local", "dask"], default=None, help="default: the config's (local)")
    d.add_argument("--text-field", default="text", help="JSONL field / Parquet column holding the text")
    d.set_defaults(handler=cmd_data_clean)
    d = data.add_parser("train-quality", help="train the quality classifier: good reference documents vs web text")
    d.add_argument("--good", nargs="+", required=True, help="reference documents (files or directories)")
    d.add_argument("--bad", nargs="+", required=True, help="random web-like documents (files or directories)")
    d.add_argument("--out", required=True, help="model file (.safetensors)")
    d.add_argument("--bits", type=int, default=20, help="hash buckets = 2^bits")
    d.add_argument("--epochs", type=int, default=16)
    d.add_argument("--max-docs", type=int, default=100_000, help="documents read per side")
    d.add_argument("--text-field", default="text", help="JSONL field / Parquet column holding the text")
    d.set_defaults(handler=cmd_data_train_quality)

    p = verbs.add_parser("pretrain", help="pretrain a model (next-token prediction)")
    add_training_args(p, "pretrain", "shakespeare-cpu", "field=value or model.field=value (fields below)")
    p.add_argument("--fsdp", action="store_true", help="under torchrun: shard parameters with FSDP2 instead of DDP "
                   "(same as fsdp=true)")
    p.add_argument("--scaling", default=None, metavar="DIR", help="token budget from DIR/fit.json (llmkit scaling fit)")
    p.set_defaults(handler=cmd_pretrain)

    eval_commands.add_eval_verb(verbs)

    post_stages = [
        ("sft", "supervised fine-tuning on conversations or prompt-completion pairs (full, LoRA or prompt tuning)",
         "sft-assistant"),
        ("reward", "train a reward model (Transformer + scalar head, Bradley-Terry on chosen vs rejected)",
         "reward-assistant"),
        ("dpo", "Direct Preference Optimization (or IPO) on preference pairs", "dpo-assistant"),
        ("rlhf", "RLHF: RLOO / GRPO against a reward model with a KL penalty, rollouts by the engine", "rlhf-assistant"),
        ("distill", "train a student on a teacher's token distributions (forward KL with temperature)",
         "distill-smollm2"),
    ]
    for verb, text, preset in post_stages:
        p = verbs.add_parser(verb, help=text)
        add_training_args(p, verb, preset,
                          "field=value (fields below), e.g. init_from=DIR data=FILE.jsonl peft=lora")
        p.set_defaults(handler=cmd_post_training)

    p = verbs.add_parser("label", help="RLAIF: sample two replies per prompt and let a judge model pick the better; "
                         "or, with --judge answers, pair the policy's wrong answers with the reference ones")
    p.add_argument("--judge", required=True, help="judge model: checkpoint directory or named model (smollm2); "
                   "'answers': the records' \"answer\" field is the judge (on-policy pairs from the policy's mistakes)")
    p.add_argument("--policy", required=True, help="model whose replies are judged")
    p.add_argument("--input", required=True, help="JSONL of prompts (any post-training format with a prompt)")
    p.add_argument("--out", required=True, help="output JSONL of {prompt, chosen, rejected}")
    p.add_argument("--records", type=int, nargs=2, default=None, metavar=("START", "STOP"), help="use these records only")
    p.add_argument("--samples", type=int, default=0, help="--judge answers: sampled answers per prompt besides the greedy one")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int_in(SIGNED_SEED), default=0, help="per-reply sampling seeds derive from it")
    p.set_defaults(handler=cmd_label)

    p = verbs.add_parser("speedrun", help="corpus -> tokenizer -> pretrain -> SFT -> reward -> DPO -> RLHF -> "
                         "evaluation -> report card, in 20 minutes on a laptop CPU")
    p.add_argument("--out", required=True, help="run directory (one sub-directory per stage, report.md)")
    p.add_argument("--gpu", action="store_true", help="the larger size for a GPU")
    p.add_argument("overrides", nargs="*", help="STAGE.field=value, e.g. pretrain.time_limit_s=300 sft.epochs=3")
    p.set_defaults(handler=cmd_speedrun)
    inspect_commands.add_inspect_verb(verbs, add_model_args)
    fill_cli.add_fill_verb(verbs, add_model_args)
    rag_commands.add_rag_verb(verbs, add_model_args, add_sampling_args)
    scaling_commands.add_scaling_verb(verbs)
    constitution_cli.add_constitution_verb(verbs, add_model_args)
    judge_commands.add_judge_verbs(verbs, add_model_args)
    classify_commands.add_classify_verb(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        code = run(argv)
        flush_output()  # the last of the output is written here, where a failure is caught (below), not at exit
        return code
    except BrokenPipeError:  # a closed reader (`| head`) is not an error
        discard_output()
        return 0
    except OSError as e:  # stdout on a full disk
        discard_output()
        say(f"error: {os_error_message(e)}")
        return 2
    finally:  # argparse's --help and usage errors leave through SystemExit with the text still buffered
        try:
            flush_output()
        except (OSError, ValueError):
            discard_output()


def run(argv: list[str] | None) -> int:
    problem = undecodable_argument(sys.argv[1:] if argv is None else argv)
    if problem:
        say(f"error: {problem}")
        return 2
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides += extra  # field=value after an option (`--out run lr=1`): overrides all the same
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    problem = environment_problem(os.environ)
    if problem:
        say(f"error: {problem}")
        return 2
    if getattr(args, "handler", None) is not serve_commands.cmd_serve:
        # The engine logs each failed request for a server's operator (Python's last-resort handler prints it);
        # every other verb reports the failure itself, as its one `error:` line, so it is not printed twice.
        engine_log = logging.getLogger("llmkit.infer")
        if not any(isinstance(h, logging.NullHandler) for h in engine_log.handlers):  # main() may run many times
            engine_log.addHandler(logging.NullHandler())
    try:
        args.handler(args)
        return 0
    except LLMKitError as e:
        say(f"error: {e}")
        return 2
    except BrokenPipeError:
        raise  # main's: a closed reader
    except OSError as e:
        # Files the user named, on filesystems they chose: full, read-only, gone, not a folder. The verbs
        # turn the ones they expect into LLMKitErrors; this is the net for the rest (a disk that fills up
        # mid-run), still one line.
        say(f"error: {os_error_message(e)}")
        return 2
    except KeyboardInterrupt as e:
        say(interrupted(e, getattr(args, "out", None), resumable=hasattr(args, "resume")))
        return 130


if __name__ == "__main__":
    sys.exit(main())
