"""The training loop checked against independent references: the learning rate of every step against the
schedule computed by hand, accumulated micro-batches against one large batch, a run cut short inside a
checkpoint write against the uninterrupted run, two torchrun processes against one, evaluation during
training against `llmkit eval` of the saved model; and the configuration mistakes that were tracebacks,
silently ignored or an out-of-memory kill, each one line before any work."""

import json
import math
import os
import resource
import shutil
import subprocess
import sys
from contextlib import nullcontext

import pytest
import torch

from conftest import REPO, SHAKESPEARE, cli_in_process, run_cli
from llmkit.errors import ConfigError
from test_pretrain import _free_port, common, losses, shards  # noqa: F401 (shards: the module's fixture)


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def one_line_error(result, *expected):
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])


def test_presets_have_the_sizes_the_readme_states():
    from llmkit.config import ModelConfig
    from llmkit.train.config import TrainConfig
    from llmkit.train.pretrain import padded_vocab_size

    millions = lambda name, **kw: round(ModelConfig.preset(name, **kw).num_params() / 1e6)  # noqa: E731
    assert millions("gpt2-124m", vocab_size=8192) == 92  # on the built-in 8,192-token tokenizer
    assert millions("gpt2-124m", vocab_size=padded_vocab_size(50257)) == 124
    assert millions("llama-150m") == 151 and ModelConfig.preset("llama-150m").vocab_size == 49152
    smol = ModelConfig.preset("smollm2-135m")  # the shape of the GGUF the data README describes
    assert (smol.n_layers, smol.d_model, smol.n_heads, smol.n_kv_heads, smol.d_ff, smol.vocab_size, smol.rope_theta,
            smol.tie_embeddings) == (30, 576, 9, 3, 1536, 49152, 1e5, True)
    bf16 = TrainConfig.preset("shakespeare-cpu", ["device=cpu", "dtype=bf16"])
    fp32 = TrainConfig.preset("shakespeare-cpu", ["device=cpu", "dtype=fp32"])
    assert (bf16.model_overrides["n_layers"], bf16.model_overrides["d_model"], bf16.micro_batch) == (4, 256, 8)
    assert (fp32.model_overrides["n_layers"], fp32.model_overrides["d_model"], fp32.micro_batch) == (5, 80, 2)
    assert bf16.time_limit_s == 600  # "~10 min"
    gpt2 = TrainConfig.preset("gpt2-124m")  # nanoGPT's recipe: 0.5M-token batches, lr 6e-4, cosine to 10%
    assert (gpt2.batch_tokens, gpt2.lr, gpt2.schedule, gpt2.min_lr_ratio) == (524288, 6e-4, "cosine", 0.1)


def test_every_step_s_learning_rate_is_the_hand_computed_schedule(tmp_path, shards, one_thread):
    """metrics.jsonl's lr at step k (1-based: the step just taken) against the schedule written out by hand:
    warmup (k)/(w+1) for the first w steps, then cosine from the peak to min_lr_ratio over the remaining
    steps, or WSD: flat, then linear over the last decay_fraction."""
    peak = 0.01
    result = cli_in_process("pretrain", "--out", tmp_path / "cos", *common(shards, max_steps=7, lr=peak, warmup_steps=2,
                                                                          min_lr_ratio=0.1))
    assert result.returncode == 0, result.stderr
    warm = [1 / 3, 2 / 3]
    cosine = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / 5)) for i in range(5)]  # steps 2..6 (0-based), 5 of them
    got = [r["lr"] for r in records(tmp_path / "cos") if "lr" in r]
    assert got == pytest.approx([peak * m for m in warm + cosine], rel=1e-12)
    result = cli_in_process("pretrain", "--out", tmp_path / "wsd", *common(
        shards, max_steps=10, lr=peak, warmup_steps=2, schedule="wsd", decay_fraction=0.3, min_lr_ratio=0.1))
    assert result.returncode == 0, result.stderr
    flat = [1.0] * 5  # 0-based steps 2..6; the decay starts at int(10 * 0.7) = 7 and runs to the floor at 10
    decay = [1 - 0.9 * i / 3 for i in range(3)]
    got = [r["lr"] for r in records(tmp_path / "wsd") if "lr" in r]
    assert got == pytest.approx([peak * m for m in warm + flat + decay], rel=1e-12)


