"""Inside the model: what the seeds' pictures describe, computed from a model's own weights.

    internals.py      one forward with hooks: the residual stream after every layer and the attention
                      weights recomputed from the layer's own queries and keys
    attention.py      which tokens a token attends to (per head, per layer); attention_html.py: a page
    lens.py           the logit lens: the next token each layer would predict
    embeddings.py     words as vectors: neighbours, analogies (3CosAdd), hidden-state word vectors, PCA
    word_benchmarks.py  analogy accuracy and word-similarity Spearman on the standard sets
    sentences.py      sentences ranked by log-probability (`llmkit score A B C`)
    plots.py          the pictures; commands.py: the command line

This module stays free of heavy imports: `llmkit --help` imports it to build its parser.
"""

from llmkit.errors import LLMKitError


class InspectError(LLMKitError):
    """A request to look inside a model that cannot be answered (unknown token, layer out of range...)."""
