"""Pretraining end to end: shards, the Trainer, exact resume after kill -9, DDP and FSDP2 on 2 processes."""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import SHAKESPEARE, cli_in_process, run_cli
from llmkit.train.config import TrainConfig
from llmkit.train.optim import lr_multiplier

TRAIN_FILES = [SHAKESPEARE / "train" / "as_you_like_it_gut.txt", SHAKESPEARE / "train" / "coriolanus_gut.txt"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A 512-token tokenizer and train/val shards made through the CLI, as a user would."""
    root = tmp_path_factory.mktemp("shards")
    assert cli_in_process("tokenizer", "train", "--input", *TRAIN_FILES, "--vocab-size", 512, "--out", root / "tok").returncode == 0
    result = cli_in_process("data", "prepare", "--input", *TRAIN_FILES, "--tokenizer", root / "tok", "--out", root / "train")
    assert result.returncode == 0, result.stderr
    assert cli_in_process("data", "prepare", "--input", SHAKESPEARE / "val", "--tokenizer", root / "tok",
                   "--out", root / "val").returncode == 0
    return root


def common(shards, **extra):
    base = dict(model="tiny", data=shards / "train", val_data=shards / "val", seq_len=64, micro_batch=4,
                log_every=1, eval_every=0, ckpt_every=0, dtype="fp32", time_limit_s=0, plot="false",
                warmup_steps=2, threads=1, eval_tokens=8192)  # the whole val set (200k tokens) only where compared
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_manifest_counts_documents_tokens_and_bytes(shards):
    manifest = json.loads((shards / "val" / "manifest.json").read_text())
    assert manifest["documents"] == 3
    assert manifest["bytes"] == sum(len(p.read_bytes()) for p in (SHAKESPEARE / "val").glob("*.txt"))
    tokens = np.fromfile(shards / "val" / "shard_00000.bin", dtype=np.uint16)
    starts = np.load(shards / "val" / "shard_00000.docs.npy")
    assert len(tokens) == manifest["tokens"] and list(tokens[starts]) == [manifest["bos_id"]] * 3


def test_validation_batches_score_every_token_once_and_mask_document_starts(shards):
    from llmkit.train.data import TokenShards

    val = TokenShards(shards / "val")
    tokens = np.fromfile(shards / "val" / "shard_00000.bin", dtype=np.uint16).astype(np.int64)
    for batch, seq_len in ((3, 7), (16, 64)):  # both leave a shorter last window
        pairs = list(val.sequential_batches(batch, seq_len))
        inputs = np.concatenate([x.flatten().numpy() for x, _ in pairs])
        targets = np.concatenate([y.flatten().numpy() for _, y in pairs])
        assert (inputs == tokens[:-1]).all()
        expected = tokens[1:].copy()
        expected[expected == val.bos_id] = -100
        assert (targets == expected).all() and (targets == -100).sum() == 2  # the 2nd and 3rd plays' BOS
        assert all(x.shape == y.shape and x.shape[1] <= seq_len for x, y in pairs)
    limited = list(val.sequential_batches(4, 64, max_tokens=1000))
    assert sum(y.numel() for _, y in limited) == 4 * 256


def test_jsonl_and_parquet_inputs_and_malformed_lines(tmp_path, shards):
    good = tmp_path / "docs.jsonl"
    good.write_text(json.dumps({"body": "To be, or not to be"}) + "\n" + json.dumps({"body": "that is the question"}) + "\n")
    result = cli_in_process("data", "prepare", "--input", good, "--tokenizer", shards / "tok", "--out", tmp_path / "a",
                     "--field", "body")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["documents"] == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "broken\n{"title": "no text field"}\n')
    result = cli_in_process("data", "prepare", "--input", bad, "--tokenizer", shards / "tok", "--out", tmp_path / "b")
    assert result.returncode == 2 and f"{bad}: line 2:" in result.stderr and "--skip-bad" in result.stderr
    result = cli_in_process("data", "prepare", "--input", bad, "--tokenizer", shards / "tok", "--out", tmp_path / "b", "--skip-bad")
    assert result.returncode == 0 and "skipped 2 malformed record(s)" in result.stdout
    pa = pytest.importorskip("pyarrow", reason="pyarrow is a dependency")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["Friends, Romans, countrymen", "lend me your ears"]}), tmp_path / "d.parquet")
    result = cli_in_process("data", "prepare", "--input", tmp_path / "d.parquet", "--tokenizer", shards / "tok", "--out", tmp_path / "c")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["documents"] == 2


def test_crlf_text_files_give_the_same_shards_as_lf(tmp_path, shards):
    text = (SHAKESPEARE / "val" / "macbeth_gut.txt").read_text()[:20000]
    (tmp_path / "lf").mkdir()
    (tmp_path / "crlf").mkdir()
    (tmp_path / "lf" / "m.txt").write_bytes(text.encode())
    (tmp_path / "crlf" / "m.txt").write_bytes(text.replace("\n", "\r\n").encode())
    from llmkit.data.prepare import prepare

    for name in ("lf", "crlf"):
        prepare([tmp_path / name], shards / "tok", tmp_path / f"{name}-shards")
    assert (tmp_path / "lf-shards" / "shard_00000.bin").read_bytes() == (tmp_path / "crlf-shards" / "shard_00000.bin").read_bytes()


def test_prepare_names_undecodable_lines_broken_archives_and_non_text_columns(tmp_path, shards):
    import gzip

    from llmkit.data.prepare import prepare
    from llmkit.errors import DataError

    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n{"text": "also fine"}\n')
    with pytest.raises(DataError, match=r"latin1.jsonl: line 2: .*utf-8"):
        prepare([bad], shards / "tok", tmp_path / "a")
    assert prepare([bad], shards / "tok", tmp_path / "a", skip_bad=True).skipped_lines == 1
    (tmp_path / "fake.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"fake.jsonl.gz: not a readable gzip file"):
        prepare([tmp_path / "fake.jsonl.gz"], shards / "tok", tmp_path / "b")
    lines = "".join(json.dumps({"text": os.urandom(32).hex()}) + "\n" for _ in range(200)).encode()
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(lines)[:4000])  # a download cut short
    with pytest.raises(DataError, match=r"cut.jsonl.gz: not a readable gzip file after line \d+"):
        prepare([tmp_path / "cut.jsonl.gz"], shards / "tok", tmp_path / "b")
    pa = pytest.importorskip("pyarrow", reason="pyarrow is a dependency")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(DataError, match=r"ints.parquet: column 'text' holds int64, not text"):
        prepare([tmp_path / "ints.parquet"], shards / "tok", tmp_path / "b")


@pytest.mark.slow
def test_training_lowers_validation_loss_and_writes_its_outputs(tmp_path, shards):
    out = tmp_path / "run"
    result = run_cli("pretrain", "--out", out, *common(shards, max_steps=100, eval_every=50, eval_tokens=0,
                                                        micro_batch=8, lr=5e-3, warmup_steps=10, plot="true"))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_bpb" in r]
    assert [r["step"] for r in evals] == [50, 100]
    assert evals[1]["val_loss"] < evals[0]["val_loss"]
    assert evals[-1]["val_loss"] < math.log(512) - 1.0  # far below the uniform-guess loss
    assert all({"tokens_per_s", "mfu", "lr", "loss"} <= set(r) for r in records if "loss" in r)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "loss.png"):
        assert (out / name).exists(), name
    assert "plan:" in result.stdout and "sample:" in result.stdout
    # the trained model is an ordinary checkpoint: generate and eval work on it
    assert run_cli("generate", "--model", out, "--max-new-tokens", 5, "ROMEO").returncode == 0
    result = run_cli("eval", "--model", out, "--text", SHAKESPEARE / "val")
    assert result.returncode == 0, result.stderr
    bpb = float(result.stdout.split("bits per byte ")[1].split(",")[0])
    assert abs(bpb - evals[-1]["val_bpb"]) < 0.05  # the same val plays, scored with the model's context
    result = cli_in_process("eval", "--model", out, "--text", tmp_path / "run" / "checkpoints")  # no .txt there
    assert result.returncode == 2 and "no .txt files" in result.stderr
    result = cli_in_process("eval", "--model", out, "--text", SHAKESPEARE / "val", "--seq-len", 5000)
    assert result.returncode == 2 and "--seq-len between 1 and" in result.stderr


@pytest.mark.slow
def test_resume_after_kill_9_matches_uninterrupted_run(tmp_path, shards):
    args = common(shards, max_steps=120, ckpt_every=10, micro_batch=8)
    reference = run_cli("pretrain", "--out", tmp_path / "ref", *args)
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "llmkit.cli", "pretrain", "--out", str(out), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "latest").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    assert proc.wait() == -signal.SIGKILL
    killed_at = int((out / "checkpoints" / "latest").read_text().strip().removeprefix("step_"))
    assert killed_at < 120
    resumed = run_cli("pretrain", "--out", out, "--resume", *args)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from step {killed_at}" in resumed.stdout
    ref, got = losses(tmp_path / "ref"), losses(out)
    assert sorted(got) == list(range(1, 121))
    assert all(got[s] == ref[s] for s in range(killed_at + 1, 121)), "resumed losses differ from the uninterrupted run"


@pytest.mark.slow
def test_checkpoint_folder_rotation_leftovers_and_torn_metrics(tmp_path, shards):
    """Rotation keeps the newest checkpoints by step; a fresh run refuses a folder holding an earlier
    run's checkpoints; a resume drops a save cut short (.partial) and a half-written metrics line."""
    out = tmp_path / "run"
    assert cli_in_process("pretrain", "--out", out, *common(shards, max_steps=6, ckpt_every=2)).returncode == 0
    root = out / "checkpoints"
    assert sorted(p.name for p in root.glob("step_*")) == ["step_0000004", "step_0000006"]
    again = cli_in_process("pretrain", "--out", out, *common(shards, max_steps=6, ckpt_every=2))
    assert again.returncode == 2 and "step_0000006 of an earlier run" in again.stderr and "--resume" in again.stderr
    (root / ".step_0000008.partial").mkdir()
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "lo')  # killed mid-write
    resumed = cli_in_process("pretrain", "--out", out, "--resume", *common(shards, max_steps=8, ckpt_every=2, lr=0.004))
    assert resumed.returncode == 0, resumed.stderr
    assert not (root / ".step_0000008.partial").exists()
    assert "budget changed from 6 to 8 steps" in resumed.stdout  # a larger max_steps on resume extends the run
    assert "settings changed since the checkpoint: lr 0.002 -> 0.004, max_steps 6 -> 8" in resumed.stdout
    assert sorted(losses(out)) == list(range(1, 9))


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, shards):
    result = cli_in_process("pretrain", "--out", tmp_path / "none", "--resume", *common(shards, max_steps=2))
    assert result.returncode == 2 and "no checkpoint to resume" in result.stderr


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, shards, fsdp):
    """2 gloo processes x 1 micro-batch == 1 process x 2 accumulated micro-batches, same data.
    Tolerance 1e-5 relative: only the order of floating-point reductions differs."""
    args = common(shards, max_steps=5, batch_tokens=2 * 4 * 64, sample_every=2) + (["--fsdp"] if fsdp else [])
    single = run_cli("pretrain", "--out", tmp_path / "one", *common(shards, max_steps=5, batch_tokens=512))
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                            "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                            "-m", "llmkit.cli", "pretrain", "--out", str(tmp_path / "two"), *args],
                           capture_output=True, text=True, env=env, timeout=300)
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert multi.stdout.count("sample: ") == 3, multi.stdout  # steps 2 and 4, and the evaluation at 5 (rank 0 only)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4, 5]
    for step in one:
        assert math.isclose(one[step], two[step], rel_tol=1e-5), (step, one[step], two[step])