def test_accumulated_micro_batches_train_as_one_large_batch(tmp_path, shards, one_thread):
    """Through the Trainer (scaling, clipping, optimizer step): the same 4 sequences a step as 1 x 4, 2 x 2 and
    4 x 1 accumulated give the same losses, gradient norms and weights within fp32 rounding. The clip
    threshold is below every step's norm, so the clipped update of the summed gradient is compared too."""
    from llmkit.config import ModelConfig
    from llmkit.model import Transformer
    from llmkit.tokenizer import Tokenizer
    from llmkit.train.config import TrainConfig
    from llmkit.train.data import TokenShards
    from llmkit.train.trainer import Trainer

    data = TokenShards(shards / "train")
    steps = [data.random_batch(4, 32, seed=7, step=s, micro=0) for s in range(4)]
    runs = {}
    for rows in (4, 2, 1):
        config = TrainConfig(model="tiny", seq_len=32, micro_batch=rows, batch_tokens=4 * 32, max_steps=4, dtype="fp32",
                             device="cpu", log_every=1, plot=False, warmup_steps=0, grad_clip=0.05, lr=1e-2)
        torch.manual_seed(0)
        model = Transformer(ModelConfig.preset("tiny"))

        def batch_fn(step, micro, rows=rows):
            x, y = steps[step]
            return x[micro * rows:(micro + 1) * rows], y[micro * rows:(micro + 1) * rows]

        trainer = Trainer(model, config, tmp_path / f"rows{rows}", batch_fn, rows * 32,
                          tokenizer=Tokenizer.load(shards / "tok"))
        assert trainer.accum == 4 // rows
        trainer.fit()
        logged = [r for r in records(tmp_path / f"rows{rows}") if "loss" in r]
        assert all(r["grad_norm"] > 0.05 for r in logged)  # every step clipped
        runs[rows] = ([r["loss"] for r in logged], [r["grad_norm"] for r in logged], model.state_dict())
    for rows in (2, 1):
        assert runs[rows][0] == pytest.approx(runs[4][0], abs=2e-6)
        assert runs[rows][1] == pytest.approx(runs[4][1], rel=1e-5)
        for name, weight in runs[4][2].items():
            assert torch.allclose(runs[rows][2][name], weight, atol=5e-5), name


def test_a_run_killed_inside_a_checkpoint_write_resumes_exactly(tmp_path, shards, one_thread, monkeypatch):
    """Killed while the second checkpoint's files are written (after the weights and training state, before
    the rename): the folder keeps the first checkpoint, and --resume from it gives the losses of the
    uninterrupted run bit for bit, with dropout (the saved random stream) and Muon's momentum (the saved
    optimizer state)."""
    from llmkit.train import trainer_checkpoints

    args = common(shards, max_steps=8, ckpt_every=3, optimizer="muon", **{"model.dropout": 0.1})
    assert cli_in_process("pretrain", "--out", tmp_path / "ref", *args).returncode == 0
    fsync_tree, written = trainer_checkpoints.fsync_tree, []

    def killed_on_the_second(path):
        written.append(path)
        if len(written) == 2:
            raise KeyboardInterrupt  # as a kill lands: mid-save, nothing after it runs
        fsync_tree(path)

    monkeypatch.setattr(trainer_checkpoints, "fsync_tree", killed_on_the_second)
    assert cli_in_process("pretrain", "--out", tmp_path / "cut", *args).returncode == 130
    monkeypatch.undo()
    root = tmp_path / "cut" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == [".step_0000006.partial", "latest", "step_0000003"]
    assert (root / "latest").read_text().strip() == "step_0000003"
    resumed = cli_in_process("pretrain", "--out", tmp_path / "cut", "--resume", *args)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step 3" in resumed.stdout and not (root / ".step_0000006.partial").exists()
    assert losses(tmp_path / "cut") == losses(tmp_path / "ref")


