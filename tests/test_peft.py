"""LoRA and prompt tuning: equivalences (zero-initialised B == base, merged == unmerged), only the
adapter trains, the adapter alone saves and loads, a soft prompt runs through the engine, and PEFT
runs of the SFT stage write the documented files."""

import json

import pytest
import torch

from llmkit.checkpoint import load_model
from llmkit.config import ModelConfig
from llmkit.errors import CheckpointError, ConfigError
from llmkit.infer import Engine, SamplingParams
from llmkit.model import Transformer
from llmkit.train.peft import (LoRALinear, adapters_disabled, apply_lora, apply_prompt_tuning, load_adapter, load_peft,
                               merge_lora, prompt_prefix_ids, save_peft, trainable_parameters)
from posttrain_fixtures import config, task_files, tiny_base  # noqa: F401 (fixtures)


def tiny(seed=0):
    torch.manual_seed(seed)
    return Transformer(ModelConfig.preset("tiny")).eval()


def randomise_lora(model, seed=1):
    generator = torch.Generator().manual_seed(seed)
    for _, m in model.named_modules():
        if isinstance(m, LoRALinear):
            m.lora_B.data = torch.randn(m.lora_B.shape, generator=generator) * 0.1


def test_lora_with_zero_b_is_the_base_model_and_only_adapters_train():
    model = tiny()
    ids = torch.randint(0, 512, (2, 20))
    before = model(ids)
    names = apply_lora(model, rank=4, alpha=8, dropout=0.0)
    assert len(names) == 4 * model.config.n_layers  # qkv, out, gate_up, down in every block
    assert torch.equal(model(ids), before)
    trainable, total = trainable_parameters(model)
    lora = sum(m.lora_A.numel() + m.lora_B.numel() for m in model.modules() if isinstance(m, LoRALinear))
    assert trainable == lora and trainable < total / 5
    # one optimizer step moves only adapter tensors (the Trainer's optimizer takes requires_grad params)
    from llmkit.train.config import TrainConfig
    from llmkit.train.optim import build_optimizers

    frozen = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    model.train()
    opts = build_optimizers(model, TrainConfig(lr=1e-2, weight_decay=0.0), "cpu")
    model(ids, ids).backward()
    for opt in opts:
        opt.step()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())
    assert any(m.lora_B.abs().sum() > 0 for m in model.modules() if isinstance(m, LoRALinear))


def test_merged_lora_equals_unmerged_and_disabled_equals_base():
    model = tiny()
    ids = torch.randint(0, 512, (2, 16))
    base = model(ids)
    apply_lora(model, rank=4, alpha=16, dropout=0.1, targets=["attn.qkv", "mlp.down"])
    randomise_lora(model)
    model.eval()
    unmerged = model(ids)
    assert (unmerged - base).abs().max() > 1e-3  # the adapter does something
    with adapters_disabled(model):
        assert torch.equal(model(ids), base)
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert torch.allclose(model(ids), unmerged, atol=1e-5)


def test_unknown_target_is_a_clear_error():
    with pytest.raises(ConfigError, match="match no Linear layer.*attn.qkv"):
        apply_lora(tiny(), targets=["q_proj"])


def test_adapter_alone_saves_and_loads_onto_its_base(tmp_path, shakespeare_tokenizer):
    model = tiny()
    apply_lora(model, rank=4, alpha=8)
    randomise_lora(model)
    ids = torch.randint(0, 512, (1, 12))
    expected = model(ids)
    save_peft(tmp_path, model, model.state_dict(), shakespeare_tokenizer, base_model="tiny-seed-0")
    record = json.loads((tmp_path / "adapter_config.json").read_text())
    assert record["peft_type"] == "LORA" and record["r"] == 4 and record["base_model"] == "tiny-seed-0"
    # the directory is an ordinary checkpoint of the merged model ...
    assert torch.allclose(load_model(tmp_path)(ids), expected, atol=1e-5)
    # ... and the adapter alone goes back onto a fresh base, unmerged
    from safetensors.torch import load_file

    adapter = load_file(tmp_path / "adapter_model.safetensors")
    assert set(adapter) == {k for k in model.state_dict() if "lora_" in k}
    restored = load_adapter(tiny(), tmp_path).eval()
    assert torch.allclose(restored(ids), expected, atol=1e-6)
    with pytest.raises(CheckpointError, match="adapter"):
        load_adapter(Transformer(ModelConfig.preset("tiny", d_model=32, n_heads=2, n_kv_heads=1)), tmp_path)