def test_gradient_accumulation_equals_one_big_batch(tmp_path, shards):
    """micro_batch 4 x 2 accumulated == micro_batch 8 once would need the same windows; instead check the
    invariant the Trainer relies on: the accumulated gradient is the mean of the micro-batch gradients."""
    from llmkit.config import ModelConfig
    from llmkit.model import Transformer
    from llmkit.train.data import TokenShards

    data = TokenShards(shards / "train")
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny"))
    batches = [data.random_batch(4, 64, seed=1, step=0, micro=m) for m in range(2)]
    for x, y in batches:
        (model(x, y) / 2).backward()
    accumulated = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    model(x, y).backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(accumulated, model.parameters()))


def test_schedules_and_chinchilla_plan():
    config = TrainConfig(warmup_steps=10, min_lr_ratio=0.1)
    assert lr_multiplier(0, 100, config) < lr_multiplier(9, 100, config) <= 1.0
    assert math.isclose(lr_multiplier(99, 100, config), 0.1, abs_tol=0.01)
    wsd = TrainConfig(warmup_steps=10, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0)
    assert lr_multiplier(50, 100, wsd) == 1.0 and lr_multiplier(79, 100, wsd) == 1.0
    assert lr_multiplier(90, 100, wsd) == pytest.approx(0.5)

    from llmkit.config import ModelConfig
    from llmkit.model import Transformer
    from llmkit.train.trainer import Trainer

    model = Transformer(ModelConfig.preset("tiny"))
    trainer = Trainer(model, TrainConfig(seq_len=64, micro_batch=4, device="cpu"), "/tmp/unused",
                      batch_fn=None, tokens_per_micro_batch=256)
    assert trainer.total_steps == math.ceil(20 * model.num_params() / 256)  # 20 tokens per parameter
    assert "Chinchilla" in trainer.plan(peak_flops=1e12)
    # batch_tokens need not divide: the nearest whole number of micro-batches, said in the plan
    trainer = Trainer(model, TrainConfig(seq_len=64, micro_batch=4, device="cpu", batch_tokens=700, max_steps=3),
                      "/tmp/unused", batch_fn=None, tokens_per_micro_batch=256)
    assert (trainer.accum, trainer.batch_tokens, trainer.micro_batches_per_step) == (3, 768, 3)
    assert "768 tokens (3 micro-batch(es) x 1 process(es)) (batch_tokens 700 rounded" in trainer.plan(peak_flops=1e12)


