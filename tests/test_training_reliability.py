"""A training run's directory belongs to one run: another verb cannot resume its checkpoints, a user's
files in --out are never written over, the starting model is known by its content (not its path), a
final save cut short is refused by loaders until --resume writes it again; and the stages check their
data up front (held-out fraction, over-long RLHF prompts, a distillation's shards) and seed their heads."""

import json
import math
import shutil

import pytest
import torch

from conftest import SHAKESPEARE, cli_in_process
from llmkit.errors import CheckpointError, ConfigError, DataError, OutputError
from posttrain_fixtures import config, task_files, tiny_base  # noqa: F401 (fixtures)


def losses(run_dir):
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}


def other_model(tiny_base, out, seed=1):
    """A tiny model with other weights, saved with tiny_base's tokenizer."""
    from llmkit.checkpoint import load_config, load_tokenizer, save_checkpoint
    from llmkit.model import Transformer

    torch.manual_seed(seed)
    save_checkpoint(out, Transformer(load_config(tiny_base)), load_tokenizer(tiny_base))
    return out


def sft_fields(tiny_base, task_files, **extra):
    return dict(init_from=tiny_base, data=task_files["sft"], data_records=[0, 32], eval_task=False, seq_len=128,
                **extra)


def test_a_resume_by_another_verb_or_peft_method_is_refused_before_anything_is_loaded(tmp_path, tiny_base, task_files):
    from llmkit.train.dpo import REFERENCE_FILE, run_dpo
    from llmkit.train.post_config import DPOConfig, SFTConfig
    from llmkit.train.sft import run_sft

    out = tmp_path / "sft"
    run_sft(config(SFTConfig, max_steps=2, **sft_fields(tiny_base, task_files)), out)
    dpo = config(DPOConfig, init_from=tiny_base, data=task_files["preference"], data_records=[0, 8], max_steps=4,
                 eval_task=False, seq_len=128)
    with pytest.raises(CheckpointError, match=r"step_0000002: was written by `llmkit sft`, not `llmkit dpo`; "
                                              r"resume it with `llmkit sft`, or choose another --out"):
        run_dpo(dpo, out, resume=True)
    assert not (out / REFERENCE_FILE).exists()  # refused before DPO computed anything into the SFT run
    with pytest.raises(CheckpointError, match=r"written by `llmkit sft`, not `llmkit sft` with peft=lora"):
        run_sft(config(SFTConfig, max_steps=4, peft="lora", **sft_fields(tiny_base, task_files)), out, resume=True)
    # the same verb resumes it (a larger budget: two more steps)
    assert run_sft(config(SFTConfig, max_steps=4, **sft_fields(tiny_base, task_files)), out, resume=True).steps == 4


@pytest.mark.parametrize("files", [{"tokenizer.json": "{}", "README.txt": "notes"}, {"notes.txt": "mine"}])
def test_training_never_writes_among_a_users_files(tmp_path, tiny_base, task_files, files):
    from llmkit.train.post_config import SFTConfig
    from llmkit.train.sft import run_sft

    out = tmp_path / "mine"
    out.mkdir()
    for name, text in files.items():
        (out / name).write_text(text)
    with pytest.raises(OutputError, match=r"mine: holds files that no training run wrote \((README.txt, )?"
                                          r"(notes.txt|tokenizer.json)\).*choose a new or empty --out"):
        run_sft(config(SFTConfig, max_steps=1, **sft_fields(tiny_base, task_files)), out)
    assert sorted(p.name for p in out.iterdir()) == sorted(files)  # nothing written there, nothing replaced
    assert all((out / name).read_text() == text for name, text in files.items())


def test_pretrain_refuses_a_tokenizer_folder_as_its_out(tmp_path, shakespeare_tokenizer):
    """The auditor's case, through the CLI: `--out` naming a tokenizer folder with the user's notes."""
    shakespeare_tokenizer.save(tmp_path / "tok")
    (tmp_path / "tok" / "README.txt").write_text("notes")
    before = (tmp_path / "tok" / "tokenizer.json").read_bytes()
    result = cli_in_process("pretrain", "--out", tmp_path / "tok", "model=tiny", "data=shakespeare", "max_steps=1")
    assert result.returncode == 2 and "holds files that no training run wrote" in result.stderr, result.stderr
    assert (tmp_path / "tok" / "tokenizer.json").read_bytes() == before