def test_evaluation_during_training_equals_llmkit_eval_of_the_saved_model(tmp_path, shards, one_thread):
    """The last evaluation of a run (the whole val set: one play, so that both score the same windows) and
    `llmkit eval --text` of the model it saved, at the same window length: the same loss and bits per byte
    (printed to 4 decimals)."""
    from llmkit.data.prepare import prepare

    play = SHAKESPEARE / "val" / "tempest_gut.txt"
    prepare([play], shards / "tok", tmp_path / "val")
    out = tmp_path / "run"
    result = cli_in_process("pretrain", "--out", out, *common(shards, max_steps=10, lr=5e-3, eval_tokens=0,
                                                             val_data=tmp_path / "val"))
    assert result.returncode == 0, result.stderr
    during = [r for r in records(out) if "val_bpb" in r][-1]
    result = cli_in_process("eval", "--model", out, "--text", play, "--seq-len", 64)
    assert result.returncode == 0, result.stderr
    bpb = float(result.stdout.split("bits per byte ")[1].split(",")[0])
    loss = float(result.stdout.split("(loss ")[1].split(" ")[0])
    assert abs(bpb - during["val_bpb"]) <= 6e-5 and abs(loss - during["val_loss"]) <= 6e-5, (result.stdout, during)


def test_a_shard_of_exactly_one_window_trains(tmp_path, shards):
    """A window is seq_len + 1 tokens: a shard of exactly that many holds one. It was counted as none and the
    run refused with 'every shard is shorter than seq_len + 1', which it is not."""
    from llmkit.data.prepare import prepare
    from llmkit.errors import DataError
    from llmkit.train.data import TokenShards

    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("To be, or not to be, that is the question.")
    prepare([tmp_path / "text"], shards / "tok", tmp_path / "one")
    data = TokenShards(tmp_path / "one")
    tokens = torch.from_numpy(data.shards[0].astype("int64"))
    x, y = data.random_batch(3, data.tokens - 1, seed=0, step=0, micro=0)
    assert (x == tokens[:-1]).all() and (y == tokens[1:]).all()  # the one window, every row
    with pytest.raises(DataError, match="shorter than seq_len"):
        data.random_batch(1, data.tokens, seed=0, step=0, micro=0)


@pytest.mark.parametrize("override, shown", [
    ("task.train_per_kind=abc", "speedrun stage task: command line: field 'train_per_kind': must be int, not 'abc'"),
    ("task.train_per_kind=1.5", "field 'train_per_kind': must be int, not 1.5"),
    ("task.train_per_kind=-3", "field 'train_per_kind': -3 is out of range: must be in [1, 2^31)"),
    ("task.heldout_per_kind=0", "field 'heldout_per_kind': 0 is out of range"),
    ("collect.max_new_tokens=0", "speedrun stage collect: command line: field 'max_new_tokens': 0 is out of range"),
    ("collect.samples=-1", "field 'samples': -1 is out of range"),
    ("collect.temperature=1e-9", "speedrun stage collect: temperature must be 0 (greedy) or at least"),
    ("tokenizer.vocab_size=abc", "speedrun stage tokenizer: command line: field 'vocab_size': must be int"),
])
def test_speedrun_values_of_the_task_collect_and_tokenizer_stages_are_checked_before_any_stage(tmp_path, override,
                                                                                               shown):
    """These were checked by name only: `task.train_per_kind=abc` was a TypeError traceback after the corpus and
    pretraining stages, -3 an unrelated context error after SFT, collect.max_new_tokens=0 an error after SFT."""
    from llmkit.speedrun import check_plan, load_plan

    with pytest.raises(ConfigError) as error:
        check_plan(load_plan("tiny", [override]), tmp_path)
    assert shown in str(error.value)
    result = cli_in_process("speedrun", "--out", tmp_path / "run", override)
    one_line_error(result, shown)
    assert not (tmp_path / "run").exists()


