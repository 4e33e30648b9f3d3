"""The command-line side of `llmkit fill`: `llmkit/cli.py` calls `add_fill_verb` once; the model is
loaded when the command runs."""

from __future__ import annotations

from llmkit.arg_types import COUNT, int_in


def add_fill_verb(verbs, add_model_args) -> None:
    p = verbs.add_parser("fill", help="an encoder's top predictions for each [MASK] of a text, with probabilities")
    add_model_args(p)
    p.add_argument("text", help='e.g. "The [MASK] ate the cheese"')
    p.add_argument("--top", type=int_in(COUNT), default=5, help="candidates shown per mask")  # refused before loading
    p.set_defaults(handler=cmd_fill)


def cmd_fill(args) -> None:
    import llmkit
    from llmkit.fill import prediction_table

    llm = llmkit.load(args.model, device=args.device, dtype=args.dtype)
    print(prediction_table(llm.fill(args.text, top=args.top)))
