"""The command-line side of `llmkit classify`. `llmkit/cli.py` calls `add_classify_verb` once; everything
heavy is imported when a command runs, so `llmkit --help` stays fast.

    llmkit classify --model DIR "text" ...                       label probabilities of a trained classifier
    llmkit classify train --model M --data FILE [--dev FILE] --out DIR [--lora] [field=value ...]
    llmkit classify eval --model DIR --data FILE                 accuracy with a Wilson 95% interval
    llmkit classify zero-shot --model M --data FILE --labels "negative=terrible,positive=great"
                              [--template "{text} It was"] [--calibrate]

The bare form takes texts where the others take an action, which argparse's sub-commands cannot say
(a text would be read as an unknown action), so the verb's parser hands the arguments to an action's
parser itself when the first one names an action.
"""

from __future__ import annotations

import argparse
import sys

from llmkit.errors import DataError, LLMKitError

ACTIONS = ("train", "eval", "zero-shot")
LORA_LR = 5e-4  # --lora's learning rate (a field=value lr overrides it): adapters want ~10x full fine-tuning's


class _ActionDispatch:
    """Mixed into the verb's parser: `classify ACTION ...` is parsed by ACTION's parser."""

    actions: dict[str, argparse.ArgumentParser]

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        if args and args[0] in self.actions:
            return self.actions[args[0]].parse_known_args(args[1:], namespace)
        return super().parse_known_args(args, namespace)


class _TrainParser(argparse.ArgumentParser):
    """`classify train --help` ends with the configuration fields, as every training verb's help does."""

    def format_help(self) -> str:
        from llmkit.classify.train import ClassifyConfig
        from llmkit.config_help import fields_help
        from llmkit.errors import ConfigError
        from llmkit.yaml_config import load_preset

        preset_name = self.get_default("preset")
        try:
            preset = load_preset("train", preset_name, "training preset")[0]
        except ConfigError:
            preset, preset_name = {}, None
        return super().format_help() + "\n" + fields_help(ClassifyConfig, preset, preset_name)


def add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: bf16 on GPU, fp32 on CPU)")


def add_classify_verb(verbs) -> None:
    p = verbs.add_parser("classify", help="text classification: label probabilities of a trained classifier; "
                         "train (full / LoRA), eval, zero-shot by label words with calibration",
                         description="llmkit classify --model DIR \"text\" ...: label probabilities. Actions: "
                         "train, eval, zero-shot (`llmkit classify ACTION --help`).")
    p.__class__ = type("ClassifyParser", (_ActionDispatch, type(p)), {})
    p.add_argument("--model", required=True, help="a classifier directory (written by `llmkit classify train`)")
    add_device_args(p)
    p.add_argument("texts", nargs="+", help="texts to classify")
    p.set_defaults(handler=cmd_classify)

    t = _TrainParser(prog="llmkit classify train", description="fine-tune a sequence-classification head "
                     "(and the model, or LoRA adapters) on labelled text through the one Trainer")
    t.add_argument("--model", required=True, help="the starting model: checkpoint directory or named model (smollm2)")
    t.add_argument("--data", required=True, help="training examples: TSV (text<TAB>label, header optional) or "
                   "JSONL ({\"text\", \"label\"})")
    t.add_argument("--dev", default=None, help="held-out examples (same formats): accuracy at each evaluation")
    t.add_argument("--out", required=True, help="run directory: checkpoints, metrics.jsonl, the classifier")
    t.add_argument("--lora", action="store_true", help=f"LoRA adapters + the head train, the model stays frozen "
                   f"(peft=lora, lr={LORA_LR:g} unless lr= is given)")
    t.add_argument("--preset", default="classify", help="a training preset (llmkit/presets/train; default classify)")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    t.add_argument("overrides", nargs="*", help="field=value (fields below), e.g. pooling=mean train_examples=2000")
    t.set_defaults(handler=cmd_classify_train)

    e = argparse.ArgumentParser(prog="llmkit classify eval", description="accuracy of a trained classifier on "
                                "labelled text, with a Wilson 95% interval")
    e.add_argument("--model", required=True, help="a classifier directory (written by `llmkit classify train`)")
    e.add_argument("--data", required=True, help="TSV (text<TAB>label) or JSONL ({\"text\", \"label\"})")
    e.add_argument("--batch-size", type=int, default=32, help="texts per forward")
    add_device_args(e)
    e.set_defaults(handler=cmd_classify_eval)

    z = argparse.ArgumentParser(prog="llmkit classify zero-shot", description="classify with any causal language "
                                "model: the label whose word is the likeliest continuation of the template")
    z.add_argument("--model", required=True, help="checkpoint directory or named model (smollm2)")
    z.add_argument("--labels", required=True, help="NAME=WORD,NAME=WORD, e.g. negative=terrible,positive=great "
                   "(with --data whose labels are 0..k-1, label i is the i-th NAME)")
    z.add_argument("--template", default=None, help="the prompt, {text} where the text goes; the label word follows "
                   "after a space (default: '{text} It was', LM-BFF's SST-2 template)")
    z.add_argument("--calibrate", action="store_true", help="contextual calibration (Zhao et al. 2021): divide by "
                   "the label distribution of content-free inputs (N/A, '', [MASK])")
    z.add_argument("--data", default=None, help="labelled examples to score (accuracy with a Wilson 95%% interval)")
    z.add_argument("--no-bos", action="store_true", help="do not start prompts with the BOS token")
    add_device_args(z)
    z.add_argument("texts", nargs="*", help="texts to classify (without --data)")
    z.set_defaults(handler=cmd_classify_zero_shot)
    p.actions = {"train": t, "eval": e, "zero-shot": z}


