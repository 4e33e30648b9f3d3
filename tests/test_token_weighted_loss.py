"""Token-weighted losses under gradient accumulation and DDP: a step's loss is the mean over the units (learned
tokens, pairs) of ALL its micro-batches on all processes, as one large batch computes it, not a mean of means.
SFT micro-batches hold very different numbers of assistant tokens, so the two differ; checked against a
hand-computed reference (sum of token losses / token count over the whole batch, and its gradient)."""

import inspect
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from posttrain_fixtures import config, tiny_base  # noqa: F401 (fixtures)

LONG = ("Now is the winter of our discontent made glorious summer by this sun of York, and all the clouds that "
        "loured upon our house in the deep bosom of the ocean buried. Now are our brows bound with victorious "
        "wreaths, our bruised arms hung up for monuments, our stern alarums changed to merry meetings.")


def write_records(path, replies):
    with open(path, "w") as f:
        for i, reply in enumerate(replies):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"Say something, number {i}."},
                                             {"role": "assistant", "content": reply}]}) + "\n")
    return path


def record_gradients(monkeypatch) -> list[list[torch.Tensor]]:
    """Each step's gradients as the Trainer hands them to clipping (after accumulation and any all-reduce)."""
    real, steps = torch.nn.utils.clip_grad_norm_, []

    def recording(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        steps.append([p.grad.detach().clone() for p in parameters])
        return real(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording)
    return steps


def hand_reference(model_dir, data) -> tuple[float, list[torch.Tensor], int]:
    """(sum of the learned tokens' cross-entropies / their count over all records, its gradient, the count):
    each record run alone through the starting model, no packing, no Trainer."""
    from llmkit.checkpoint import load_model, load_tokenizer
    from llmkit.train.chat_data import encode_sft, load_records

    model, tokenizer = load_model(model_dir, dtype=torch.float32), load_tokenizer(model_dir)
    total, count = torch.zeros(()), 0
    for record in load_records(data, "sft"):
        enc = encode_sft(tokenizer, record)
        ids = torch.tensor([enc.ids])
        learned = torch.tensor(enc.mask[1:])  # token t+1 is learned where the assistant said it
        logits = model(ids[:, :-1])[0]
        total = total + F.cross_entropy(logits[learned], ids[0, 1:][learned], reduction="sum")
        count += int(learned.sum())
    loss = total / count
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()], count


def test_sft_accumulation_is_the_token_mean_of_one_large_batch(tmp_path, tiny_base, monkeypatch, one_thread):
    """Four records, one with a reply of ~150 tokens and three of a few, as one step of 1 x 4, 2 x 2 and 4 x 1
    accumulated micro-batches: each step's gradient and logged loss equal the hand-computed token mean over the
    four (a mean of micro-batch means weighed each short reply's few tokens as much as the long one), and the
    second step and the weights after it agree between the three. Before the fix: losses 6.2499 / 6.2795 /
    6.2652 and gradients off by up to 0.38."""
    from llmkit.checkpoint import load_model
    from llmkit.train.post_config import SFTConfig
    from llmkit.train.sft import run_sft

    data = write_records(tmp_path / "sft.jsonl", [LONG, "Yes.", "No.", "Aye."])
    ref_loss, ref_grads, count = hand_reference(tiny_base, data)
    assert count > 140  # the long reply's tokens: 146 of them
    runs = {}
    for rows in (4, 2, 1):
        grads = record_gradients(monkeypatch)
        out = tmp_path / f"rows{rows}"
        cfg = config(SFTConfig, init_from=tiny_base, data=data, packing=False, micro_batch=rows, seq_len=256,
                     batch_tokens=4 * 256, max_steps=2, lr=1e-3, warmup_steps=0, grad_clip=1e9)
        result = run_sft(cfg, out)
        monkeypatch.undo()
        assert result.steps == 2 and len(grads) == 2
        logged = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
        runs[rows] = (logged, grads, load_model(out).state_dict())
        print(f"micro_batch {rows} x {4 // rows}: step-1 loss {logged[0]:.6f} (hand reference {ref_loss:.6f}), "
              f"max |grad - reference| {max((g - r).abs().max().item() for g, r in zip(grads[0], ref_grads)):.2e}")
    for rows, (logged, grads, weights) in runs.items():
        assert logged[0] == pytest.approx(ref_loss, abs=2e-5), rows
        for got, want in zip(grads[0], ref_grads, strict=True):
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-6), rows
        if rows != 4:  # the second step (from weights that agree) too, and the weights after it
            assert logged[1] == pytest.approx(runs[4][0][1], abs=2e-5), rows
            for got, want in zip(grads[1], runs[4][1][1], strict=True):
                assert torch.allclose(got, want, rtol=1e-4, atol=1e-6), rows
            for name, weight in runs[4][2].items():
                assert torch.allclose(weights[name], weight, atol=1e-5), (rows, name)


