"""llmkit's task scoring against lm-evaluation-harness, an implementation nobody here wrote: the same JSONL
files, the prompts llmkit builds (lm_eval_bridge's YAMLs), the same weights (a tiny random model exported to
a Hugging Face directory for lm-eval's `hf` model). Every option's log-likelihood of every example must
agree, and so must each example's acc / acc_norm pick. benchmarks/lm_eval_parity.py does the same with
SmolLM2 on the full files."""

from __future__ import annotations

import pytest
import torch

from conftest import TEST_DATA

pytest.importorskip("transformers", reason="transformers is a test dependency (pip install -e .[test])")
pytest.importorskip("lm_eval", reason="lm_eval is a test dependency (pip install -e .[test])")

from llmkit.errors import ConfigError  # noqa: E402
from llmkit.eval import evaluate_tasks, parse_task_list  # noqa: E402
from llmkit.eval.lm_eval_bridge import hf_model, run_lm_eval, split_delimiter, write_task_yamls  # noqa: E402
from llmkit.eval.metrics import predictions  # noqa: E402

TASKS = "arc_easy,copa,winogrande"  # "\nAnswer: " and " " delimiters, multiple choice and schema


@pytest.fixture
def exported(tmp_path, saved_tiny_model):
    from llmkit.checkpoint import load_model, load_tokenizer
    from llmkit.convert import convert

    convert(saved_tiny_model, tmp_path / "hf", to="hf")
    return load_model(saved_tiny_model), load_tokenizer(saved_tiny_model), tmp_path / "hf"


@pytest.mark.slow  # lm-eval's task building and HF model: ~1 min on a loaded 2-core machine
@pytest.mark.parametrize("add_bos", [True, False])
def test_loglikelihoods_and_picks_equal_lm_eval(tmp_path, exported, one_thread, add_bos):
    model, tokenizer, hf_dir = exported
    specs = parse_task_list(TASKS, TEST_DATA / "eval", shots=0)
    names = write_task_yamls(specs, tmp_path / "tasks", cache_dir=tmp_path / "datasets")
    ours = evaluate_tasks(model, tokenizer, specs, add_bos=add_bos, progress=False)
    lm = hf_model(hf_dir, add_bos=add_bos, batch_size=8)
    torch.set_num_threads(1)
    for spec, name in zip(specs, names):
        theirs = run_lm_eval(lm, tmp_path / "tasks", name)
        records = ours["examples"][spec.name]
        assert theirs.n == len(records) == 20
        for record in records:
            lls = theirs.loglikelihoods[record["index"]]
            assert len(lls) == len(record["scores"]) >= 2
            assert record["scores"] == pytest.approx(lls, abs=1e-4), (spec.name, record["index"])
            # the options differ: a prompt that lost the choice would score them all alike
            assert max(lls) - min(lls) > 1e-3
        metrics = ours["tasks"][spec.name]["metrics"]
        assert theirs.metrics["acc"] == metrics["acc"]["value"]
        if spec.kind == "multiple_choice":
            assert theirs.metrics["acc_norm"] == metrics["acc_norm"]["value"]
        else:  # the options share the continuation: llmkit's acc_norm is its acc (lm-eval reports acc only)
            assert set(theirs.metrics) == {"acc"} and metrics["acc_norm"] == metrics["acc"]
        # per example: lm-eval's log-likelihoods put through llmkit's rules pick what llmkit picked
        for record in records:
            lls = theirs.loglikelihoods[record["index"]]
            chars = [len(c) for c in record["choices"]] if spec.kind == "multiple_choice" else [1] * len(lls)
            picked = predictions([_Score(ll) for ll in lls], chars)
            assert picked["acc"] == record["predictions"]["acc"]
            assert picked["acc_norm"] == record["predictions"]["acc_norm"]


@pytest.mark.slow  # a server process and lm-eval's task building: ~1 min on a loaded 2-core machine
def test_lm_eval_local_completions_against_llmkit_serve_equals_llmkit(tmp_path, shakespeare_tokenizer, one_thread):
    """lm-eval's `local-completions` model scoring through `llmkit serve` (its tokenizer through /tokenize and
    /tokenizer_info, token-id prompts in batches with `echo`, `logprobs` and `max_tokens: 1`) gives llmkit's
    own log-likelihoods: what users of vLLM or llama.cpp servers do with lm-eval works on llmkit's."""
    pytest.importorskip("tenacity", reason="lm_eval[api] is a test dependency (pip install -e .[test])")
    from lm_eval.models.openai_completions import LocalCompletionsAPI
    from serve_fixtures import running_server, save_wide_tiny_model

    from llmkit.checkpoint import load_model, load_tokenizer

    # 512 positions: no example is cut (lm-eval's API models cut at max_length, one token short of the
    # `hf` model's cut, and the server refuses a prompt with no room for max_tokens)
    saved_tiny_model = save_wide_tiny_model(tmp_path / "model", shakespeare_tokenizer, 512)
    specs = parse_task_list(TASKS, TEST_DATA / "eval", shots=0)
    names = write_task_yamls(specs, tmp_path / "tasks", cache_dir=tmp_path / "datasets")
    ours = evaluate_tasks(load_model(saved_tiny_model), load_tokenizer(saved_tiny_model), specs, add_bos=False,
                          progress=False)
    with running_server(["--model", saved_tiny_model, "--served-model-name", "tiny", "--dtype", "float32"],
                        tmp_path / "server.log") as url:
        lm = LocalCompletionsAPI(base_url=f"{url}/v1/completions", model="tiny", tokenizer_backend="remote",
                                 tokenized_requests=True, batch_size=8, max_retries=1)
        for spec, name in zip(specs, names):
            theirs = run_lm_eval(lm, tmp_path / "tasks", name)
            records = ours["examples"][spec.name]
            assert theirs.n == len(records) == 20
            for record in records:
                assert record["scores"] == pytest.approx(theirs.loglikelihoods[record["index"]], abs=1e-4), (
                    spec.name, record["index"])
            assert theirs.metrics["acc"] == ours["tasks"][spec.name]["metrics"]["acc"]["value"]


class _Score:  # the fields metrics.predictions reads
    def __init__(self, logprob: float):
        self.logprob, self.tokens = logprob, 1


def test_delimiter_split_and_refusals(tmp_path):
    assert split_delimiter("\nAnswer: ") == ("\nAnswer:", " ")
    assert split_delimiter(" ") == ("", " ")
    assert split_delimiter("\n") == ("", "\n")
    few_shot = parse_task_list("copa", TEST_DATA / "eval", shots=2)
    with pytest.raises(ConfigError, match="0-shot"):
        write_task_yamls(few_shot, tmp_path)
    language_modeling = parse_task_list("lambada_openai", TEST_DATA / "eval", shots=0)
    with pytest.raises(ConfigError, match="multiple-choice and schema"):
        write_task_yamls(language_modeling, tmp_path)