def test_a_plan_file_s_bad_value_names_its_line(tmp_path, monkeypatch):
    from llmkit import yaml_config
    from llmkit.speedrun import check_plan, load_plan

    (tmp_path / "speedrun").mkdir()
    text = (REPO / "llmkit" / "presets" / "speedrun" / "tiny.yaml").read_text()
    (tmp_path / "speedrun" / "tiny.yaml").write_text(text.replace("heldout_per_kind: 5", "heldout_per_kind: five"))
    monkeypatch.setattr(yaml_config, "PRESET_ROOT", tmp_path)
    line = 1 + text.splitlines().index("  heldout_per_kind: 5")
    with pytest.raises(ConfigError, match=rf"tiny.yaml: line {line}: field 'heldout_per_kind': must be int, not 'five'"):
        check_plan(load_plan("tiny"), tmp_path / "out")


def _limit_memory():
    limit = 12 * 2**30  # address space: the old code's multi-GB batch fails at once instead of swamping the machine
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_a_micro_batch_beyond_the_machine_s_memory_is_one_line_before_any_step(tmp_path, shards):
    """micro_batch=100000 (a typo for 100) was an out-of-memory kill: 24 GB resident on a 23 GB machine, no
    message. The activations of one sequence are measured (autograd's saved tensors) and priced first."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-m", "llmkit.cli", "pretrain", "--out", str(tmp_path / "huge"),
                             *common(shards, max_steps=1, micro_batch=2**30)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": path}, preexec_fn=_limit_memory, timeout=300)
    one_line_error(result, "micro_batch 1,073,741,824 x seq_len 64: the activations one forward/backward keeps",
                   "a sequence, measured", "lower micro_batch")
    assert not (tmp_path / "huge" / "metrics.jsonl").exists()


def test_the_activation_measure_is_a_lower_bound_that_grows_with_the_batch():
    from llmkit.config import ModelConfig
    from llmkit.model import Transformer
    from llmkit.train.pretrain import saved_activation_bytes
    from llmkit.train.trainer import causal_lm_objective

    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", dropout=0.1))
    x = torch.randint(0, 512, (4, 64))
    sizes = [saved_activation_bytes(model, causal_lm_objective, (x[:n], x[:n]), nullcontext) for n in (1, 2, 4)]
    per_sequence = sizes[1] - sizes[0]
    assert sizes[2] - sizes[1] == pytest.approx(2 * per_sequence, rel=0.01)  # linear in the batch
    # at least the residual stream at each norm's input (2 a block) and the final norm's, in fp32
    assert per_sequence >= (2 * 2 + 1) * 64 * 64 * 4
    state = torch.get_rng_state()
    saved_activation_bytes(model, causal_lm_objective, (x, x), nullcontext)
    assert torch.equal(torch.get_rng_state(), state)  # the probe's dropout leaves the run's random stream alone


@pytest.fixture(scope="module")
def base(tmp_path_factory, shards):
    """A model trained one step (to start from with init_from), made once for the module."""
    out = tmp_path_factory.mktemp("base") / "run"
    assert cli_in_process("pretrain", "--out", out, *common(shards, max_steps=1)).returncode == 0
    return out


@pytest.mark.parametrize("extra, shown", [
    (["device=mps"], "device must be auto, cpu, cuda or cuda:N, not 'mps'"),
    (["model.n_layers=7"], "command line: model.n_layers shape a new model, but init_from="),
    (["model=gpt2-cpu"], "model shape a new model"),
    (["seq_len=200", "model.max_seq_len=256"], "model.max_seq_len shape a new model"),
    (["seq_len=200"], "seq_len 200 is longer than the context of"),
    (["anneal_fraction=0", "anneal_data=VAL"], "with anneal_fraction=0 trains on none of it"),
])
def test_conflicting_or_unusable_settings_are_one_line(tmp_path, shards, base, extra, shown):
    """Each was a traceback mid-run (device=mps: torch parses it; seq_len beyond init_from's context) or silently
    ignored (model fields beside init_from trained init_from's model as it was; anneal data never used)."""
    extra = [e.replace("VAL", str(shards / "val")) for e in extra]
    args = common(shards, max_steps=1)
    if not extra[0].startswith(("device", "anneal")):  # from the base model: no model field of our own
        args = [a for a in args if a != "model=tiny"] + [f"init_from={base}"]
    one_line_error(cli_in_process("pretrain", "--out", tmp_path / "x", *args, *extra), shown)
    assert not (tmp_path / "x" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_two_processes_match_one_and_their_checkpoint_resumes_in_one(tmp_path, shards):
    """2 gloo processes x 1 micro-batch == 1 process x 2 accumulated: the same losses (1e-5 relative), a
    checkpoint that loads and resumes in one process with the same global batch to the same losses, and a
    resume in one process at batch_tokens=0 (half the tokens a step) that says so: it was silent."""
    import llmkit

    ref = run_cli("pretrain", "--out", tmp_path / "one", *common(shards, max_steps=4, batch_tokens=512))
    assert ref.returncode == 0, ref.stderr
    two = tmp_path / "two"
    args = common(shards, max_steps=4, ckpt_every=2)  # batch_tokens 0: one micro-batch per process
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                            "127.0.0.1", "--master_port", str(_free_port()), "-m", "llmkit.cli", "pretrain", "--out",
                            str(two), *args], capture_output=True, text=True,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=300)
    assert multi.returncode == 0, multi.stderr[-3000:]
    one = losses(tmp_path / "one")
    assert sorted(losses(two)) == sorted(one) == [1, 2, 3, 4]
    assert all(math.isclose(losses(two)[s], one[s], rel_tol=1e-5) for s in one)
    assert llmkit.load(two).model.config.n_layers == 2
    (two / "checkpoints" / "latest").write_text("step_0000002\n")  # back to the middle of the run
    shutil.rmtree(two / "checkpoints" / "step_0000004")
    same = tmp_path / "same"
    shutil.copytree(two, same)
    resumed = run_cli("pretrain", "--out", same, "--resume", *common(shards, max_steps=4, ckpt_every=2, batch_tokens=512))
    assert resumed.returncode == 0, resumed.stderr
    assert "batch_tokens 0 -> 512" in resumed.stdout and "tokens per step changed" not in resumed.stdout
    assert all(math.isclose(losses(same)[s], one[s], rel_tol=1e-5) for s in (3, 4))
    halved = run_cli("pretrain", "--out", two, "--resume", *args)
    assert halved.returncode == 0, halved.stderr
    assert "tokens per step changed from 512 (2 process(es)) to 256 (1): give batch_tokens=512" in halved.stdout


@pytest.mark.parametrize("name", ["mps", "meta", "xla"])
def test_a_device_llmkit_does_not_run_on_is_refused_by_name(name):
    # `llmkit generate --device mps` was PyTorch's RuntimeError traceback when the weights moved
    from llmkit.device import resolve_device

    with pytest.raises(ConfigError, match=f"device '{name}': llmkit runs on cpu or cuda"):
        resolve_device(name)


def test_a_gpu_s_available_memory_counts_the_blocks_pytorch_holds_cached(monkeypatch):
    """The probe's forwards leave their freed activations in PyTorch's caching allocator: used to the driver
    (cudaMemGetInfo), free to this process. Counted as used, a micro_batch that fits was refused after the probe."""
    from llmkit.device import available_memory_bytes

    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 30 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 6 * gib)
    assert available_memory_bytes(torch.device("cuda", 0)) == (10 + 30 - 6) * gib


