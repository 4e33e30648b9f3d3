"""Fuzzing (hypothesis) what a user types: `field=value` overrides of pretraining, and the engine's and
sampling's options. Whatever the values, the outcome is success or one `error:` line with exit status 2:
never a traceback, never a hang."""

import dataclasses
import math
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SHAKESPEARE, cli_in_process
from llmkit.config import ModelConfig
from llmkit.errors import LLMKitError
from llmkit.train.config import TrainConfig

# LLMKIT_FUZZ_EXAMPLES=500 for a longer hunt; the default keeps the file near 20 s of CPU
EXAMPLES = int(os.environ.get("LLMKIT_FUZZ_EXAMPLES", "12"))

# Fixed last on every command line (later values win): one short step of a tiny model, whatever else is fuzzed.
BUDGET = {"max_steps": 1, "micro_batch": 1, "seq_len": 16, "eval_every": 0, "eval_tokens": 64, "sample_every": 0,
          "sample_tokens": 2, "time_limit_s": 0, "batch_tokens": 0, "threads": 1, "plot": "false", "ckpt_every": 0,
          "compile": "false", "device": "cpu", "log_every": 1}
FIELDS = sorted({f.name for f in dataclasses.fields(TrainConfig)} - set(BUDGET) - {"data"})
MODEL_FIELDS = sorted(f"model.{f.name}" for f in dataclasses.fields(ModelConfig))

# YAML-ish text as a careless user types it: numbers of every size and sign, NaN and infinities, words,
# half-written lists and mappings, paths
RAW_VALUES = st.sampled_from([
    "-1", "0", "1", "2", "0.5", "-0.0", "1e309", "-1e309", "1e-45", "nan", ".nan", ".inf", "-.inf", "inf",
    str(10**30), str(-(2**63)), str(2**64), "1e9", "true", "false", "null", "~", "", "[]", "[1, 2]", "[a, b]",
    "{a: 1}", "{}", "[", "'", '"x"', "x" * 300, "../../etc", "/nonexistent", "llama-cpu", "tiny", "adamw", "wsd",
    "bf16", "fp16", "cpu", "cuda", "caf\u00e9", "\u0000", "3 4", "0x10", "1_000", "=", "a=b",
])
VALUES = st.one_of(RAW_VALUES, st.integers(-(10**4), 10**4).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=8))


@pytest.fixture(scope="module")
def shards(tmp_path_factory, shakespeare_tokenizer):
    from llmkit.data.prepare import prepare

    root = tmp_path_factory.mktemp("fuzz")
    shakespeare_tokenizer.save(root / "tok")
    prepare(sorted((SHAKESPEARE / "val").glob("*.txt"))[:1], root / "tok", root / "shards")
    return root / "shards"


def assert_clean(result, args) -> None:
    """Success, or exactly one `error: ...` line (argparse's usage errors too) and status 2; no traceback."""
    assert "Traceback" not in result.stderr, (args, result.stderr[-2000:])
    if result.returncode == 0:
        return
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (args, result.returncode, result.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: ") or ": error: " in lines[-1], (args, result.stderr)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(overrides=st.lists(st.tuples(st.sampled_from(FIELDS + MODEL_FIELDS), VALUES), min_size=1, max_size=3))
def test_pretrain_overrides_never_end_in_a_traceback(shards, one_thread, overrides):
    out = Path(tempfile.mkdtemp(prefix="llmkit-fuzz-"))
    try:
        args = ["pretrain", "--out", out / "run", "model=tiny", f"data={shards}",
                *(f"{key}={value}" for key, value in overrides), *(f"{k}={v}" for k, v in BUDGET.items())]
        assert_clean(cli_in_process(*args), args)
    finally:
        shutil.rmtree(out, ignore_errors=True)


NUMBERS = st.one_of(st.integers(-(10**6), 10**6), st.sampled_from([10**30, -(2**63), 2**64]),
                    st.floats(allow_nan=True, allow_infinity=True), st.none(), st.booleans(),
                    st.sampled_from(["1", "x", [], [1]]))


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory, shakespeare_tokenizer):
    import torch

    import llmkit
    from llmkit.checkpoint import save_checkpoint
    from llmkit.model import Transformer

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("fuzz-model")
    save_checkpoint(directory, Transformer(ModelConfig.preset("tiny", vocab_size=shakespeare_tokenizer.vocab_size)),
                    shakespeare_tokenizer)
    return llmkit.load(directory)


