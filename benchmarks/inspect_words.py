"""Word vectors inside real models: analogies (3CosAdd) and word similarity (Spearman), from the input
embeddings and from the hidden states of every layer; and the speed of `llmkit inspect`.

    python benchmarks/inspect_words.py                       # SmolLM2-135M-Instruct (about 5 min on 2 cores)
    python benchmarks/inspect_words.py --speedrun RUN/base   # also the speedrun's Shakespeare model

1. SmolLM2's input embeddings, the protocol of ../shared/data/eval/README.md: questions-words.txt, the
   questions whose four words are single space-prefixed tokens, 3CosAdd over the vocabulary's word
   tokens (a space and letters), query words excluded. Published there: 62.4%; word2vec ~74%, GloVe ~75%.
2. The same questions with the candidates restricted to the questions' own words, for the input
   embeddings and for the hidden states of each layer (the word after BOS in --template, its last token,
   centred): which layer is best. WordSim353 / SimLex-999 Spearman for the same variants (input
   embeddings: a word of several tokens = the mean of its tokens; hidden states: its last token).
3. The speedrun model on benchmarks/data/shakespeare_analogies.txt (kinship and titles).
4. Speed on a 64-token text, 2 threads: attention (all layers and heads), the lens at every layer and
   position, neighbours of a word; beside one plain forward as the machine-load yardstick.
Prints tables, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's llmkit, whatever is installed
DATA = ROOT.parent / "shared" / "data" / "eval" / "analogy"


def word_figures(model, tokenizer, questions, pair_sets, template: str, label: str, out: dict) -> None:
    from llmkit.inspect.embeddings import WordVectors, contextual_spaces, input_embeddings, unit
    from llmkit.inspect.word_benchmarks import evaluate_analogies, evaluate_similarity, format_analogies

    full = input_embeddings(model, tokenizer, single_token=True)
    result = evaluate_analogies(full, questions)
    print(format_analogies(result, f"{label} input embeddings, all word tokens as candidates"))
    out[f"{label}_input_analogy_acc"] = result.accuracy
    out[f"{label}_input_analogy_answered"] = sum(result.answered.values())
    out[f"{label}_input_analogy_coverage"] = result.coverage
    out[f"{label}_input_sections"] = {s: v["accuracy"] for s, v in result.to_dict()["sections"].items()}
    mean_rule = input_embeddings(model, tokenizer)
    for name, pairs in pair_sets:
        sim = evaluate_similarity(mean_rule, pairs)
        print(f"  {name}: Spearman {sim['spearman']:.3f} on {sim['pairs']}/{sim['total']} pairs (mean of tokens)")
        out[f"{label}_input_{name}_spearman"] = sim["spearman"]

    # the questions the input embeddings can answer, over a candidate set both variants share
    answerable = [q for q in questions if all(full.vector_of(w) is not None for w in q.words)]
    words = sorted({w for q in answerable for w in q.words})
    table = {w: full.vector_of(w) for w in words}
    restricted = WordVectors(words, unit(__import__("torch").stack([table[w] for w in words])), table.get, "restricted")
    base = evaluate_analogies(restricted, answerable).accuracy
    print(f"\n{label}: {len(answerable)} questions, candidates = their {len(words)} words")
    print(f"  input embeddings     analogies {base:6.1%}")
    out[f"{label}_restricted_input_analogy_acc"] = base
    sim_words = sorted({w for _, pairs in pair_sets for p in pairs for w in p[:2]})
    start = time.perf_counter()
    layers = contextual_spaces(model, tokenizer, words, template)
    sim_layers = contextual_spaces(model, tokenizer, sim_words, template) if pair_sets else None
    print(f"  (hidden states of {len(words) + len(sim_words)} words in {template!r}: {time.perf_counter() - start:.1f} s)")
    accs, rhos = [], {name: [] for name, _ in pair_sets}
    for i, space in enumerate(layers):
        acc = evaluate_analogies(space, answerable).accuracy
        accs.append(acc)
        shown = f"  layer {i:>2}             analogies {acc:6.1%}"
        for name, pairs in pair_sets:
            rho = evaluate_similarity(sim_layers[i], pairs)["spearman"]
            rhos[name].append(rho)
            shown += f"   {name} {rho:6.3f}"
        print(shown)
    best = max(range(len(accs)), key=accs.__getitem__)
    print(f"  best layer for analogies: {best} ({accs[best]:.1%}); input embeddings {base:.1%}")
    out[f"{label}_hidden_analogy_acc_by_layer"] = accs
    out[f"{label}_hidden_best_layer"] = best
    out[f"{label}_hidden_best_analogy_acc"] = accs[best]
    for name in rhos:
        out[f"{label}_hidden_{name}_spearman_by_layer"] = rhos[name]
        layer = max(range(len(rhos[name])), key=rhos[name].__getitem__)
        print(f"  best layer for {name}: {layer} (Spearman {rhos[name][layer]:.3f})")
        out[f"{label}_hidden_{name}_best"] = [layer, rhos[name][layer]]


def speed(model, tokenizer, out: dict, repeats: int = 5) -> None:
    import torch

    from llmkit.inspect.attention import attention_maps
    from llmkit.inspect.embeddings import input_embeddings
    from llmkit.inspect.lens import logit_lens

    story = ("The mouse ran across the kitchen floor, stopped beside the table and looked up at the cheese that "
             "the cook had left there before going out to the market early in the morning, when the streets were "
             "still empty and quiet, and the baker in the next street was only just lighting his ovens for the "
             "first bread of the day.")
    text = tokenizer.decode(tokenizer.encode(story)[:63])  # 64 tokens with the BOS
    ids = tokenizer.encode(text, add_bos=True)
    space = input_embeddings(model, tokenizer)
    jobs = {"forward": lambda: model(torch.tensor([ids])), "attention": lambda: attention_maps(model, tokenizer, text),
            "lens": lambda: logit_lens(model, tokenizer, text), "neighbours": lambda: space.neighbours("king"),
            "word_space_build": lambda: input_embeddings(model, tokenizer)}
    print(f"\nspeed on {len(ids)} tokens, {torch.get_num_threads()} threads (median of {repeats}):")
    with torch.inference_mode():
        for name, job in jobs.items():
            job()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                job()
                times.append(time.perf_counter() - start)
            out[f"{name}_s"] = statistics.median(times)
            print(f"  {name:<17} {statistics.median(times):.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--speedrun", default=None, help="the speedrun's base model directory")
    parser.add_argument("--template", default="The word is {word}", help="the text a word is put in for its hidden states")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()

    import torch

    from llmkit.inspect.commands import load_model_and_tokenizer
    from llmkit.inspect.word_benchmarks import read_analogies, read_similarity

    torch.set_num_threads(args.threads)
    out: dict = {"template": args.template}
    pair_sets = [("wordsim353", read_similarity(DATA / "wordsim353.tsv")), ("simlex999", read_similarity(DATA / "simlex999.txt"))]
    model, tokenizer = load_model_and_tokenizer(args.model, "cpu", "float32")
    word_figures(model, tokenizer, read_analogies(DATA / "questions-words.txt"), pair_sets, args.template, "smollm2", out)
    if not args.skip_speed:
        speed(model, tokenizer, out)
    if args.speedrun:
        model, tokenizer = load_model_and_tokenizer(args.speedrun, "cpu", "float32")
        print(f"\nspeedrun model {args.speedrun}:")
        word_figures(model, tokenizer, read_analogies(ROOT / "benchmarks" / "data" / "shakespeare_analogies.txt"),
                     [], args.template, "speedrun", out)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