# --- running ----------------------------------------------------------------------------------------------
def _device_and_dtype(args):
    from llmkit.device import inference_dtype, parse_dtype, resolve_device

    device = resolve_device(args.device)
    return device, parse_dtype(args.dtype) or inference_dtype(device)


def _load_classifier(args):
    from llmkit.classify.head import load_classifier
    from llmkit.convert import resolve_model

    device, dtype = _device_and_dtype(args)
    return load_classifier(resolve_model(args.model), device=device, dtype=dtype)


def format_probabilities(labels: list[str], probs) -> str:
    order = sorted(range(len(labels)), key=lambda i: -float(probs[i]))
    width = max(map(len, labels))
    return "\n".join(f"  {labels[i]:<{width}}  {float(probs[i]):7.2%}" for i in order)


def cmd_classify(args) -> None:
    from llmkit.classify.head import classify_texts

    model, tokenizer = _load_classifier(args)
    probs = classify_texts(model, tokenizer, args.texts)
    for text, row in zip(args.texts, probs):
        print(f"{text!r}\n{format_probabilities(model.labels, row)}")


def classify_train_config(args):
    """The ClassifyConfig of `classify train`: the preset, then what the flags imply, then field=value."""
    from llmkit.classify.train import ClassifyConfig
    from llmkit.yaml_config import Located, parse_overrides

    fields = Located()
    given = {"init_from": ("--model", args.model), "data": ("--data", args.data)}
    if args.dev:
        given["val_data"] = ("--dev", args.dev)
    if args.lora:
        given.update(peft=("--lora", "lora"), lr=("--lora", LORA_LR))
    for key, (flag, value) in given.items():
        fields[key], fields.sources[key] = value, f"command line {flag}"
    typed = parse_overrides(args.overrides, "command line")
    for key, value in typed.items():  # field=value wins over what a flag implied (lr= beside --lora)
        fields[key], fields.sources[key] = value, typed.sources.get(key, "command line")
    return ClassifyConfig.preset(args.preset, fields)


def cmd_classify_train(args) -> None:
    from llmkit.classify.train import run_classify

    result = run_classify(classify_train_config(args), args.out, resume=args.resume)
    shown = "".join(f"; {k} {v:.4f}" for k, v in result.eval.items())  # (none without validation data)
    print(f"done: {result.steps} steps, {result.train_time_s:.1f} s of training{shown}; classifier in {args.out} "
          f"(try: llmkit classify --model {args.out} \"some text\")")