@pytest.mark.slow
def test_muon_trains(tmp_path, shards):
    result = cli_in_process("pretrain", "--out", tmp_path / "muon", *common(shards, max_steps=20, optimizer="muon", lr=3e-3))
    assert result.returncode == 0, result.stderr
    got = losses(tmp_path / "muon")
    assert got[20] < got[1] - 0.5


def test_bad_overrides_are_named(tmp_path, shards):
    result = cli_in_process("pretrain", "--out", tmp_path / "x", *common(shards, max_steps=1), "learning_rate=1")
    assert result.returncode == 2 and "command line: field 'learning_rate': unknown field" in result.stderr
    result = cli_in_process("pretrain", "--out", tmp_path / "x", *common(shards, max_steps=1), "model.n_layer=3")
    assert result.returncode == 2 and "n_layer" in result.stderr
    result = cli_in_process("pretrain", "--out", tmp_path / "x", *common(shards, max_steps=1, data=tmp_path / "nowhere"))
    assert result.returncode == 2 and "manifest.json: missing" in result.stderr
    result = cli_in_process("pretrain", "--out", tmp_path / "x", *common(shards, max_steps=1), "lr=[1")
    assert result.returncode == 2 and "'lr=[1': the value is not valid YAML" in result.stderr
    result = cli_in_process("pretrain", "--out", tmp_path / "x", *common(shards, max_steps=1), "keep_checkpoints=0")
    assert result.returncode == 2 and "field 'keep_checkpoints': 0 is out of range" in result.stderr
    if not torch.cuda.is_available():  # with a GPU, device=cuda is simply right
        result = cli_in_process("pretrain", "--out", tmp_path / "x", *common(shards, max_steps=1), "device=cuda")
        assert result.returncode == 2 and "sees no CUDA GPU" in result.stderr