def test_dpo_reference_cache_follows_the_starting_weights_not_their_path(tmp_path, tiny_base, task_files):
    """Another model put at init_from's path: the reference log-probabilities are computed again, so the
    first step's loss is log 2 (the policy is the reference), not the stale cache's."""
    from llmkit.train.dpo import run_dpo
    from llmkit.train.post_config import DPOConfig

    start = tmp_path / "start"
    shutil.copytree(tiny_base, start)
    dpo = config(DPOConfig, init_from=start, data=task_files["preference"], data_records=[0, 8], max_steps=1,
                 eval_task=False, seq_len=128, lr=1e-2)
    run_dpo(dpo, tmp_path / "run")
    shutil.rmtree(start)
    other_model(tiny_base, start)
    shutil.rmtree(tmp_path / "run" / "checkpoints")  # a fresh run in the same folder reuses the cache file
    run_dpo(dpo, tmp_path / "run")
    assert losses(tmp_path / "run")[1] == pytest.approx(math.log(2), abs=1e-5)


def test_a_resume_after_the_starting_model_changed_is_refused(tmp_path, tiny_base, task_files):
    """LoRA's frozen weights are read from init_from again on resume: other weights there would continue
    the run on another base without a word."""
    from llmkit.train.post_config import SFTConfig
    from llmkit.train.sft import run_sft

    start = tmp_path / "start"
    shutil.copytree(tiny_base, start)
    fields = sft_fields(start, task_files, peft="lora")
    run_sft(config(SFTConfig, max_steps=2, **fields), tmp_path / "run")
    (start / "notes.txt").write_text("same weights: still the same model")
    shutil.copytree(start, tmp_path / "moved")  # the same weights at another path: accepted too
    assert run_sft(config(SFTConfig, max_steps=3, **{**fields, "init_from": tmp_path / "moved"}), tmp_path / "run",
                   resume=True).steps == 3
    shutil.rmtree(start)
    other_model(tiny_base, start)
    with pytest.raises(CheckpointError, match=r"step_0000003: the starting model at .*start changed since this run "
                                              r"began \(sha256 \w+\.\.\. then, \w+\.\.\. now\); resume with the original"):
        run_sft(config(SFTConfig, max_steps=4, **fields), tmp_path / "run", resume=True)


def test_the_starting_model_may_go_away_while_the_run_trains(tmp_path, tiny_base, task_files, monkeypatch):
    """Its weights are hashed when the run starts: a base folder tidied away mid-run (before the first
    checkpoint) must not cost the run its checkpoints (review)."""
    from llmkit.train.post_config import SFTConfig
    from llmkit.train.sft import run_sft
    from llmkit.train.trainer import Trainer

    start = tmp_path / "start"
    shutil.copytree(tiny_base, start)
    real_save = Trainer._save

    def save_after_the_base_went(self, *args, **kwargs):
        shutil.rmtree(start, ignore_errors=True)
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_save", save_after_the_base_went)
    assert run_sft(config(SFTConfig, max_steps=2, ckpt_every=1, **sft_fields(start, task_files)),
                   tmp_path / "run").steps == 2
    assert (tmp_path / "run" / "checkpoints" / "step_0000002").is_dir()


def test_weights_are_known_by_their_tensors_and_heads_not_their_metadata(tmp_path, tiny_base):
    from safetensors.torch import load_file, save_file

    from llmkit.checkpoint import weights_sha256

    model = tmp_path / "model"
    shutil.copytree(tiny_base, model)
    before = weights_sha256(model)
    tensors = load_file(model / "model.safetensors")
    save_file(tensors, model / "model.safetensors", metadata={"converted_from": "/somewhere/else"})
    assert weights_sha256(model) == before  # converted from another path: the same weights
    save_file({"head.weight": torch.zeros(1, 4)}, model / "reward_head.safetensors")
    with_head = weights_sha256(model)
    assert with_head != before  # a reward model's head is part of what it is
    name = next(iter(tensors))
    save_file({**tensors, name: tensors[name] + 1}, model / "model.safetensors")
    assert weights_sha256(model) not in (before, with_head)


def test_val_fraction_that_leaves_no_training_records_is_a_config_error(tiny_base, task_files):
    from llmkit.train.post_common import stage_records
    from llmkit.train.post_config import SFTConfig

    sft = config(SFTConfig, init_from=tiny_base, data=task_files["sft"], data_records=[0, 1], val_fraction=0.5)
    with pytest.raises(ConfigError, match=r"sft_train\.jsonl: val_fraction=0\.5 holds out 1 of its 1 record\(s\), leaving "
                                          "none to train on"):
        stage_records(sft, "sft")
    sft = config(SFTConfig, init_from=tiny_base, data=task_files["sft"], data_records=[0, 4], val_fraction=0.5)
    assert [len(part) for part in stage_records(sft, "sft")] == [2, 2]