def _probe_setup(monkeypatch, micro_batch, compile=False, have=None):
    """check_batch_fits on the tiny model with the device's free memory set to `have` bytes; the probe's calls."""
    from llmkit import device
    from llmkit.config import ModelConfig
    from llmkit.model import Transformer
    from llmkit.train import pretrain
    from llmkit.train.config import TrainConfig
    from llmkit.train.trainer import causal_lm_objective

    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny"))
    x = torch.randint(0, 512, (2, 64))
    calls = []
    probe = pretrain.saved_activation_bytes
    monkeypatch.setattr(pretrain, "saved_activation_bytes", lambda *a: calls.append(1) or probe(*a))
    monkeypatch.setattr(device, "available_memory_bytes", lambda d: have if have is not None else 2**62)
    config = TrainConfig(model="tiny", seq_len=64, micro_batch=micro_batch, compile=compile, device="cpu", dtype="fp32")
    pretrain.check_batch_fits(model, config, lambda rows: (x[:rows], x[:rows]), causal_lm_objective,
                              torch.device("cpu"), nullcontext)
    return calls


def test_a_micro_batch_of_one_or_two_is_not_probed(monkeypatch):
    """The probe holds 2 sequences' activations: at micro_batch 1 its peak was above the run's own (resident
    405 -> 506 MiB, the tiny model at seq_len 4096), and it could refuse neither 1 nor 2, which it has just held."""
    assert _probe_setup(monkeypatch, 1) == [] and _probe_setup(monkeypatch, 2) == []
    assert _probe_setup(monkeypatch, 3) == [1, 1]