def test_prompt_tuning_prepends_trainable_tokens_and_runs_in_the_engine(tmp_path, shakespeare_tokenizer):
    model = tiny()
    n = 3
    prefix = apply_prompt_tuning(model, n)
    assert prefix == [512, 513, 514] and prompt_prefix_ids(model) == prefix
    assert trainable_parameters(model)[0] == n * model.config.d_model
    assert model.lm_head.weight is model.tok_emb.weight  # still tied; the head never emits virtual tokens
    model.tok_emb.prompt.data.normal_(0, 1)
    ids = [1, 50, 60, 70]
    full = torch.tensor([prefix + ids])
    assert model(full).shape[-1] == 512
    # the soft prompt matters, and the engine's greedy generation equals naive recomputation
    reference = prefix + ids
    for _ in range(6):
        reference.append(int(model(torch.tensor([reference]))[0, -1].argmax()))
    engine = Engine(model, [], prefix_cache_mib=0)  # it puts the soft prompt before the prompt itself
    assert engine.generate(ids, SamplingParams(max_new_tokens=6, temperature=0)) == reference[n + len(ids):]
    # gradients reach the soft prompt only
    model.train()
    targets = full.masked_fill(full >= 512, -100)
    model(full, targets).backward()
    assert model.tok_emb.prompt.grad.abs().sum() > 0 and model.tok_emb.weight.grad is None
    # saved as the base checkpoint + the soft prompt; load_peft restores it
    save_peft(tmp_path, model, model.state_dict(), shakespeare_tokenizer)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["num_virtual_tokens"] == n
    assert load_model(tmp_path).config.vocab_size == 512
    restored, _ = load_peft(tmp_path)
    assert torch.equal(restored(full), model.eval()(full))


@pytest.mark.parametrize("method", ["lora", "prompt"])
def test_sft_with_peft_trains_the_adapter_and_writes_it(tmp_path, tiny_base, task_files, method):
    from llmkit.train.post_config import SFTConfig
    from llmkit.train.sft import run_sft

    out = tmp_path / method
    # 8 examples in two batches, 6 epochs, so every late step sees a batch the first steps saw (on 48 different
    # examples the last step's loss against the first's was a coin toss: 4 soft tokens before a random tiny model
    # lower its loss by only ~0.02)
    cfg = config(SFTConfig, init_from=tiny_base, data=task_files["sft"], data_records=[0, 8], val_data=task_files["heldout"],
                 max_steps=12, lr=1e-2 if method == "lora" else 0.1, peft=method, prompt_tokens=4, eval_task=False)
    result = run_sft(cfg, out)
    base = load_model(tiny_base)
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    assert (out / "checkpoints" / "step_0000012" / "trainable.safetensors").exists()
    if method == "lora":
        merged = load_model(out)
        changed = [k for k, v in merged.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
        assert changed and all(k.endswith(("qkv.weight", "out.weight", "gate_up.weight", "down.weight")) for k in changed)
    else:
        assert all(torch.equal(v, base.state_dict()[k]) for k, v in load_model(out).state_dict().items())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert max(losses[-4:]) < losses[0] - 0.005  # (LoRA: 6.20 -> 5.73; prompt tuning: 6.204 -> 6.160-6.186)
    assert result.eval["val_loss"] < records[0]["loss"] + 0.5


def test_resume_of_a_lora_run_matches_the_uninterrupted_run(tmp_path, tiny_base, task_files):
    from llmkit.train.post_config import SFTConfig
    from llmkit.train.sft import run_sft

    fields = dict(init_from=tiny_base, data=task_files["sft"], lr=1e-2, peft="lora", ckpt_every=4, eval_task=False)
    run_sft(config(SFTConfig, max_steps=8, **fields), tmp_path / "ref")
    run_sft(config(SFTConfig, max_steps=8, **fields), tmp_path / "cut")
    # pretend the run died after step 4: drop the later checkpoint and resume from step 4
    import shutil

    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step_0000008")
    (tmp_path / "cut" / "checkpoints" / "latest").write_text("step_0000004\n")
    run_sft(config(SFTConfig, max_steps=8, **fields), tmp_path / "cut", resume=True)

    def losses(d):
        return {r["step"]: r["loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if "loss" in r}

    assert losses(tmp_path / "cut") == losses(tmp_path / "ref")