def test_reward_and_classifier_heads_are_initialised_from_the_run_s_seed():
    from llmkit.classify.head import SequenceClassifier
    from llmkit.config import ModelConfig
    from llmkit.model import Transformer
    from llmkit.train.reward import RewardModel

    transformer = Transformer(ModelConfig.preset("tiny"))
    for make in (lambda seed: RewardModel(transformer, seed=seed),
                 lambda seed: SequenceClassifier(transformer, ["a", "b"], seed=seed)):
        torch.manual_seed(1)
        first = make(7).score.weight.detach().clone()
        torch.manual_seed(2)  # torch's global generator elsewhere: no matter
        assert torch.equal(make(7).score.weight, first)
        assert not torch.equal(make(8).score.weight, first)


def test_distill_refuses_token_shards_of_another_tokenizer(tmp_path, tiny_base):
    from llmkit.train.distill import run_distill
    from llmkit.train.post_config import DistillConfig

    assert cli_in_process("tokenizer", "train", "--input", SHAKESPEARE / "val", "--vocab-size", 300,
                          "--out", tmp_path / "tok").returncode == 0
    result = cli_in_process("data", "prepare", "--input", SHAKESPEARE / "val", "--tokenizer", tmp_path / "tok",
                            "--out", tmp_path / "shards")
    assert result.returncode == 0, result.stderr
    with pytest.raises(ConfigError, match=r"shards was tokenized with another tokenizer than the teacher .*'s; "
                                          r"prepare the shards with `llmkit data prepare --tokenizer"):
        run_distill(config(DistillConfig, teacher=tiny_base, data=tmp_path / "shards", max_steps=1, seq_len=64,
                           eval_every=0), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_rlhf_drops_prompts_longer_than_seq_len_before_training(tmp_path, tiny_base, capsys):
    from llmkit.train.post_config import RLConfig
    from llmkit.train.rl import run_rl

    prompts = tmp_path / "prompts.jsonl"
    long = "To be, or not to be, that is the question. " * 20
    prompts.write_text("".join(json.dumps({"prompt": p, "answer": "yes"}) + "\n"
                               for p in ["Is it?", long, "Is one a number?", "Say yes."]))
    rl = dict(init_from=tiny_base, reward_model="answers", data=prompts, max_steps=1, micro_batch=4, group_size=2,
              max_new_tokens=4, seq_len=64, eval_task=False, eval_every=0)
    assert run_rl(config(RLConfig, **rl), tmp_path / "run").steps == 1  # (before: refused at the step with it)
    assert "3 prompts (1 dropped: prompt longer than seq_len)" in capsys.readouterr().out
    prompts.write_text(json.dumps({"prompt": long, "answer": "yes"}) + "\n")
    with pytest.raises(DataError, match=r"prompts\.jsonl:1: every record's prompt fills seq_len=64 tokens"):
        run_rl(config(RLConfig, **rl), tmp_path / "run2")


def test_rlhf_with_several_updates_per_batch_resumes_exactly(tmp_path, tiny_base):
    """A batch's rollouts (and their old log-probabilities) live in memory: checkpoints fall on the first
    step of a batch, so a resume samples the batch again from the same weights as the uninterrupted run."""
    from llmkit.train.post_config import RLConfig
    from llmkit.train.rl import run_rl

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Is {i} a number?", "answer": "yes"}) + "\n" for i in range(16)))
    rl = dict(init_from=tiny_base, reward_model="answers", data=prompts, max_steps=6, micro_batch=2, group_size=2,
              max_new_tokens=4, seq_len=64, eval_task=False, eval_every=0, lr=1e-2, updates_per_batch=2,
              ckpt_every=3, keep_checkpoints=5)
    run_rl(config(RLConfig, **rl), tmp_path / "ref")
    run_rl(config(RLConfig, **rl), tmp_path / "cut")
    root = tmp_path / "cut" / "checkpoints"
    kept = sorted(p.name for p in root.glob("step_*"))
    assert kept == ["step_0000004", "step_0000006"]  # ckpt_every 3 waits for the next batch's first step
    shutil.rmtree(root / "step_0000006")  # pretend the run died after step 4
    (root / "latest").write_text("step_0000004\n")
    run_rl(config(RLConfig, **rl), tmp_path / "cut", resume=True)
    assert losses(tmp_path / "cut") == losses(tmp_path / "ref")


def test_a_final_save_cut_short_is_refused_by_loaders_and_written_again_on_resume(tmp_path, tiny_base, task_files,
                                                                                   monkeypatch):
    """The reward model's backbone and head are written one after the other: a kill between them must
    not leave step 4's backbone beside step 2's head that loads without a word."""
    import llmkit
    import llmkit.train.reward as reward
    from llmkit.train.post_config import RewardConfig

    fields = dict(init_from=tiny_base, data=task_files["preference"], data_records=[0, 16], eval_task=False,
                  seq_len=128, lr=1e-2)
    out = tmp_path / "rm"
    reward.run_reward(config(RewardConfig, max_steps=2, **fields), out)
    real = reward.atomic_write_bytes

    def killed_in_the_final_save(path, data):
        if path.parent == out and path.name == reward.HEAD_FILE:
            raise KeyboardInterrupt  # as a kill: the backbone is written, the head is not
        real(path, data)

    monkeypatch.setattr(reward, "atomic_write_bytes", killed_in_the_final_save)
    with pytest.raises(KeyboardInterrupt):
        reward.run_reward(config(RewardConfig, max_steps=4, **fields), out, resume=True)
    for load in (reward.load_reward_model, llmkit.load):
        with pytest.raises(CheckpointError, match=r"rm: incomplete: the final save of `llmkit reward` was cut short"
                                                  r".*run `llmkit reward --out .*rm --resume`"):
            load(out)
    monkeypatch.setattr(reward, "atomic_write_bytes", real)
    assert reward.run_reward(config(RewardConfig, max_steps=4, **fields), out, resume=True).steps == 4
    model, _ = reward.load_reward_model(out)
    from safetensors.torch import load_file

    saved = load_file(out / "checkpoints" / "step_0000004" / "trainable.safetensors")
    assert torch.equal(model.score.weight, saved["score.weight"])
    assert torch.equal(model.transformer.tok_emb.weight, saved["transformer.tok_emb.weight"])


def test_a_tampered_training_state_and_a_changed_lora_rank_are_one_line_errors(tmp_path, tiny_base, task_files):
    from llmkit.train.post_config import SFTConfig
    from llmkit.train.sft import run_sft

    out = tmp_path / "run"
    fields = sft_fields(tiny_base, task_files, peft="lora")
    run_sft(config(SFTConfig, max_steps=2, **fields), out)
    with pytest.raises(CheckpointError, match=r"settings changed since the checkpoint: lora_rank 8 -> 4; resume with "
                                              "the checkpoint's settings"):
        run_sft(config(SFTConfig, max_steps=3, **{**fields, "lora_rank": 4}), out, resume=True)
    path = out / "checkpoints" / "step_0000002" / "training_state.pt"
    state = torch.load(path, weights_only=True)
    torch.save({**state, "step": -5}, path)
    with pytest.raises(CheckpointError, match=r"training_state.pt: not a training state written by llmkit "
                                              r"\(missing or wrong step\)"):
        run_sft(config(SFTConfig, max_steps=3, **fields), out, resume=True)


def test_a_preset_file_reads_1e_3_as_a_number_and_refuses_a_key_given_twice(tmp_path):
    from llmkit.train.config import TrainConfig

    preset = tmp_path / "mine.yaml"
    preset.write_text("model: tiny\nlr: 1e-3\nwarmup_steps: 5\n")
    assert TrainConfig.preset(str(preset), []).lr == 1e-3  # (YAML 1.1 read it as the string '1e-3')
    preset.write_text("model: tiny\nlr: 1e-3\nwarmup_steps: 5\nlr: 2e-3\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: line 4: invalid YAML \(key 'lr' appears twice \(first on "
                                          r"line 2\); keep one\)"):
        TrainConfig.preset(str(preset), [])


def test_a_run_cache_beside_the_weights_is_not_part_of_the_model_and_bad_headers_are_one_line(tmp_path, tiny_base):
    from safetensors.torch import save_file

    from llmkit.checkpoint import weights_sha256

    model = tmp_path / "model"
    shutil.copytree(tiny_base, model)
    before = weights_sha256(model)
    save_file({"logp": torch.zeros(3)}, model / "reference_logprobs.safetensors")  # DPO's cache in its --out
    assert weights_sha256(model) == before
    for header in (b"[1, 2]", b"[" * 100_000 + b"]" * 100_000):
        (model / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
        with pytest.raises(CheckpointError, match="not a safetensors file"):
            weights_sha256(model)