@pytest.mark.slow
def test_annealing_switches_to_the_high_quality_subset_for_the_last_steps(tmp_path, shards):
    """The anneal set is trivially predictable text: once the Trainer switches to it (the last half of
    the steps here) the training loss collapses, and not before."""
    (tmp_path / "easy.txt").write_text("the king " * 20000)
    assert cli_in_process("data", "prepare", "--input", tmp_path / "easy.txt", "--tokenizer", shards / "tok",
                   "--out", tmp_path / "anneal").returncode == 0
    result = run_cli("pretrain", "--out", tmp_path / "run",
                     *common(shards, max_steps=60, lr=2e-2, anneal_data=tmp_path / "anneal", anneal_fraction=0.5))
    assert result.returncode == 0, result.stderr
    got = losses(tmp_path / "run")
    assert min(got[s] for s in range(1, 31)) > 4.0  # Shakespeare: hard
    assert got[60] < 1.0  # "the king the king ...": easy


def test_the_embedding_follows_the_data_tokenizer_and_says_so(shards, capsys):
    from llmkit.tokenizer import Tokenizer
    from llmkit.train.data import TokenShards
    from llmkit.train.pretrain import build_model

    train = TokenShards(shards / "train")
    model = build_model(TrainConfig(model="gpt2-cpu", data=str(shards / "train")), train, Tokenizer.load(shards / "tok"))
    assert model.config.vocab_size == 512
    said = capsys.readouterr().out
    assert "model gpt2-cpu: vocab_size 512 from the data's tokenizer (512 tokens), not the preset's 8192" in said
    assert f"{model.num_params() / 1e6:.1f}M parameters instead of" in said


