"""Text classification with the one Transformer.

    data.py       labelled text: TSV (text<TAB>label) or JSONL {"text", "label"}, errors at FILE:LINE
    head.py       SequenceClassifier: pooled hidden states (last token / [CLS] / mean) -> a linear head;
                  batched prediction; save / load beside the one checkpoint format
    train.py      ClassifyConfig and run_classify: cross-entropy on the one Trainer (full or LoRA)
    zero_shot.py  any causal LM as a classifier by label-word log-probabilities, with contextual
                  calibration (Zhao et al. 2021)
    commands.py   `llmkit classify [train | eval | zero-shot]`
"""

import importlib

# Names re-exported from the submodules, imported on first use (PEP 562): `llmkit --help` imports this
# package to build the classify verb's parser (commands.py) without torch.
_EXPORTS = {
    "data": ["Example", "label_names", "read_examples"],
    "head": ["SequenceClassifier", "classify_texts", "load_classifier", "save_classifier"],
    "train": ["ClassifyConfig", "run_classify"],
    "zero_shot": ["LabelWords", "calibrate", "content_free_probabilities", "label_logprobs", "label_probabilities",
                  "parse_label_words"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f"llmkit.classify.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module 'llmkit.classify' has no attribute {name!r}")