def test_a_compiled_run_is_priced_at_what_a_compiled_step_keeps(monkeypatch):
    """torch.compile's backward recomputes cheap ops instead of keeping their outputs: the compiled step kept
    0.72-0.91 of the eager forward's saved bytes (measured), so the eager measure refused compiled runs that fit.
    Memory for 80% of the eager measure: refused eager, trained compiled; a typo's micro_batch still refused."""
    from llmkit.train.pretrain import saved_activation_bytes
    from llmkit.train.trainer import causal_lm_objective

    from llmkit.config import ModelConfig
    from llmkit.model import Transformer

    torch.manual_seed(0)
    x = torch.randint(0, 512, (2, 64))
    model = Transformer(ModelConfig.preset("tiny"))
    one, two = (saved_activation_bytes(model, causal_lm_objective, (x[:n], x[:n]), nullcontext) for n in (1, 2))
    have = int(0.8 * (two - one) * 8)
    with pytest.raises(ConfigError, match="micro_batch 8 x seq_len 64: .* a sequence, measured"):
        _probe_setup(monkeypatch, 8, have=have)
    assert _probe_setup(monkeypatch, 8, compile=True, have=have) == [1, 1]
    with pytest.raises(ConfigError, match="a sequence, at least, compiled"):
        _probe_setup(monkeypatch, 100_000, compile=True, have=have)


def test_a_resume_on_more_processes_does_not_advise_a_batch_tokens_that_rounds_away(tmp_path, shards, monkeypatch):
    """A checkpoint of 1 process x 3 micro-batches (768 tokens) resumed on 2 processes of 256-token micro-batches:
    768 is no whole number of them (the step becomes 1024). 'give batch_tokens=768' was the advice, the setting
    the run already had, which rounds to 1024 again."""
    from llmkit.checkpoint import load_model
    from llmkit.train import trainer as trainer_module
    from llmkit.train.config import TrainConfig
    from llmkit.train.distributed import DistInfo
    from llmkit.train.optim import build_optimizers

    args = common(shards, max_steps=2, batch_tokens=768)
    assert cli_in_process("pretrain", "--out", tmp_path / "run", *args).returncode == 0
    monkeypatch.setattr(trainer_module.D, "init_distributed", lambda device_type: DistInfo(world_size=2))
    config, model = TrainConfig.preset("shakespeare-cpu", args), load_model(tmp_path / "run")
    run = trainer_module.Trainer(model, config, tmp_path / "run", lambda step, micro: None, 4 * 64)
    assert run.batch_tokens == 1024  # round(768 / 512) = 2 micro-batches on each of the 2 processes
    run.prepare_output(resume=True)
    run._load_latest(model, build_optimizers(model, config, "cpu"))
    assert run.step_size_message() == ("tokens per step changed from 768 (1 process(es)) to 1024 (2): no "
                                       "batch_tokens makes 768 from 2 process(es); resume with 1 to keep it")
