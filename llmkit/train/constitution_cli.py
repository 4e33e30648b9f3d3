"""`llmkit constitution revise|label`: the arguments and the printed outcome of the Constitutional AI
verbs (train/constitution.py does the work). Kept here so that cli.py holds one line for the verb."""

from __future__ import annotations

import argparse

from llmkit.arg_types import SIGNED_SEED, float_in, int_in


def add_constitution_verb(verbs, add_model_args) -> None:
    p = verbs.add_parser("constitution", help="Constitutional AI: critique and revise answers by written principles "
                         "(SFT data), or label answer pairs by principle (DPO data)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("revise", help="SL-CAI: answer, critique by a principle, revise (N rounds) -> sft.jsonl")
    _common(a, add_model_args, temperature=0.7)
    a.add_argument("--rounds", type=int, default=1, help="critique-and-revise rounds per prompt")
    a.add_argument("--top-p", type=float, default=0.9)
    a.set_defaults(handler=cmd_revise)
    a = actions.add_parser("label", help="RL-CAI: two sampled answers per prompt, a judge picks by a principle "
                           "in both orders -> pairs.jsonl")
    _common(a, add_model_args, temperature=1.0)
    a.add_argument("--judge", default=None, help="judge: a checkpoint directory, named model (smollm2) or an "
                   "OpenAI-compatible URL (http://HOST:PORT/v1); default: the --model itself")
    a.add_argument("--rule", choices=["both-orders", "averaged"], default="both-orders",
                   help="which pairs are kept: both-orders = the same answer preferred in both positions; averaged = "
                   "the judge's probability averaged over the two positions beyond 0.5 by more than --margin (for a "
                   "judge with a position bias, e.g. a small model)")
    a.add_argument("--margin", type=float_in("[0, 0.5)"), default=0.0,
                   help="--rule averaged: how far from 0.5 the averaged probability must be")
    a.set_defaults(handler=cmd_label)


def _common(a: argparse.ArgumentParser, add_model_args, temperature: float) -> None:
    add_model_args(a)
    a.add_argument("--prompts", default="hh-rlhf", help="prompts: a JSONL/JSON file in any post-training format "
                   "(messages, prompt, prompt/completion, chosen/rejected, HH-RLHF transcripts), or 'hh-rlhf' "
                   "(harmless-base train split, downloaded once from the Hugging Face Hub)")
    a.add_argument("--records", type=int, nargs=2, default=None, metavar=("START", "STOP"),
                   help="use these records of the file only")
    a.add_argument("--limit", type=int, default=0, help="the first N prompts only (0: all)")
    a.add_argument("--principles", default="default", help="a constitution: 'default' (shipped) or your YAML/JSON "
                   "file of principles [{name, critique, revision, compare}]")
    a.add_argument("--out", required=True, help="output directory (report.md, summary.json and the data files)")
    a.add_argument("--overwrite", action="store_true", help="replace an --out that holds other files")
    a.add_argument("--seed", type=int_in(SIGNED_SEED), default=0, help="principles and sampling seeds are drawn from it")
    a.add_argument("--max-new-tokens", type=int, default=128, help="per answer, critique and revision")
    a.add_argument("--temperature", type=float, default=temperature, help="0 = greedy")
    a.add_argument("--max-batch-size", type=int, default=32, help="requests decoded together by the engine")


def _prepare(args):
    """The principles and prompts (checked before any model is loaded), then the model."""
    import llmkit
    from llmkit.train.constitution import read_prompts
    from llmkit.train.principles import load_constitution

    constitution = load_constitution(args.principles)
    prompts = read_prompts(args.prompts, args.records, args.limit)
    llm = llmkit.load(args.model, device=args.device, dtype=args.dtype, max_batch_size=args.max_batch_size)
    settings = {"model": str(args.model), "prompts": str(args.prompts), "records": args.records, "limit": args.limit}
    return constitution, prompts, llm, settings


def cmd_revise(args) -> None:
    from llmkit.train.constitution import revise

    constitution, prompts, llm, settings = _prepare(args)
    summary = revise(llm, prompts, constitution, args.out, rounds=args.rounds, max_new_tokens=args.max_new_tokens,
                     temperature=args.temperature, top_p=args.top_p, seed=args.seed, overwrite=args.overwrite,
                     settings=settings)
    changed = ", ".join(f"round {r['round']} {r['changed_rate']:.0%}" for r in summary["per_round"])
    print(f"wrote {summary['kept']} revised answers to {args.out}/sft.jsonl ({summary['dropped']} prompts too long "
          f"for the context); revision changed the answer: {changed}; critiques in {args.out}/critiques.jsonl, "
          f"report in {args.out}/report.md")


def cmd_label(args) -> None:
    from llmkit.train.constitution import label
    from llmkit.train.label import load_judge

    constitution, prompts, llm, settings = _prepare(args)
    judge = load_judge(args.judge or args.model, args.model, llm)
    summary = label(judge, llm, prompts, constitution, args.out, max_new_tokens=args.max_new_tokens,
                    temperature=args.temperature, seed=args.seed, overwrite=args.overwrite,
                    settings={**settings, "judge": str(args.judge or args.model)}, rule=args.rule, margin=args.margin)
    print(f"wrote {summary['pairs']} preference pairs to {args.out}/pairs.jsonl from {summary['prompts']} prompts "
          f"({summary['identical']} identical answer pairs, {summary['undecided']} not kept by rule {args.rule}; "
          f"two-order agreement {summary['order_agreement']:.0%}); report in {args.out}/report.md")
