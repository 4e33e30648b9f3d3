"""llmkit: a complete large-language-model system in one small, fast PyTorch codebase."""

__version__ = "0.1.0"


def load(name_or_path, device=None, dtype=None, **options):
    """Load a checkpoint directory or a named model ("smollm2"); see llmkit.api.LLM. Options go to the
    inference engine (compile=True, speculative="prompt-lookup", ...; see llmkit.api.load)."""
    from llmkit.api import load as _load  # imported lazily so `import llmkit` stays cheap

    return _load(name_or_path, device=device, dtype=dtype, **options)
