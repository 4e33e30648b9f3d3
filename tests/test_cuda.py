"""The CUDA paths: bf16 with fused (flash) attention, the engine on a GPU (greedy == full recompute,
compiled == eager, batched == one by one), compiled bf16 pretraining whose checkpoint loads on a CPU,
and FSDP2 under torchrun with NCCL. Each test needs a CUDA GPU and is skipped without one (CI has none);
`benchmarks/gpu.py` runs them on a lent GPU together with the GPU figures (BENCHMARKS.md, "On a GPU")."""

import math
import os
import subprocess
import sys

import pytest
import torch

import test_pretrain as pretrain
from conftest import run_cli
from llmkit.infer import Engine, SamplingParams
from test_engine import make_model, naive_greedy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")
GPU = torch.device("cuda")


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    return float((got - want).norm() / want.norm())


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
def test_bf16_training_step_on_fused_attention_matches_fp32(kv_heads):
    """A causal training forward and backward in bf16 on the GPU, with SDPA restricted to its fused kernels
    (flash, memory-efficient, cuDNN: no math fallback), against the same step in fp32 on the CPU. bf16
    operands give relative errors of 1e-3..1e-2 (the logits) and a few 1e-2 (the gradients)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    reference = make_model(n_kv_heads=kv_heads, max_seq_len=256).train()
    model = make_model(n_kv_heads=kv_heads, max_seq_len=256).to(GPU, torch.bfloat16).train()
    ids = torch.randint(0, 512, (4, 256), generator=torch.Generator().manual_seed(1))
    want = reference(ids)
    want.float().logsumexp(-1).mean().backward()
    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    with sdpa_kernel(fused):
        got = model(ids.to(GPU))
        got.float().logsumexp(-1).mean().backward()
    assert got.dtype == torch.bfloat16
    assert relative_error(got, want) < 2e-2
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert relative_error(p.grad, q.grad) < 6e-2, name


def test_engine_on_gpu_greedy_equals_full_recompute_and_batched_equals_one_by_one():
    model = make_model().to(GPU)
    engine = Engine(model, max_batch_size=4)
    prompts = [[5, 17, 99, 3, 250, 7], [9, 8], list(range(1, 30)), [4] * 11]
    params = SamplingParams(max_new_tokens=40, temperature=0)
    assert engine.generate(prompts[0], params) == naive_greedy(model, prompts[0], 40)
    batched = [c.token_ids for c in engine.generate_batch(prompts, params)]
    assert batched == [Engine(model).generate(p, params) for p in prompts]


def test_sampling_on_gpu_follows_the_seed_through_every_filter():
    """Sampled decoding on the GPU (the request's generator lives where the logits are): the same seed
    gives the same tokens, another seed others, with temperature, top-k, top-p, min-p and a repetition
    penalty all on; and speculative sampling (its acceptance draws) runs there too."""
    from llmkit.infer import Speculator

    model = make_model().to(GPU)
    params = dict(max_new_tokens=30, temperature=1.3, top_k=50, top_p=0.9, min_p=0.01, repetition_penalty=1.2)
    engine = Engine(model, max_batch_size=4)
    first = engine.generate([5, 17, 99], SamplingParams(seed=1, **params))
    assert first == engine.generate([5, 17, 99], SamplingParams(seed=1, **params))
    assert first != engine.generate([5, 17, 99], SamplingParams(seed=2, **params))
    assert all(0 <= t < 512 for t in first)
    for drafter in (make_model().to(GPU), "prompt-lookup"):  # drafts with and without their distributions
        spec = Engine(model, speculator=Speculator(drafter, 3))
        drafted = spec.generate([5, 17, 99, 5, 17, 99, 5, 17], SamplingParams(seed=1, max_new_tokens=30, temperature=1.0))
        assert len(drafted) == 30 and (spec.speculator.drafted > 0 or drafter == "prompt-lookup")


def test_compiled_engine_on_gpu_after_warm_up_equals_eager():
    """The compiled decode step on the GPU (inductor's Triton kernels, weights frozen into the graph), after
    `warm_up`, with guards skipped, gives the eager engine's tokens for a batch and a lone request."""
    from llmkit.infer.compiled import ATTEND_STEP, warm_up

    model, reference = make_model(max_seq_len=320).to(GPU), make_model(max_seq_len=320).to(GPU)
    engine = Engine(model, compile=True, max_batch_size=8)
    warm_up(engine)
    assert engine.warmed_up
    prompts = [[5, 17, 99, 3], list(range(1, 40)), [7] * 20]
    params = SamplingParams(max_new_tokens=ATTEND_STEP + 10, temperature=0)
    compiled = [c.token_ids for c in engine.generate_batch(prompts, params)]
    eager = [c.token_ids for c in Engine(reference, max_batch_size=8).generate_batch(prompts, params)]
    assert compiled == eager
    assert engine.generate([3, 1, 4], params) == Engine(reference).generate([3, 1, 4], params)


def test_bf16_engine_scores_match_fp32():
    """A bf16 model on the GPU (the default there, llmkit.device.inference_dtype) scores a prompt's next
    token as the fp32 model does, within bf16's rounding."""
    from llmkit.device import inference_dtype

    dtype = inference_dtype(GPU)
    assert dtype == torch.bfloat16
    reference, model = make_model(), make_model().to(GPU, dtype)
    ids = torch.randint(0, 512, (1, 60), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, got = reference(ids), model(ids.to(GPU))
    assert relative_error(got, want) < 2e-2
    # the engine's bf16 decode (cached keys and values) scores its tokens as the fp32 full forward does
    prompt = ids[0].tolist()
    completion = Engine(model).complete(prompt, SamplingParams(max_new_tokens=8, temperature=0, logprobs=1))
    with torch.no_grad():
        full = torch.log_softmax(reference(torch.tensor([prompt + completion.token_ids]))[0].float(), dim=-1)
    for i, step in enumerate(completion.logprobs):
        assert abs(step.logprob - float(full[len(prompt) - 1 + i, step.token_id])) < 0.05, i


shards = pretrain.shards  # the 512-token tokenizer and shards of test_pretrain.py, made the same way


def common(shards, **extra):
    """test_pretrain's overrides, on the GPU with a longer sequence and a larger batch."""
    return pretrain.common(shards, **{"device": "cuda", "seq_len": 128, "micro_batch": 16, "eval_tokens": 16384,
                                      "warmup_steps": 5, **extra})


def test_compiled_bf16_pretraining_on_gpu_learns_and_its_checkpoint_runs_on_a_cpu(tmp_path, shards):
    out = tmp_path / "run"
    result = run_cli("pretrain", "--out", out, *common(shards, max_steps=80, lr=5e-3, compile="true", dtype="bf16"))
    assert result.returncode == 0, result.stderr[-3000:]
    got = pretrain.losses(out)
    assert got[80] < got[1] - 1.0, got  # 512-way uniform guessing is 6.24 nats
    assert all(math.isfinite(v) for v in got.values())
    result = run_cli("generate", "--model", out, "--device", "cpu", "--max-new-tokens", 5, "ROMEO")
    assert result.returncode == 0, result.stderr[-3000:]


def test_fsdp2_on_one_gpu_matches_a_plain_run(tmp_path, shards):
    """torchrun with NCCL and FSDP2 (fully_shard per block) on one GPU takes the plain run's steps: fp32,
    eager, the same data; only the reductions' order may differ."""
    args = common(shards, max_steps=5, dtype="fp32", compile="false")
    plain = run_cli("pretrain", "--out", tmp_path / "plain", *args)
    assert plain.returncode == 0, plain.stderr[-3000:]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sharded = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1",
                              "--master_addr", "127.0.0.1", "--master_port", str(pretrain._free_port()),
                              "-m", "llmkit.cli", "pretrain", "--fsdp", "--out", str(tmp_path / "fsdp"), *args],
                             capture_output=True, text=True, env=env, timeout=300)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    one, two = pretrain.losses(tmp_path / "plain"), pretrain.losses(tmp_path / "fsdp")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4, 5]
    for step in one:
        assert math.isclose(one[step], two[step], rel_tol=1e-4), (step, one[step], two[step])
