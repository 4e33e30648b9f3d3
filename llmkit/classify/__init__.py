"""Text classification with the one Transformer.

    data.py       labelled text: TSV (text<TAB>label) or JSONL {"text", "label"}, errors at FILE:LINE
    head.py       SequenceClassifier: pooled hidden states (last token / [CLS] / mean) -> a linear head;
                  batched prediction; save / load beside the one checkpoint format
    train.py      ClassifyConfig and run_classify: cross-entropy on the one Trainer (full or LoRA)
    zero_shot.py  any causal LM as a classifier by label-word log-probabilities, with contextual
                  calibration (Zhao et al. 2021)
    commands.py   `llmkit classify [train | eval | zero-shot]`
"""

from llmkit.classify.data import Example, label_names, read_examples
from llmkit.classify.head import SequenceClassifier, classify_texts, load_classifier, save_classifier
from llmkit.classify.zero_shot import (LabelWords, calibrate, content_free_probabilities, label_logprobs,
                                       label_probabilities, parse_label_words)

__all__ = ["Example", "LabelWords", "SequenceClassifier", "calibrate", "classify_texts", "content_free_probabilities",
           "label_logprobs", "label_names", "label_probabilities", "load_classifier", "parse_label_words",
           "read_examples", "save_classifier"]
