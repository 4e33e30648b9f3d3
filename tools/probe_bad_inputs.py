"""Probe: hostile and careless command lines, run as a new user runs them, each in its own process.

    python3 tools/probe_bad_inputs.py [--workers 2] [--only SUBSTRING] [--json OUT.json]

Builds its own fixtures in a temporary folder (a tiny model with a 512-token tokenizer, token shards, a
short training run with checkpoints, GGUF files written with the `gguf` package, broken copies of each),
then runs ~150 invocations of `python -m llmkit.cli` and sorts each outcome:

    ok           exit 0 where success is right
    clear error  exit 2 with one `error: ...` line (or argparse's usage error) where refusal is right
    traceback    a Python traceback on stderr
    silent       exit 0 where the input should have been refused, or output that is wrong (NaN, a user's
                 file changed)
    hang         still running after the case's time limit
    crash        any other exit (a signal, status 1, a multi-line error)
    refused      a clear error where success was right

Not part of the test suite (it takes minutes); the tests pin the individual behaviours. Reads the built-in
Shakespeare corpus from the llmkit cache (fetched on first use).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TARGET = REPO  # the checkout whose `llmkit` the cases run (--repo: e.g. an older commit's, for before/after)


@dataclass
class Case:
    name: str
    args: list  # str or bytes (bytes: arguments that are not valid UTF-8)
    expect: str = "error"  # "error", "ok" or "any"
    stdin: bytes | None = None
    timeout: float = 180
    check: Callable[[subprocess.CompletedProcess], str | None] | None = None  # a problem with the output, or None
    setup: Callable[[], None] | None = None
    outcome: str = ""
    detail: str = ""
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


# --- fixtures ----------------------------------------------------------------------------------------------
def build_fixtures(root: Path) -> dict[str, Path]:
    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file

    from llmkit.checkpoint import save_checkpoint
    from llmkit.config import ModelConfig
    from llmkit.data.corpus import cache_root, fetch_shakespeare
    from llmkit.data.prepare import prepare
    from llmkit.model import Transformer
    from llmkit.tokenizer import Tokenizer, read_text_files

    corpus = fetch_shakespeare(cache_root() / "data" / "shakespeare")
    texts = sorted((corpus / "train").glob("*.txt"))[:2]
    tokenizer = Tokenizer.train(read_text_files(texts), vocab_size=512)
    f = {"root": root, "corpus": corpus, "text": texts[0]}
    f["tok"] = root / "tok"
    tokenizer.save(f["tok"])
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size))
    f["model"] = root / "model"
    save_checkpoint(f["model"], model, tokenizer)
    f["shards"] = root / "shards"
    prepare(texts, f["tok"], f["shards"], shard_tokens=50_000)

    def variant(name: str, edit: Callable[[Path], None]) -> Path:
        path = root / name
        shutil.copytree(f["model"], path)
        edit(path)
        f[name] = path
        return path

    weights = "model.safetensors"
    variant("cfg_invalid_json", lambda p: (p / "config.json").write_text("{\"n_layers\": 2,"))
    variant("cfg_list", lambda p: (p / "config.json").write_text("[1, 2, 3]"))
    variant("cfg_binary", lambda p: (p / "config.json").write_bytes(bytes(range(256)) * 4))
    variant("cfg_strings", lambda p: _edit_json(p / "config.json", n_layers="2", d_model="64"))
    variant("cfg_float_layers", lambda p: _edit_json(p / "config.json", n_layers=2.5))
    variant("cfg_rope_scaling_str", lambda p: _edit_json(p / "config.json", rope_scaling="linear"))
    variant("cfg_rope_scaling_bad", lambda p: _edit_json(p / "config.json", rope_scaling={"type": "llama3"}))
    variant("cfg_negative_eps", lambda p: _edit_json(p / "config.json", norm_eps=-1.0))
    variant("tokcfg_invalid_json", lambda p: (p / "tokenizer_config.json").write_text("{bos_token: <s>"))
    variant("tokcfg_list", lambda p: (p / "tokenizer_config.json").write_text("[\"<s>\"]"))
    variant("tokcfg_types", lambda p: _edit_json(p / "tokenizer_config.json", bos_token=5, eos_token=["a"],
                                                 chat_template=17, llmkit_stop_tokens="<|end|>"))
    variant("tokcfg_binary", lambda p: (p / "tokenizer_config.json").write_bytes(b"\xff\xfe\x00garbage"))
    variant("tokjson_garbage", lambda p: (p / "tokenizer.json").write_text("{\"model\": 5}"))
    variant("tokjson_binary", lambda p: (p / "tokenizer.json").write_bytes(os.urandom(2000)))
    variant("gencfg_invalid_json", lambda p: (p / "generation_config.json").write_text("{eos"))
    variant("gencfg_list", lambda p: (p / "generation_config.json").write_text("[1]"))
    variant("gencfg_types", lambda p: _edit_json(p / "generation_config.json", eos_token_id="two",
                                                 bos_token_id=[1.5], temperature="hot"))
    variant("gencfg_binary", lambda p: (p / "generation_config.json").write_bytes(b"\x00\xff\xfe"))
    variant("weights_truncated", lambda p: (p / weights).write_bytes((p / weights).read_bytes()[:3000]))
    variant("weights_empty", lambda p: (p / weights).write_bytes(b""))
    variant("weights_missing", lambda p: (p / weights).unlink())

    def integer_tensors(p: Path) -> None:
        state = load_file(p / weights)
        save_file({k: (v * 100).to(torch.int32) for k, v in state.items()}, p / weights)

    def nan_weights(p: Path) -> None:
        state = load_file(p / weights)
        state["norm.weight"] = torch.full_like(state["norm.weight"], float("nan"))
        save_file(state, p / weights)

    def inf_embedding(p: Path) -> None:
        state = load_file(p / weights)
        state["tok_emb.weight"][5] = float("inf")
        save_file(state, p / weights)

    variant("weights_int", integer_tensors)
    variant("weights_nan", nan_weights)
    variant("weights_inf_row", inf_embedding)

    # a Hugging Face export of the model, and broken copies of its config
    subprocess.run([sys.executable, "-m", "llmkit.cli", "convert", str(f["model"]), "--to", "hf", "--out",
                    str(root / "hf")], check=True, capture_output=True, env=_env())
    f["hf"] = root / "hf"
    for name, edit in {
        "hf_list": lambda p: (p / "config.json").write_text("[]"),
        "hf_strings": lambda p: _edit_json(p / "config.json", num_attention_heads="4", hidden_size="64"),
        "hf_zero_heads": lambda p: _edit_json(p / "config.json", num_attention_heads=0),
        "hf_rope_scaling_str": lambda p: _edit_json(p / "config.json", rope_scaling="yarn"),
        "hf_rope_scaling_list": lambda p: _edit_json(p / "config.json", rope_scaling=[1, 2]),
        "hf_no_layers": lambda p: _edit_json(p / "config.json", num_hidden_layers=None),
        "hf_huge_layers": lambda p: _edit_json(p / "config.json", num_hidden_layers=10**9),
        "hf_int_weights": integer_tensors_hf,
    }.items():
        path = root / name
        shutil.copytree(f["hf"], path)
        edit(path)
        f[name] = path

    # GGUF files: a valid one written from the tiny model, and copies with broken metadata
    f["gguf"] = root / "tiny.gguf"
    write_gguf(f["gguf"], f["model"])
    for name, meta in {
        "gguf_no_heads": {"llama.attention.head_count": None},
        "gguf_zero_heads": {"llama.attention.head_count": 0},
        "gguf_string_heads": {"llama.attention.head_count": "four"},
        "gguf_string_layers": {"llama.block_count": "2"},
        "gguf_float_ctx": {"llama.context_length": 256.5},
        "gguf_huge_layers": {"llama.block_count": 10**9},
        "gguf_bad_tokens": {"tokenizer.ggml.tokens": [1, 2, 3]},
        "gguf_bad_bos": {"tokenizer.ggml.bos_token_id": "zero"},
        "gguf_no_tokenizer": {"tokenizer.ggml.model": None},
    }.items():
        path = root / f"{name}.gguf"
        write_gguf(path, f["model"], meta)
        f[name] = path
    f["gguf_truncated"] = root / "truncated.gguf"
    f["gguf_truncated"].write_bytes(f["gguf"].read_bytes()[:5000])
    f["not_gguf"] = root / "text.gguf"
    f["not_gguf"].write_text("hello")

    # a training run with checkpoints, and broken copies for --resume
    run = root / "run"
    subprocess.run([sys.executable, "-m", "llmkit.cli", "pretrain", "--out", str(run), "model=tiny",
                    f"data={f['shards']}", "max_steps=2", "ckpt_every=1", "seq_len=32", "micro_batch=2",
                    "eval_every=0", "plot=false", "threads=1", "warmup_steps=0"], check=True, capture_output=True,
                   env=_env())
    f["run"] = run
    latest = (run / "checkpoints" / "latest").read_text().strip()

    def run_variant(name: str, edit: Callable[[Path], None]) -> None:
        path = root / name
        shutil.copytree(run, path)
        edit(path / "checkpoints" / latest)
        f[name] = path

    run_variant("run_truncated_weights", lambda c: (c / weights).write_bytes((c / weights).read_bytes()[:4000]))
    run_variant("run_truncated_state", lambda c: _truncate(c / "training_state.pt", 0.5))
    run_variant("run_garbage_state", lambda c: (c / "training_state.pt").write_bytes(os.urandom(3000)))
    run_variant("run_missing_state", lambda c: (c / "training_state.pt").unlink())
    run_variant("run_bad_latest", lambda c: (c.parent / "latest").write_text("step_9999999\n"))
    run_variant("run_escaping_latest", lambda c: (c.parent / "latest").write_text("../../model\n"))

    # broken token shards
    def shard_variant(name: str, edit: Callable[[Path], None]) -> None:
        path = root / name
        shutil.copytree(f["shards"], path)
        edit(path)
        f[name] = path

    def big_id(p: Path) -> None:
        tokens = np.fromfile(p / "shard_00000.bin", dtype=np.uint16)
        tokens[7] = 60000
        tokens.tofile(p / "shard_00000.bin")

    shard_variant("shards_truncated", lambda p: _truncate(p / "shard_00000.bin", 0.9))
    shard_variant("shards_escaping", lambda p: _edit_manifest_shard(p, file="../model/model.safetensors"))
    shard_variant("shards_big_id", big_id)
    shard_variant("shards_other_tokenizer",  # a tokenizer.json edited after the shards were made
                  lambda p: (p / "tokenizer.json").write_text((p / "tokenizer.json").read_text() + "\n"))
    shard_variant("shards_bad_dtype", lambda p: _edit_json(p / "manifest.json", dtype="float64"))

    # data files
    f["empty_txt"] = root / "empty.txt"
    f["empty_txt"].write_text("")
    f["empty_dir"] = root / "empty_dir"
    f["empty_dir"].mkdir()
    f["jsonl"] = root / "records.jsonl"
    f["jsonl"].write_text("\n".join(json.dumps({"text": f"line {i} of text"}) for i in range(20)) + "\n")
    f["bad_jsonl"] = root / "bad.jsonl"
    f["bad_jsonl"].write_text("{\"text\": \"ok\"}\nnot json\n")
    f["binary_txt"] = root / "binary.txt"
    f["binary_txt"].write_bytes(os.urandom(5000))
    f["prompts"] = root / "prompts.jsonl"
    f["prompts"].write_text("\n".join(json.dumps({"prompt": f"Question {i}?", "chosen": "yes", "rejected": "no",
                                                   "answer": "yes"}) for i in range(4)) + "\n")
    f["tasks"] = root / "task.jsonl"
    f["tasks"].write_text("\n".join(json.dumps({"query": f"Is {i} even?", "choices": ["yes", "no"], "gold": i % 2})
                                     for i in range(6)) + "\n")
    f["readonly"] = root / "readonly"
    f["readonly"].mkdir()
    f["readonly"].chmod(0o555)
    f["a_file"] = root / "a_file"
    f["a_file"].write_text("I am a file, not a folder\n")
    f["fifo"] = root / "fifo"
    os.mkfifo(f["fifo"])
    f["link"] = root / "link.jsonl"
    f["link"].symlink_to(root / "link-target.jsonl")
    f["preset_yaml"] = root / "mine.yaml"
    f["preset_yaml"].write_text("model: tiny\nmax_steps: 1\n")
    from probe_cases_verbs import build_verb_fixtures

    build_verb_fixtures(root, f, _env())
    return f


def integer_tensors_hf(p: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    for file in p.glob("*.safetensors"):
        state = load_file(file)
        save_file({k: (v * 100).to(torch.int32) for k, v in state.items()}, file)


def _edit_json(path: Path, **fields) -> None:
    data = json.loads(path.read_text())
    for key, value in fields.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def _edit_manifest_shard(directory: Path, **fields) -> None:
    data = json.loads((directory / "manifest.json").read_text())
    data["shards"][0].update(fields)
    (directory / "manifest.json").write_text(json.dumps(data))


def _truncate(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def write_gguf(path: Path, model_dir: Path, overrides: dict | None = None) -> None:
    """A llama-architecture GGUF of an llmkit checkpoint (float32 tensors, the byte-level BPE tokenizer),
    with metadata keys replaced (None: removed) by `overrides`."""
    import gguf
    import numpy as np
    from safetensors.torch import load_file

    from llmkit.checkpoint import load_config
    from llmkit.tokenizer import Tokenizer

    cfg = load_config(model_dir)
    tokenizer = Tokenizer.load(model_dir)
    vocab = tokenizer.backend.get_vocab(with_added_tokens=True)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    model = json.loads(tokenizer.backend.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    specials = {t.content for t in tokenizer.backend.get_added_tokens_decoder().values()}
    meta = {
        "llama.block_count": cfg.n_layers, "llama.context_length": cfg.max_seq_len, "llama.embedding_length": cfg.d_model,
        "llama.feed_forward_length": cfg.d_ff, "llama.attention.head_count": cfg.n_heads,
        "llama.attention.head_count_kv": cfg.n_kv_heads, "llama.attention.layer_norm_rms_epsilon": cfg.norm_eps,
        "llama.rope.freq_base": cfg.rope_theta, "llama.vocab_size": cfg.vocab_size,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt2", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges, "tokenizer.ggml.token_type": [3 if t in specials else 1 for t in tokens],
        "tokenizer.ggml.bos_token_id": tokenizer.bos_id, "tokenizer.ggml.eos_token_id": tokenizer.stop_token_ids[0],
    }
    for key, value in (overrides or {}).items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in meta.items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint64(key, value) if value >= 2**32 else writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, value)
    state = {k: v.float().numpy() for k, v in load_file(model_dir / "model.safetensors").items()}
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    writer.add_tensor("token_embd.weight", state["tok_emb.weight"])
    writer.add_tensor("output_norm.weight", state["norm.weight"])
    for i in range(cfg.n_layers):
        b = f"blocks.{i}."
        qkv = state[b + "attn.qkv.weight"]
        gate, up = np.split(state[b + "mlp.gate_up.weight"], 2)
        for name, tensor in {"attn_norm": state[b + "attn_norm.weight"], "ffn_norm": state[b + "mlp_norm.weight"],
                             "attn_q": qkv[:q], "attn_k": qkv[q:q + kv], "attn_v": qkv[q + kv:],
                             "attn_output": state[b + "attn.out.weight"], "ffn_gate": gate, "ffn_up": up,
                             "ffn_down": state[b + "mlp.down.weight"]}.items():
            writer.add_tensor(f"blk.{i}.{name}.weight", np.ascontiguousarray(tensor))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _env() -> dict:
    path = os.pathsep.join(filter(None, [str(TARGET), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


# --- cases -------------------------------------------------------------------------------------------------
def cases(f: dict[str, Path], new_verbs_only: bool = False) -> list[Case]:
    from probe_cases import all_cases  # (the lists are long; they live beside this file)
    from probe_cases_verbs import verb_cases

    n = iter(range(10_000))
    fresh = lambda: f["root"] / "outs" / f"v{next(n)}"  # noqa: E731
    return ([] if new_verbs_only else all_cases(f, Case)) + verb_cases(f, Case, fresh)


# --- running and sorting ----------------------------------------------------------------------------------
def run_case(case: Case, cwd: Path) -> Case:
    if case.setup:
        case.setup()
    args = [a if isinstance(a, bytes) else str(a) for a in case.args]
    start = time.monotonic()
    try:
        result = subprocess.run([sys.executable, "-m", "llmkit.cli", *args], input=case.stdin, capture_output=True,
                                timeout=case.timeout, env=_env(), cwd=cwd)
    except subprocess.TimeoutExpired:
        case.outcome, case.seconds = "hang", time.monotonic() - start
        return case
    case.seconds = time.monotonic() - start
    out = result.stdout.decode("utf-8", "replace")
    err = result.stderr.decode("utf-8", "replace")
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    if "Traceback (most recent call last)" in err:
        kind = "traceback"
        case.detail = lines[-1][:200] if lines else ""
    elif result.returncode == 0:
        kind = "ok"
    elif result.returncode == 2 and len(errors) == 1:
        kind = "clear error"
        case.detail = errors[0][:200]
    elif result.returncode == 2 and lines and ": error: " in lines[-1] and lines[0].startswith("usage:"):
        kind = "clear error"  # argparse's usage error
        case.detail = lines[-1][:200]
    else:
        kind = "crash"
        case.detail = f"exit {result.returncode}: " + (lines[-1][:200] if lines else "")
    problem = case.check(subprocess.CompletedProcess(args, result.returncode, out, err)) if case.check else None
    if problem:
        kind, case.detail = "silent", problem
    elif kind == "ok" and case.expect == "error":
        kind, case.detail = "silent", "exit 0 where the input should be refused: " + (out.strip().splitlines() or [""])[-1][:160]
    elif kind == "clear error" and case.expect == "ok":
        kind = "refused"
    case.outcome = kind
    return case


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", default=None, help="run the cases whose name contains this")
    parser.add_argument("--new-verbs", action="store_true", help="only the cases of probe_cases_verbs.py")
    parser.add_argument("--rerun", default=None, metavar="OUT.json", help="only the cases an earlier --json recorded "
                        "as anything but ok / clear error (to check fixes without the whole probe)")
    parser.add_argument("--json", default=None, help="write every case's outcome here")
    parser.add_argument("--keep", action="store_true", help="keep the fixture folder")
    parser.add_argument("--repo", default=None, help="run the cases against this checkout's llmkit (fixtures are "
                        "built with this one's)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    root = Path(tempfile.mkdtemp(prefix="llmkit-probe-"))
    try:
        started = time.monotonic()
        fixtures = build_fixtures(root)
        print(f"fixtures in {root} ({time.monotonic() - started:.0f} s)", file=sys.stderr)
        todo = [c for c in cases(fixtures, args.new_verbs) if args.only is None or args.only in c.name]
        if args.rerun:
            bad = {r["name"] for r in json.loads(Path(args.rerun).read_text()) if r["outcome"] not in ("ok", "clear error")}
            todo = [c for c in todo if c.name in bad]
        cwd = root / "cwd"
        cwd.mkdir()
        global TARGET
        TARGET = Path(args.repo).resolve() if args.repo else REPO
        def run_and_say(case: Case) -> Case:  # each outcome as it comes: a long probe cut short still tells
            run_case(case, cwd)
            print(f"[{case.outcome}] {case.name} {case.detail}", file=sys.stderr, flush=True)
            return case

        with ThreadPoolExecutor(args.workers) as pool:
            done = list(pool.map(run_and_say, todo))
        for case in done:
            flag = "" if case.outcome in ("ok", "clear error") else "  <--"
            print(f"{case.outcome:12} {case.seconds:6.1f}s  {case.name:44} {case.detail}{flag}")
        tally = Counter(c.outcome for c in done)
        print("\n| outcome | cases |\n|---|---|")
        for kind in ("ok", "clear error", "traceback", "silent", "hang", "crash", "refused"):
            print(f"| {kind} | {tally.get(kind, 0)} |")
        print(f"| **total** | {len(done)} |")
        if args.json:
            Path(args.json).write_text(json.dumps([{"name": c.name, "outcome": c.outcome, "detail": c.detail,
                                                    "seconds": round(c.seconds, 1)} for c in done], indent=1))
        return 0 if all(c.outcome in ("ok", "clear error") for c in done) else 1
    finally:
        (root / "readonly").chmod(0o755) if (root / "readonly").exists() else None
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