def masked_rows(counts=(30, 24, 2, 1)) -> tuple[torch.Tensor, torch.Tensor]:
    """Four rows of 32 tokens with 30, 24, 2 and 1 targets (the rest -100, as MLM's unmasked tokens)."""
    g = torch.Generator().manual_seed(3)
    inputs, targets = torch.randint(0, 512, (4, 32), generator=g), torch.randint(0, 512, (4, 32), generator=g)
    keep = torch.arange(32)[None, :] < torch.tensor(counts)[:, None]
    return inputs, targets.masked_fill(~keep, -100)


def tiny_model():
    from llmkit.config import ModelConfig
    from llmkit.model import Transformer

    torch.manual_seed(0)
    return Transformer(ModelConfig.preset("tiny"))


def whole_batch_reference(counts=(30, 24, 2, 1)) -> tuple[float, list[torch.Tensor]]:
    """The loss and gradient of the four rows as one batch, by hand: sum of the targets' cross-entropies / their
    number (57)."""
    model = tiny_model()
    inputs, targets = masked_rows(counts)
    logits = model(inputs)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum") / sum(counts)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()]


def train_one_step(out, rows: int, world_size: int = 1, counts=(30, 24, 2, 1)):
    """One step of the default objective (next-token / MLM cross-entropy) over the four rows: `rows` rows per
    micro-batch, accumulated over 4 / rows / world_size micro-batches on each process."""
    from llmkit.train.config import TrainConfig
    from llmkit.train.trainer import Trainer

    inputs, targets = masked_rows(counts)
    config = TrainConfig(model="tiny", seq_len=32, micro_batch=rows, batch_tokens=4 * 32, max_steps=1, dtype="fp32",
                         device="cpu", log_every=1, plot=False, warmup_steps=0, grad_clip=1e9, lr=1e-3)
    trainer = Trainer(tiny_model(), config, out, lambda step, micro: (inputs[micro * rows:(micro + 1) * rows],
                                                                      targets[micro * rows:(micro + 1) * rows]),
                      rows * 32)
    assert trainer.accum * world_size * rows == 4
    trainer.fit()


def logged_loss(out) -> float:
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss"]


@pytest.mark.parametrize("rows", [4, 2, 1])
def test_the_default_objective_weights_micro_batches_by_their_targets(tmp_path, monkeypatch, rows, one_thread):
    """MLM's batches (the default objective, targets only at the chosen tokens) hold varying numbers of targets:
    rows of 30, 24, 2 and 1 as 1 x 4, 2 x 2 and 4 x 1 give the hand-computed whole-batch loss and gradient."""
    ref_loss, ref_grads = whole_batch_reference()
    grads = record_gradients(monkeypatch)
    train_one_step(tmp_path / "run", rows)
    assert logged_loss(tmp_path / "run") == pytest.approx(ref_loss, abs=2e-6)
    for got, want in zip(grads[0], ref_grads, strict=True):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-7)


def test_a_micro_batch_without_targets_adds_nothing(tmp_path, monkeypatch, one_thread):
    """Rows of 30, 24, 0 and 0 targets as 2 x 2: the second micro-batch has nothing to learn. It weighs 0 (the
    loop averaged its loss of 0 in: half the gradient and half the logged loss) and the step is the first's."""
    ref_loss, ref_grads = whole_batch_reference((30, 24, 0, 0))
    grads = record_gradients(monkeypatch)
    train_one_step(tmp_path / "run", 2, counts=(30, 24, 0, 0))
    assert logged_loss(tmp_path / "run") == pytest.approx(ref_loss, abs=2e-6)
    for got, want in zip(grads[0], ref_grads, strict=True):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-7)


def test_an_objective_without_units_keeps_equal_weights(tmp_path, monkeypatch, one_thread):
    """An objective that does not say its units (a stage's own, e.g. classification) trains as before: each
    micro-batch's mean weighs 1 / micro-batches, and the logged loss is the mean of the micro-batches' means."""
    from llmkit.train import trainer

    def plain(model, batch):  # the default objective's loss, without its units
        return model(*batch), {}

    inputs, targets = masked_rows()
    model = tiny_model()
    means = [F.cross_entropy(model(inputs[i:i + 2]).flatten(0, 1), targets[i:i + 2].flatten(), ignore_index=-100)
             for i in (0, 2)]
    expected = (means[0] + means[1]) / 2
    expected.backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    grads = record_gradients(monkeypatch)
    from llmkit.train.config import TrainConfig

    config = TrainConfig(model="tiny", seq_len=32, micro_batch=2, batch_tokens=4 * 32, max_steps=1, dtype="fp32",
                         device="cpu", log_every=1, plot=False, warmup_steps=0, grad_clip=1e9, lr=1e-3)
    run = trainer.Trainer(tiny_model(), config, tmp_path / "run", lambda step, micro: (inputs[micro * 2:micro * 2 + 2],
                                                                                     targets[micro * 2:micro * 2 + 2]),
                          64, objective=plain)
    run.fit()
    assert logged_loss(tmp_path / "run") == pytest.approx(expected.item(), abs=2e-6)
    for got, want in zip(grads[0], ref_grads, strict=True):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-7)


