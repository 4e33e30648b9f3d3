"""A prompt-tuned directory runs everywhere a model runs: `llmkit.load`, generate, serve, eval. The engine
puts the soft prompt's virtual tokens before every prompt; completions, usage and cached-token counts are
about the caller's own tokens; the scorers read each text after the soft prompt. Each result is compared
with a naive forward over `soft prompt + ids`, and with the base model (the soft prompt must change it)."""

import json

import openai
import pytest
import torch

import llmkit
from conftest import cli_in_process
from serve_fixtures import running_server
from llmkit.checkpoint import load_model
from llmkit.config import ModelConfig
from llmkit.errors import CheckpointError, GenerationError
from llmkit.eval.backends import LocalBackend
from llmkit.eval.prompts import ExampleRequests
from llmkit.infer import SamplingParams
from llmkit.model import Transformer
from llmkit.serve.model_jobs import prompt_logprobs
from llmkit.train.peft import ADAPTER_WEIGHTS, apply_prompt_tuning, save_peft

SOFT = 4


@pytest.fixture(scope="module")
def tuned_dir(tmp_path_factory, shakespeare_tokenizer):
    """A tiny model with a 4-token soft prompt drawn wide, saved as
    prompt tuning saves it: the base checkpoint plus adapter_config.json + adapter_model.safetensors."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", vocab_size=shakespeare_tokenizer.vocab_size)).eval()
    with torch.no_grad():  # drawn wide, as tests/serve_fixtures.py does: greedy text that varies with its input
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    apply_prompt_tuning(model, SOFT)
    with torch.no_grad():
        model.tok_emb.prompt.normal_(0, 1)
    out = tmp_path_factory.mktemp("prompt-tuned") / "model"
    save_peft(out, model, model.state_dict(), shakespeare_tokenizer)
    return out


def greedy_reference(model, ids: list[int], n: int) -> list[int]:
    """n greedy tokens by full recomputation over the soft prompt and ids (no cache, no engine)."""
    tokens = model.soft_prompt_ids + ids
    for _ in range(n):
        tokens.append(int(model(torch.tensor([tokens]))[0, -1].argmax()))
    return tokens[-n:]


def test_load_generates_after_the_soft_prompt_and_reports_the_callers_tokens(tuned_dir):
    llm = llmkit.load(tuned_dir)
    assert llm.model.soft_prompt_ids == list(range(llm.tokenizer.vocab_size, llm.tokenizer.vocab_size + SOFT))
    ids = llm.tokenizer.encode("ROMEO: But soft, what light", add_bos=True)
    expected = greedy_reference(llm.model, ids, 8)
    completion = llm.engine.complete(ids, SamplingParams(max_new_tokens=8, temperature=0))
    assert completion.token_ids == expected and completion.prompt_ids == ids
    # the soft prompt matters: the base model (model.safetensors alone) continues differently
    plain = load_model(tuned_dir)
    tokens = list(ids)
    for _ in range(8):
        tokens.append(int(plain(torch.tensor([tokens]))[0, -1].argmax()))
    assert tokens[len(ids):] != expected
    # the second time the prompt comes from the prefix cache: counted without the soft prompt's tokens
    again = llm.engine.complete(ids, SamplingParams(max_new_tokens=1, temperature=0))
    assert again.cached_tokens == len(ids) - 1
    # a repetition penalty looks at the caller's tokens (the virtual ids are outside the logits)
    penalised = llm.engine.complete(ids, SamplingParams(max_new_tokens=4, temperature=0, repetition_penalty=1.3))
    assert penalised.finish_reason in ("length", "stop")
    # a caller cannot pass the virtual ids themselves, and the context counts the soft prompt
    with pytest.raises(GenerationError, match=f"outside the vocabulary of {llm.tokenizer.vocab_size}"):
        llm.engine.submit(ids + [llm.tokenizer.vocab_size], SamplingParams(max_new_tokens=1))
    context = llm.model.config.max_seq_len
    with pytest.raises(GenerationError, match=f"context is {context - SOFT} after the soft prompt's {SOFT}"):
        llm.engine.submit([5] * (context - SOFT), SamplingParams(max_new_tokens=1))
    assert not llm.engine.fits([5] * (context - SOFT)) and llm.engine.fits([5] * (context - SOFT - 1))
    assert llm.engine.complete([5] * (context - SOFT - 1), SamplingParams(max_new_tokens=4)).token_ids


def test_scores_read_the_text_after_the_soft_prompt(tuned_dir):
    llm = llmkit.load(tuned_dir)
    text = "JULIET: O Romeo, Romeo"
    ids = llm.tokenizer.encode(text, add_bos=True)
    with torch.inference_mode():
        logits = llm.model(torch.tensor([llm.model.soft_prompt_ids + ids]))[0].float()
    logprobs = torch.log_softmax(logits[SOFT:-1], dim=-1)
    expected = [float(logprobs[i, t]) for i, t in enumerate(ids[1:])]
    assert [s.logprob for s in llm.score(text).tokens] == pytest.approx(expected, abs=1e-5)
    # the server's echo log-probabilities are the same numbers
    served = prompt_logprobs(llm.model, ids, top=2)
    assert served[0] is None and [x.logprob for x in served[1:]] == pytest.approx(expected, abs=1e-5)
    # evaluation's batched, prefix-sharing scorer too (context + continuation split inside the text)
    backend = LocalBackend(llm.model, llm.tokenizer, engine=llm.engine)
    request = ExampleRequests(0, ["JULIET: O", "JULIET: O"], [" Romeo, Romeo", " Tybalt"], 0, [13, 7])
    scored = backend.loglikelihood([request], where=str)[0]
    assert scored.scores[0].logprob == pytest.approx(llm.score(text).total_logprob
                                                     - llm.score("JULIET: O").total_logprob, abs=1e-4)
    # views of the text alone are refused by name, not shown for the base model (the CLI's too)
    for view in (lambda: llm.embed(["a"]), lambda: llm.attention("a"), lambda: llm.lens("a")):
        with pytest.raises(GenerationError, match="prompt-tuned"):
            view()
    for action in ("attention", "lens"):
        result = cli_in_process("inspect", action, "--model", tuned_dir, "ROMEO: soft")
        assert result.returncode == 2 and "prompt-tuned" in result.stderr and "Traceback" not in result.stderr
    # the next-token view (the server's Inspect panel) is the distribution generation samples from
    from llmkit.inspect.lens import next_token_of_ids

    with torch.inference_mode():
        best = llm.model(torch.tensor([llm.model.soft_prompt_ids + ids]))[0, -1].float().log_softmax(-1).topk(3)
    assert next_token_of_ids(llm.model, llm.tokenizer, ids, top=3).top_ids == best.indices.tolist()


def test_speculation_needs_a_drafter_with_the_soft_prompt(tuned_dir, saved_tiny_model):
    llm = llmkit.load(tuned_dir, speculative="layers:1")
    ids = llm.tokenizer.encode("ROMEO:", add_bos=True)
    assert llm.engine.generate(ids, SamplingParams(max_new_tokens=6, temperature=0)) == greedy_reference(llm.model, ids, 6)
    with pytest.raises(GenerationError, match="draft model has no soft prompt"):
        llmkit.load(tuned_dir, speculative=str(saved_tiny_model))


def test_cli_and_server_run_it(tuned_dir, tmp_path):
    llm = llmkit.load(tuned_dir)
    ids = llm.tokenizer.encode("ROMEO:", add_bos=True)
    expected = llm.tokenizer.decode(greedy_reference(llm.model, ids, 6))
    result = cli_in_process("generate", "--model", tuned_dir, "--max-new-tokens", 6, "--temperature", 0, "ROMEO:")
    assert result.returncode == 0 and expected in result.stdout, (result.stdout, result.stderr)
    with running_server(["--model", tuned_dir, "--served-model-name", "tuned"], tmp_path / "server.log") as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        reply = client.completions.create(model="tuned", prompt="ROMEO:", max_tokens=6, temperature=0)
        assert reply.choices[0].text == expected
        assert reply.usage.prompt_tokens == len(ids)  # the caller's tokens, not the soft prompt's
        context = llm.model.config.max_seq_len - SOFT  # what a client may send (review: it said max_seq_len)
        assert client.models.list().data[0].model_extra["max_model_len"] == context
        with pytest.raises(openai.BadRequestError, match="prompt-tuned"):
            client.embeddings.create(model="tuned", input="ROMEO:")
        assert client.completions.create(model="tuned", prompt="ROMEO:", max_tokens=1).choices[0].text is not None


def test_a_damaged_soft_prompt_is_one_line(tuned_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tuned_dir, broken)
    (broken / ADAPTER_WEIGHTS).write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        llmkit.load(broken)
    record = json.loads((tuned_dir / "adapter_config.json").read_text())
    shutil.copy(tuned_dir / ADAPTER_WEIGHTS, broken / ADAPTER_WEIGHTS)
    (broken / "adapter_config.json").write_text(json.dumps({**record, "num_virtual_tokens": SOFT + 1}))
    with pytest.raises(CheckpointError, match=rf"shape \({SOFT}, \d+\), but .* need \({SOFT + 1}, "):
        llmkit.load(broken)


def test_quantizing_keeps_the_soft_prompt_and_exporting_refuses(tuned_dir, tmp_path):
    """Was: `llmkit quantize` wrote the base model alone (it loaded and ran without the soft prompt, without
    a word), and `convert --to hf` exported the base model as if it were the tuned one."""
    from llmkit.convert import convert, quantize_checkpoint
    from llmkit.errors import ConversionError

    quantize_checkpoint(tuned_dir, tmp_path / "q8", bits=8)
    llm = llmkit.load(tmp_path / "q8")
    assert llm.model.soft_prompt_ids == list(range(llm.tokenizer.vocab_size, llm.tokenizer.vocab_size + SOFT))
    ids = llm.tokenizer.encode("ROMEO:", add_bos=True)
    assert llm.engine.generate(ids, SamplingParams(max_new_tokens=5, temperature=0)) == greedy_reference(llm.model, ids, 5)
    with pytest.raises(ConversionError, match="prompt-tuned"):
        convert(tuned_dir, tmp_path / "hf", to="hf")


def test_zero_shot_and_bits_per_byte_read_after_the_soft_prompt(tuned_dir, tmp_path):
    """Review: zero-shot classification and `eval --text` scored the base model once load applied the soft
    prompt elsewhere (their numbers equalled the base model's)."""
    from llmkit.classify.zero_shot import label_logprobs, parse_label_words
    from llmkit.eval.bpb import evaluate_texts

    llm = llmkit.load(tuned_dir)
    text = "JULIET: O Romeo, Romeo"
    ids = llm.tokenizer.encode(text, add_bos=True)
    nats = -llm.score(text).total_logprob  # (score is checked against a manual forward above)
    (tmp_path / "t.txt").write_text(text)
    result = evaluate_texts(llm.model, llm.tokenizer, [tmp_path / "t.txt"], llm.device)
    assert result.tokens == len(ids) - 1 and result.nats == pytest.approx(nats, abs=1e-3)
    logprobs = label_logprobs(llm.model, llm.tokenizer, ["JULIET: O"], parse_label_words("good,bad"), template="{text}")
    expected = [llm.score("JULIET: O " + w).total_logprob - llm.score("JULIET: O").total_logprob for w in ("good", "bad")]
    assert logprobs[0].tolist() == pytest.approx(expected, abs=1e-3)