def test_data_prepare_takes_the_tokenizer_of_a_gguf_model_file(tmp_path, smollm2_gguf):
    from llmkit.convert import read_tokenizer
    from llmkit.data.prepare import prepare

    (tmp_path / "a.txt").write_text("To be, or not to be, that is the question.")
    stats = prepare([tmp_path / "a.txt"], smollm2_gguf, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["vocab_size"] == 49152 and stats.documents == 1
    assert stats.tokens == len(read_tokenizer(smollm2_gguf).encode("To be, or not to be, that is the question.")) + 1


def test_mfu_never_exceeds_one_when_the_peak_was_measured_on_a_busy_machine(tmp_path, shards, monkeypatch):
    """A peak measured while another job shared the cores is too low, and the run's MFU then read 223%
    (seen in a speedrun started beside the test suite). The trainer measures again when a window
    outpaces the peak; measuring uses its own generator, so the run's losses are the same either way."""
    from llmkit.train import trainer

    calls = []

    def busy_then_idle(device, dtype):
        calls.append(dtype)
        return 1.0 if len(calls) == 1 else 1e13  # a first measurement far too low, then a generous one

    monkeypatch.setattr(trainer, "measure_peak_flops", busy_then_idle)
    result = cli_in_process("pretrain", "--out", tmp_path / "busy", *common(shards, max_steps=4))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (tmp_path / "busy" / "metrics.jsonl").read_text().splitlines()]
    assert len(calls) == 2 and all(0 < r["mfu"] <= 1 for r in records if "mfu" in r)
    monkeypatch.undo()
    result = cli_in_process("pretrain", "--out", tmp_path / "plain", *common(shards, max_steps=4))
    assert result.returncode == 0, result.stderr
    assert losses(tmp_path / "busy") == losses(tmp_path / "plain")
