"""The command-line side of `llmkit.inspect`: the `llmkit inspect` verb, `llmkit eval --analogies /
--similarity` and the sentence ranking of `llmkit score`. `llmkit/cli.py` calls `add_inspect_verb` and
`add_word_eval_args` once each; nothing here imports the CLI module."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from llmkit.arg_types import COUNT, int_in
from llmkit.inspect import InspectError


def load_model_and_tokenizer(name: str, device: str | None, dtype: str | None):
    """The model and tokenizer alone (no engine, no KV cache): fp32 on the CPU unless told otherwise."""
    from llmkit.api import load_inference_model
    from llmkit.checkpoint import load_quantization, load_tokenizer
    from llmkit.convert import resolve_model
    from llmkit.device import inference_dtype, parse_dtype, resolve_device

    directory = resolve_model(name)
    device = resolve_device(device)
    dtype = parse_dtype(dtype) or inference_dtype(device, quantized=bool(load_quantization(directory)))
    return load_inference_model(directory, device, dtype), load_tokenizer(directory)


def add_inspect_verb(verbs, add_model_args) -> None:
    p = verbs.add_parser("inspect", help="look inside a model: attention weights, the logit lens, word embeddings")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    a = actions.add_parser("attention", help="which tokens a token attends to, per head and layer; PNG / HTML")
    add_model_args(a)
    a.add_argument("text")
    a.add_argument("--token", default=None, help="the token that attends: an index (-1 = last) or a word "
                   "(its last occurrence); default the last token")
    a.add_argument("--layer", type=int, default=None, help="one layer: show each of its heads (default: every layer's mean)")
    a.add_argument("--head", type=int, default=None, help="one head only")
    a.add_argument("--top", type=int_in(COUNT), default=5, help="tokens shown per line")
    a.add_argument("--png", default=None, help="heatmaps: one panel per head of --layer, else one per layer")
    a.add_argument("--html", default=None, help="a self-contained page: click a token to see its attention lines")
    a.add_argument("--no-bos", action="store_true", help="do not prepend the BOS token")
    a.set_defaults(handler=cmd_inspect_attention)

    a = actions.add_parser("lens", help="the logit lens: the next token each layer would predict")
    add_model_args(a)
    a.add_argument("text")
    a.add_argument("--positions", default=None, help="columns of the table: 'all', an index, or A:B (default: the last 8)")
    a.add_argument("--top", type=int_in(COUNT), default=5, help="tokens kept per layer and position")
    a.add_argument("--png", default=None, help="a grid of layers x positions (every position unless --positions)")
    a.add_argument("--no-bos", action="store_true", help="do not prepend the BOS token")
    a.set_defaults(handler=cmd_inspect_lens)

    a = actions.add_parser("embeddings", help="nearest words, analogies and a 2-D map of the input embeddings")
    add_model_args(a)
    what = a.add_mutually_exclusive_group(required=True)
    what.add_argument("--neighbours", metavar="WORD", help="the words nearest to WORD by cosine")
    what.add_argument("--analogy", metavar="EXPR", help='3CosAdd, e.g. "king - man + woman"')
    what.add_argument("--map", nargs="+", metavar="WORD", help="a 2-D PCA picture of these words (needs --png)")
    a.add_argument("--top", type=int_in(COUNT), default=10)
    a.add_argument("--png", default=None, help="--map: the picture's file")
    a.set_defaults(handler=cmd_inspect_embeddings)


def add_word_eval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("word vectors (analogies, similarity)")
    g.add_argument("--analogies", default=None, metavar="FILE",
                   help="3CosAdd accuracy per section on a questions-words.txt file")
    g.add_argument("--similarity", nargs="+", default=None, metavar="FILE",
                   help="Spearman correlation with human scores (WordSim353, SimLex-999: word1 word2 score lines)")
    g.add_argument("--embeddings", default="input", help="input (the embedding table) | hidden (the residual stream "
                   "of every layer, words in --template) | hidden:L (layer L)")
    g.add_argument("--template", default="The word is {word}", help="hidden: the text a word is put in (after BOS; "
                   "the word alone right after BOS sits where massive activations are, and scores far lower)")


def cmd_inspect_attention(args) -> None:
    from llmkit.inspect.attention import attention_maps, check_index, format_attention, token_position
    from llmkit.inspect.attention_html import write_attention_html
    from llmkit.inspect.plots import plot_attention

    model, tokenizer = load_model_and_tokenizer(args.model, args.device, args.dtype)
    if args.layer is not None:
        check_index("layer", args.layer, model.config.n_layers)
    if args.head is not None:
        check_index("head", args.head, model.config.n_heads)
    start = time.perf_counter()
    maps = attention_maps(model, tokenizer, args.text, add_bos=not args.no_bos)
    seconds = time.perf_counter() - start
    position = token_position(maps.tokens, args.token)
    print(format_attention(maps, position, args.layer, args.head, args.top))
    print(f"({len(maps.tokens)} tokens, computed in {seconds:.2f} s)")
    if args.png:
        print(f"wrote {plot_attention(maps, args.png, args.layer, args.head)}")
    if args.html:
        print(f"wrote {write_attention_html(maps, args.html, title=f'{args.model}: {args.text[:80]}', layer=args.layer)}")


def cmd_inspect_lens(args) -> None:
    from llmkit.inspect.lens import format_lens, lens_positions, logit_lens
    from llmkit.inspect.plots import plot_lens

    model, tokenizer = load_model_and_tokenizer(args.model, args.device, args.dtype)
    n_tokens = len(tokenizer.encode(args.text, add_bos=not args.no_bos))
    shown = lens_positions(n_tokens, args.positions)
    # the picture shows every position unless --positions says otherwise; the table the chosen ones
    read = shown if args.positions or not args.png else list(range(n_tokens))
    start = time.perf_counter()
    result = logit_lens(model, tokenizer, args.text, top=args.top, add_bos=not args.no_bos, positions=read)
    seconds = time.perf_counter() - start
    if args.png:
        print(f"wrote {plot_lens(result, args.png)}")
    table = result if read == shown else replace(result, positions=shown, top_ids=result.top_ids[:, shown],
                                                   top_probs=result.top_probs[:, shown],
                                                   top_texts=[[row[p] for p in shown] for row in result.top_texts])
    print(format_lens(table))
    print(f"({len(read)} positions x {result.n_rows} layers, computed in {seconds:.2f} s)")


def cmd_inspect_embeddings(args) -> None:
    import torch

    from llmkit.inspect.embeddings import input_embeddings
    from llmkit.inspect.plots import plot_word_map

    if args.map is not None and not args.png:
        raise InspectError("--map draws a picture: give its file with --png FILE")
    if args.map is not None and len(set(args.map)) < 2:
        raise InspectError(f"--map places words against each other: give two or more different words, not {args.map}")
    for option, value in (("--neighbours", args.neighbours), ("--analogy", args.analogy)):
        if value is not None and not value.strip():
            raise InspectError(f"{option} is empty: give a word" + (" expression, e.g. \"king - man + woman\""
                                                                     if option == "--analogy" else ""))
    model, tokenizer = load_model_and_tokenizer(args.model, args.device, args.dtype)
    space = input_embeddings(model, tokenizer)
    if args.neighbours is not None:
        shown = space.neighbours(args.neighbours, args.top)
        print(f"nearest to {args.neighbours!r} (cosine, input embeddings):")
    elif args.analogy is not None:
        shown = space.analogy(args.analogy, args.top)
        print(f"{args.analogy} = ? (3CosAdd, input embeddings; the query words left out):")
    else:
        vectors = torch.stack([space.require(w) for w in args.map])
        print(f"wrote {plot_word_map(args.map, vectors, args.png, f'{args.model}: input embeddings, PCA')}")
        return
    for word, sim in shown:
        print(f"  {sim:6.3f}  {word}")


def cmd_eval_words(args) -> None:
    """`llmkit eval --analogies FILE --similarity FILE ...` on the input embeddings or the hidden states."""
    from llmkit.inspect.embeddings import contextual_spaces, input_embeddings
    from llmkit.inspect.word_benchmarks import (evaluate_analogies, evaluate_similarity, format_analogies,
                                                read_analogies, read_similarity)

    if not args.model:
        raise InspectError("eval --analogies / --similarity: give the model with --model")
    questions = read_analogies(args.analogies) if args.analogies else []
    pair_sets = [(path, read_similarity(path)) for path in args.similarity or []]
    model, tokenizer = load_model_and_tokenizer(args.model, args.device, args.dtype)
    kind, _, layer_text = args.embeddings.partition(":")
    if kind == "input" and not layer_text:
        spaces = {"input embeddings": input_embeddings(model, tokenizer, single_token=True)}
        if pair_sets:  # similarity pairs: a word of several tokens gets the mean of its tokens
            similarity_spaces = {"input embeddings": input_embeddings(model, tokenizer)}
    elif kind == "hidden":
        count = model.config.n_layers + 1  # the embeddings' output and every block's
        try:
            chosen = range(count) if not layer_text else [int(layer_text)]
        except ValueError:
            chosen = [-1]
        # checked before the forward over every word; a negative L would index from the end yet be printed
        # as "layer -1": layers are named 0 to n, as --layer's are
        if any(not 0 <= i < count for i in chosen):
            raise InspectError(f"--embeddings {args.embeddings}: the model has layers 0 to {count - 1}")
        words = sorted({w for q in questions for w in q.words} | {w for _, pairs in pair_sets for p in pairs for w in p[:2]})
        all_layers = contextual_spaces(model, tokenizer, words, args.template)
        spaces = {f"layer {i}": all_layers[i] for i in chosen}
        similarity_spaces = spaces
        print(f"hidden states of {len(words)} words in {args.template!r}; candidates: these words")
    else:
        raise InspectError(f"--embeddings {args.embeddings!r}: use input, hidden or hidden:LAYER")
    scores = {}
    for name, space in spaces.items():
        line, score = f"{name:>16}:", None
        if questions:
            result = evaluate_analogies(space, questions)
            score = result.accuracy
            if len(spaces) == 1:
                print(format_analogies(result, f"{name}, analogies (3CosAdd)"))
            line += f"  analogies {result.accuracy:6.1%} ({result.coverage:.0%} covered)"
        for path, pairs in pair_sets:
            sim = evaluate_similarity(similarity_spaces[name], pairs)
            rho = "  n/a" if sim["spearman"] is None else f"{sim['spearman']:6.3f}"
            score = sim["spearman"] if score is None else score
            line += f"  {Path(path).name}: Spearman {rho} ({sim['pairs']}/{sim['total']} pairs)"
        scores[name] = score
        if len(spaces) > 1 or pair_sets:
            print(line)
    ranked = [name for name in scores if scores[name] is not None]
    if len(spaces) > 1 and ranked:
        best = max(ranked, key=scores.get)
        print(f"best: {best} ({'analogy accuracy' if questions else 'Spearman'} {scores[best]:.3f})")


def report_sentence_ranking(scored, png: str | None) -> None:
    """After `llmkit score A B ...`: the sentences ranked by log-probability, and the picture."""
    from llmkit.inspect.sentences import format_ranking, rank_sentences

    if len(scored) < 2:  # (`llmkit score` refuses --png with one text before scoring it)
        return
    ranked = rank_sentences(scored)
    print()
    print(format_ranking(ranked))
    if png:
        from llmkit.inspect.plots import plot_sentences

        print(f"wrote {plot_sentences(ranked, png)}")