def accuracy_line(result: dict, what: str = "accuracy") -> str:
    return (f"{what} {result['accuracy']:.2%} ({result['correct']}/{result['n']}), 95% CI "
            f"{result['ci95_low']:.2%}-{result['ci95_high']:.2%} (Wilson)")


def majority_line(y: list[int], labels: list[str]) -> str:
    from llmkit.eval.stats import wilson_interval

    top = max(range(len(labels)), key=y.count)
    low, high = wilson_interval(y.count(top), len(y))
    return (f"majority class ({labels[top]}) {y.count(top) / len(y):.2%}, 95% CI {low:.2%}-{high:.2%} (Wilson)")


def cmd_classify_eval(args) -> None:
    from llmkit.classify.data import label_indices, read_examples
    from llmkit.classify.head import classify_texts
    from llmkit.classify.train import accuracy_with_interval

    if args.batch_size < 1:
        raise LLMKitError(f"--batch-size {args.batch_size}: give a number of texts >= 1")
    examples = read_examples(args.data)
    model, tokenizer = _load_classifier(args)
    y = label_indices(examples, model.labels)
    probs = classify_texts(model, tokenizer, [e.text for e in examples], per_batch=args.batch_size)
    print(f"{args.data}: {len(examples)} examples")
    print(accuracy_line(accuracy_with_interval(probs, y)))
    print(majority_line(y, model.labels))


def data_label_indices(examples, names: list[str]) -> tuple[list[int], str | None]:
    """The examples' labels as indices of `names`; data labelled 0..k-1 (GLUE) where the names are words
    are read as indices, with a note saying so."""
    from llmkit.classify.data import label_indices

    found = {e.label for e in examples}
    numbered = {str(i) for i in range(len(names))}
    if not found & set(names) and found <= numbered:
        note = "data labels read as indices of --labels: " + ", ".join(f"{i}={n}" for i, n in enumerate(names))
        return [int(e.label) for e in examples], note
    return label_indices(examples, names), None


def cmd_classify_zero_shot(args) -> None:
    import llmkit
    from llmkit.classify.data import read_examples
    from llmkit.classify.train import accuracy_with_interval
    from llmkit.classify.zero_shot import (DEFAULT_TEMPLATE, calibrate, content_free_probabilities, label_logprobs,
                                           label_probabilities, parse_label_words)

    if (args.data is None) == (not args.texts):
        raise DataError("zero-shot: give --data FILE (labelled examples: accuracy) or texts to classify, not both")
    labels = parse_label_words(args.labels)
    template = args.template or DEFAULT_TEMPLATE
    examples = read_examples(args.data) if args.data else []
    y, note = data_label_indices(examples, labels.names) if examples else ([], None)
    texts = [e.text for e in examples] if examples else args.texts
    llm = llmkit.load(args.model, device=args.device, dtype=args.dtype)
    add_bos = not args.no_bos
    probs = label_probabilities(label_logprobs(llm.model, llm.tokenizer, texts, labels, template, add_bos))
    calibrated = None
    if args.calibrate:
        p_cf = content_free_probabilities(llm.model, llm.tokenizer, labels, template, add_bos)
        calibrated = calibrate(probs, p_cf)
        print("content-free label distribution: " + ", ".join(f"{n} {float(p):.3f}" for n, p in zip(labels.names, p_cf)))
    if not examples:
        for i, text in enumerate(texts):
            print(f"{text!r}\n{format_probabilities(labels.names, (calibrated if calibrated is not None else probs)[i])}")
        return
    print(f"{args.data}: {len(examples)} examples; template {template!r}; words "
          + ", ".join(f"{n}={w!r}" for n, w in zip(labels.names, labels.words)))
    if note:
        print(note)
    print(accuracy_line(accuracy_with_interval(probs, y), "accuracy (uncalibrated)"))
    if calibrated is not None:
        print(accuracy_line(accuracy_with_interval(calibrated, y), "accuracy (calibrated)  "))
    print(majority_line(y, labels.names))