DDP_SCRIPT = """
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from llmkit.train.distributed import shutdown

{helpers}

real, steps = torch.nn.utils.clip_grad_norm_, []


def recording(parameters, max_norm, *args, **kwargs):
    parameters = list(parameters)
    steps.append([p.grad.detach().clone() for p in parameters])
    return real(parameters, max_norm, *args, **kwargs)


torch.nn.utils.clip_grad_norm_ = recording
torch.set_num_threads(1)
out = Path(sys.argv[1])
train_one_step(out, 1, world_size=2)
save_file({{str(i): g.contiguous() for i, g in enumerate(steps[0])}}, out / f"grads{{dist.get_rank()}}.safetensors")
shutdown()
"""


def test_two_processes_weight_their_micro_batches_by_the_targets_of_both(tmp_path):
    """torchrun, 2 gloo processes x 2 accumulated micro-batches of one row: rank 0 holds the rows of 30 and 2
    targets, rank 1 those of 24 and 1. The count is summed over both processes and DDP's average undone, so
    both hold the whole batch's hand-computed gradient, and the logged loss is its token mean."""
    from safetensors.torch import load_file
    from test_pretrain import _free_port

    helpers = "\n\n".join(inspect.getsource(f) for f in (masked_rows, tiny_model, train_one_step))
    script = tmp_path / "ddp_step.py"
    script.write_text(DDP_SCRIPT.format(helpers=helpers))
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                             "127.0.0.1", "--master_port", str(_free_port()), str(script), str(out)],
                            capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    ref_loss, ref_grads = whole_batch_reference()
    assert logged_loss(out) == pytest.approx(ref_loss, abs=2e-6)
    for rank in (0, 1):
        grads = load_file(out / f"grads{rank}.safetensors")
        assert len(grads) == len(ref_grads)
        for i, want in enumerate(ref_grads):
            assert torch.allclose(grads[str(i)], want, rtol=1e-4, atol=1e-7), (rank, i)


def preference_records(path):
    """Pairs of very different lengths: one whose replies are a long speech, three of a word or two."""
    pairs = [(LONG, "Nothing."), ("Yes.", "No."), ("Aye, my lord.", "Nay."), ("Good night.", "Farewell, " + LONG[:80])]
    with open(path, "w") as f:
        for i, (chosen, rejected) in enumerate(pairs):
            f.write(json.dumps({"prompt": f"Say something, number {i}.", "chosen": chosen, "rejected": rejected}) + "\n")
    return path


def run_stage(stage: str, tmp_path, tiny_base, rows: int):
    """One step of a stage over two micro_batch-rows micro-batches' worth of examples (rows x 2 / rows)."""
    from llmkit.train import post_config

    # packed into rows of seq_len 256: [the long reply, its first 120 characters, "Yes."] and ["No."]
    sft_data = write_records(tmp_path / "sft.jsonl", [LONG, LONG[:120], "Yes.", "No."])
    pref_data = preference_records(tmp_path / "pref.jsonl")
    common = dict(micro_batch=rows, batch_tokens=2 * 256, max_steps=1, lr=1e-3, warmup_steps=0, grad_clip=1e9,
                  eval_task=False)
    out = tmp_path / f"{stage}{rows}"
    if stage == "distill":
        from llmkit.train.distill import run_distill

        return run_distill(config(post_config.DistillConfig, teacher=tiny_base, data=sft_data, hard_weight=0.5,
                                  **common), out)
    if stage == "dpo":  # (the pairs' reference log-probabilities come from the model itself: loss log 2)
        from llmkit.train.dpo import run_dpo

        return run_dpo(config(post_config.DPOConfig, init_from=tiny_base, data=pref_data, rpo_alpha=1.0, **common),
                       out)
    from llmkit.train.reward import run_reward

    return run_reward(config(post_config.RewardConfig, init_from=tiny_base, data=pref_data, **common), out)


@pytest.mark.parametrize("stage", ["distill", "dpo", "reward"])
def test_each_stage_s_accumulated_step_is_its_one_batch_step(tmp_path, tiny_base, monkeypatch, stage, one_thread):
    """Distillation (a mean over the learned tokens; packed rows of 3 conversations and of 1), DPO with RPO's NLL
    (a mean over pairs plus a mean over the chosen tokens) and the reward model (a mean over pairs): the same
    examples as 1 micro-batch of 2 and as 2 accumulated micro-batches of 1 give the same gradient. The old loop
    weighed distillation's ~200 and ~20 tokens alike, and RPO's NLL was each micro-batch's own token mean; the
    reward model's micro-batches hold as many pairs each (equal weights before and after)."""
    grads = {}
    for rows in (2, 1):
        recorded = record_gradients(monkeypatch)
        assert run_stage(stage, tmp_path, tiny_base, rows).steps == 1
        monkeypatch.undo()
        grads[rows] = recorded[0]
    for got, want in zip(grads[1], grads[2], strict=True):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)