@settings(max_examples=5 * EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sampling=st.fixed_dictionaries({}, optional={
    name: NUMBERS for name in ("max_new_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                               "seed", "logprobs")} | {"stop_strings": st.lists(st.text(max_size=3), max_size=2)}),
       engine=st.fixed_dictionaries({}, optional={
           "max_batch_size": NUMBERS, "kv_cache_mib": NUMBERS, "prefix_cache_mib": NUMBERS, "block_size": NUMBERS,
           "prefill_chunk": NUMBERS}))
def test_sampling_and_engine_options_are_used_or_refused_with_a_clear_error(tiny_llm, one_thread, sampling, engine):
    from llmkit.api import LLM

    if isinstance(sampling.get("max_new_tokens"), int) and not isinstance(sampling["max_new_tokens"], bool):
        sampling["max_new_tokens"] = min(sampling["max_new_tokens"], 4)  # a hang is not what is fuzzed here
    try:
        llm = LLM(tiny_llm.model, tiny_llm.tokenizer, **engine)
        text = llm.generate("ROMEO:", **sampling)
    except LLMKitError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert isinstance(text, str)
    for name, value in sampling.items():  # what was accepted was a usable value
        if isinstance(value, float):
            assert math.isfinite(value), (name, value)


# JSON values as an API client might send them, right or wrong, nested a little
JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=6),
                        st.sampled_from(["system", "user", "assistant", "tool", "json_object", "json_schema", "auto",
                                         "none", "required", "function", "oldest", "text"]))
JSON_VALUES = st.recursive(JSON_LEAVES, lambda children: st.one_of(
    st.lists(children, max_size=3), st.dictionaries(st.sampled_from(["role", "content", "type", "name", "text",
                                                                     "function", "arguments", "json_schema", "schema",
                                                                     "include_usage", "tool_calls", "id"]),
                                                    children, max_size=3)), max_leaves=8)
REQUEST_FIELDS = ["model", "messages", "prompt", "input", "n", "max_tokens", "max_completion_tokens", "stream",
                  "stream_options", "logprobs", "top_logprobs", "temperature", "top_p", "top_k", "min_p",
                  "repetition_penalty", "seed", "stop", "presence_penalty", "logit_bias", "response_format", "tools",
                  "tool_choice", "truncate", "echo", "best_of", "suffix", "encoding_format", "tokens",
                  "add_special_tokens", "functions"]


@settings(max_examples=10 * EXAMPLES, deadline=None)
@given(body=st.dictionaries(st.sampled_from(REQUEST_FIELDS), JSON_VALUES, max_size=6),
       messages=st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", "x"])},
                                               optional={"content": JSON_VALUES}), max_size=3))
def test_server_request_fields_are_used_or_a_400_naming_the_field(body, messages):
    """Every request body the server parses (chat, completions, embeddings, tokenize, detokenize) is a
    request or an APIError with status 400 and a one-line message: never another exception, which the
    server would turn into a 500."""
    from llmkit.serve import protocol

    if messages and "messages" not in body:
        body["messages"] = messages
    for parse in (protocol.parse_chat, protocol.parse_completion, protocol.parse_embedding, protocol.parse_tokenize,
                  lambda b: protocol.parse_detokenize(b, 512)):
        try:
            parse(dict(body))
        except protocol.APIError as e:
            assert e.status == 400 and str(e.message) and "\n" not in str(e.message), (body, e.message)
