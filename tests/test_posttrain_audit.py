"""Audit of the post-training verbs other than SFT (reward, dpo, rlhf, distill): their objectives against
references computed here by hand, packing and padding, exact resume, and the bad inputs a user gives them
(a reward model or prompt-tuned run as the starting model or teacher, a student with another tokenizer, a
pair whose replies are the same, records longer than seq_len) as one line, never a silent wrong run."""

import json
import math
import re
import shutil

import pytest
import torch
import torch.nn.functional as F

from conftest import SHAKESPEARE, cli_in_process
from llmkit.errors import DataError
from posttrain_fixtures import config, task_files, tiny_base  # noqa: F401 (fixtures)


def one_line_error(result, *needles):
    """Exit status 2, a single `error: ...` line that says each needle, no traceback."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- objectives against hand-computed references -----------------------------------------------------------
def test_dpo_loss_of_a_packed_batch_is_the_paper_formula_from_each_pair_alone():
    """Rafailov et al. 2023, eq. 7, by hand: -log sigmoid(beta [(pi_w - ref_w) - (pi_l - ref_l)]) with each
    sequence's log-probability summed over its reply tokens only (not the prompt's), computed one sequence at
    a time without packing or padding; the packed batch of DPO gives the same, whatever shares its rows."""
    from llmkit.config import ModelConfig
    from llmkit.model import Transformer
    from llmkit.train.chat_data import EncodedPair
    from llmkit.train.dpo import dpo_loss, pair_batch
    from llmkit.train.packing import sequence_logprobs

    torch.manual_seed(0)
    policy, reference = Transformer(ModelConfig.preset("tiny")).eval(), Transformer(ModelConfig.preset("tiny")).eval()
    ids = lambda n: torch.randint(1, 512, (n,)).tolist()  # noqa: E731
    pairs = [EncodedPair(ids(7), ids(5), ids(9)), EncodedPair(ids(3), ids(12), ids(2)), EncodedPair(ids(10), ids(4), ids(4))]

    def alone(model, prompt, reply):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + reply]))[0]
        logp = F.log_softmax(logits.double(), -1)
        return sum(logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(reply))  # reply tokens only

    beta = 0.3
    by_hand = []
    for p in pairs:
        h = ((alone(policy, p.prompt, p.chosen) - alone(reference, p.prompt, p.chosen))
             - (alone(policy, p.prompt, p.rejected) - alone(reference, p.prompt, p.rejected)))
        by_hand.append(math.log1p(math.exp(-beta * h)))  # -log sigmoid(beta h)

    def packed(model, chunk, row_len):
        with torch.no_grad():
            lp, n = sequence_logprobs(model, pair_batch(chunk, row_len, pad_id=0), 2 * len(chunk))
        return lp.view(-1, 2), n.view(-1, 2)

    pol, counts = packed(policy, pairs, 64)
    ref, _ = packed(reference, pairs, 64)
    assert counts.tolist() == [[len(p.chosen), len(p.rejected)] for p in pairs]
    loss, _ = dpo_loss(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], beta)
    assert loss.item() == pytest.approx(sum(by_hand) / len(by_hand), abs=1e-4)
    # padding and the neighbours in a row change nothing: the last pair alone, in a longer row
    pol_last, _ = packed(policy, pairs[2:], 128)
    assert torch.allclose(pol_last[0], pol[2], atol=1e-4)


def test_reward_model_loss_is_bradley_terry_of_each_sequence_scored_alone(tiny_base):
    """The reward of a packed sequence is the head on its own last token (as scored alone), and the loss is
    mean -log sigmoid(r_w - r_l) (Ouyang et al. 2022, eq. 1) by hand."""
    from llmkit.checkpoint import load_model
    from llmkit.train.chat_data import EncodedPair
    from llmkit.train.reward import RewardModel, bradley_terry_loss, reward_batch, reward_forward

    model = RewardModel(load_model(tiny_base), seed=3).eval()
    torch.manual_seed(1)
    ids = lambda n: torch.randint(1, 512, (n,)).tolist()  # noqa: E731
    pairs = [EncodedPair(ids(6), ids(4), ids(8)), EncodedPair(ids(9), ids(3), ids(3))]
    with torch.no_grad():
        rewards = reward_forward(model, reward_batch(pairs, 64, 0)).view(-1, 2)
        alone = [[model(torch.tensor([p.prompt + r]), torch.tensor([len(p.prompt + r) - 1])).item()
                  for r in (p.chosen, p.rejected)] for p in pairs]
    assert torch.allclose(rewards, torch.tensor(alone), atol=1e-5)
    loss, metrics = bradley_terry_loss(rewards[:, 0], rewards[:, 1])
    by_hand = sum(math.log1p(math.exp(-(w - lo))) for w, lo in alone) / 2
    assert loss.item() == pytest.approx(by_hand, abs=1e-5)
    assert metrics["accuracy"] == sum(w > lo for w, lo in alone) / 2


# --- the starting model is a language model ---------------------------------------------------------------
@pytest.fixture(scope="module")
def not_language_models(tmp_path_factory, tiny_base):
    """A reward model and a prompt-tuned model made from the tiny base (loadable, not language models)."""
    from llmkit.checkpoint import load_model, load_tokenizer
    from llmkit.train.peft import apply_prompt_tuning, save_peft
    from llmkit.train.reward import RewardModel, save_reward_model

    root = tmp_path_factory.mktemp("not-lm")
    tokenizer = load_tokenizer(tiny_base)
    rm = RewardModel(load_model(tiny_base))
    save_reward_model(root / "rm", rm, rm.state_dict(), tokenizer, str(tiny_base))
    tuned = load_model(tiny_base)
    apply_prompt_tuning(tuned, 4)
    save_peft(root / "prompt", tuned, tuned.state_dict(), tokenizer, str(tiny_base))
    return {"rm": root / "rm", "prompt": root / "prompt"}


@pytest.mark.parametrize("what", ["rm", "prompt"])
@pytest.mark.parametrize("verb, field", [("dpo", "init_from"), ("reward", "init_from"), ("rlhf", "init_from"),
                                         ("distill", "teacher"), ("distill", "init_from")])
def test_a_reward_model_or_prompt_tuned_run_is_refused_as_a_language_model(tmp_path, tiny_base, task_files,
                                                                           not_language_models, what, verb, field):
    """Their model.safetensors loads as a Transformer, but a reward model's next-token head was never trained
    and a prompt-tuned run's is the base without its soft prompt: they trained silently before."""
    model = not_language_models[what]
    fields = {"data": task_files["preference"], "max_steps": 1, "threads": 1, "seq_len": 64, field: model}
    if verb == "rlhf":
        fields["reward_model"] = "answers"
    if verb == "distill":
        fields["data"] = task_files["sft"]
        fields.setdefault("teacher", tiny_base)
        if field == "teacher":
            fields["model"] = "tiny"  # a new student (init_from and a model shape are one or the other)
    result = cli_in_process(verb, "--out", tmp_path / "out", *(f"{k}={v}" for k, v in fields.items()))
    one_line_error(result, f"{field}={model}", "reward model" if what == "rm" else "prompt-tuned")
    assert not (tmp_path / "out" / "model.safetensors").exists()


# --- distillation --------------------------------------------------------------------------------------------
def test_distill_refuses_a_student_with_another_tokenizer_of_the_same_size(tmp_path, tiny_base, task_files):
    """The KL compares distributions id by id: a student whose 512 ids name other strings than the teacher's
    512 passed the vocabulary-size check and learned the teacher's predictions under the wrong names."""
    from llmkit.checkpoint import save_checkpoint
    from llmkit.config import ModelConfig
    from llmkit.model import Transformer
    from llmkit.tokenizer import Tokenizer, read_text_files

    other = Tokenizer.train(read_text_files(sorted((SHAKESPEARE / "train").glob("*.txt"))[5:6]), vocab_size=512)
    save_checkpoint(tmp_path / "student", Transformer(ModelConfig.preset("tiny", max_seq_len=256)), other)
    result = cli_in_process("distill", "--out", tmp_path / "out", f"teacher={tiny_base}",
                            f"init_from={tmp_path / 'student'}", f"data={task_files['sft']}", "max_steps=1",
                            "threads=1", "seq_len=64")
    one_line_error(result, "another tokenizer than the teacher")


def test_distill_refuses_prompt_tuning(tmp_path, tiny_base, task_files):
    """The teacher reads no soft prompt, and distill never put the student's before its inputs: peft=prompt
    trained nothing and said nothing."""
    result = cli_in_process("distill", "--out", tmp_path / "out", f"teacher={tiny_base}", f"init_from={tiny_base}",
                            f"data={task_files['sft']}", "peft=prompt", "max_steps=1", "threads=1", "seq_len=64")
    one_line_error(result, "peft=prompt does not apply to distill")


def test_distill_refuses_a_seq_len_past_the_teacher_s_context(tmp_path, tiny_base):
    """A new student is built with max_seq_len = seq_len, but the teacher (256 positions) reads the same
    windows: a record past 256 tokens was an IndexError traceback from the teacher's RoPE table."""
    data = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "word " * 170, "completion": "a short reply"}] * 2)
    result = cli_in_process("distill", "--out", tmp_path / "out", f"teacher={tiny_base}", f"data={data}", "model=tiny",
                            "seq_len=512", "micro_batch=2", "max_steps=1", "threads=1")
    one_line_error(result, "seq_len 512 is longer than the teacher's context of 256")


def long_and_short_records(path, n_long, n_short):
    long = {"prompt": "word " * 200, "completion": "a short reply"}
    short = {"prompt": "Who is Hamlet?", "completion": "The prince of Denmark."}
    return write_jsonl(path, [long] * n_long + [short] * n_short)


def test_distill_drops_records_whose_prompt_fills_seq_len_and_evaluates_held_out_records(tmp_path, tiny_base, capsys):
    """A record whose prompt fills seq_len has no token to learn; distill kept it, and a batch of such rows
    made the loss the mean of nothing, NaN ("lower lr"). Its val_data was read and then never used."""
    from llmkit.train.distill import run_distill
    from llmkit.train.post_config import DistillConfig

    data = long_and_short_records(tmp_path / "data.jsonl", n_long=7, n_short=1)
    val = long_and_short_records(tmp_path / "val.jsonl", n_long=1, n_short=2)
    common = dict(teacher=tiny_base, data=data, model="tiny", seq_len=32, micro_batch=4, threads=1, lr=1e-3)
    result = run_distill(config(DistillConfig, max_steps=2, val_data=val, **common), tmp_path / "out")
    assert "7 records dropped: prompt longer than seq_len" in capsys.readouterr().out
    assert all(math.isfinite(v) for v in losses(tmp_path / "out"))
    assert result.eval["val_kl"] > 0 and math.isfinite(result.eval["val_loss"])
    with pytest.raises(DataError, match="every record's prompt fills seq_len=32"):
        run_distill(config(DistillConfig, max_steps=1, **{**common, "data": long_and_short_records(
            tmp_path / "long.jsonl", 3, 0)}), tmp_path / "out2")


def test_distill_reads_the_built_in_task_as_the_other_stages_do(tmp_path, tiny_base):
    """data=assistant (every post-training stage's built-in task) was read as a token-shard folder named
    "assistant": "assistant/manifest.json: missing"."""
    from llmkit.train.distill import run_distill
    from llmkit.train.post_config import DistillConfig

    result = run_distill(config(DistillConfig, teacher=tiny_base, data="assistant", task_train_per_kind=4,
                                task_heldout_per_kind=2, model="tiny", seq_len=64, micro_batch=4, max_steps=1,
                                threads=1), tmp_path / "out")
    assert result.steps == 1 and result.eval["val_kl"] > 0


def test_distill_resumes_exactly(tmp_path, tiny_base, task_files):
    from llmkit.train.distill import run_distill
    from llmkit.train.post_config import DistillConfig

    fields = dict(teacher=tiny_base, data=task_files["sft"], data_records=[0, 64], model="tiny", seq_len=64,
                  micro_batch=4, max_steps=4, ckpt_every=2, keep_checkpoints=5, lr=1e-3, threads=1,
                  model_overrides={"n_layers": 1, "d_model": 32, "n_heads": 2, "n_kv_heads": 1, "d_ff": 64})
    run_distill(config(DistillConfig, **fields), tmp_path / "ref")
    cut_short(tmp_path / "ref", tmp_path / "cut", 2)
    run_distill(config(DistillConfig, **fields), tmp_path / "cut", resume=True)
    assert losses(tmp_path / "cut") == losses(tmp_path / "ref")


def cut_short(ref, cut, step):
    """A copy of a finished run directory as it was when the run died just after checkpoint `step`."""
    root = cut / "checkpoints"
    shutil.copytree(ref / "checkpoints", root)
    for later in root.glob("step_*"):
        if int(later.name.removeprefix("step_")) > step:
            shutil.rmtree(later)
    (root / "latest").write_text(f"step_{step:07d}\n")
    lines = (ref / "metrics.jsonl").read_text().splitlines()
    (cut / "metrics.jsonl").write_text("".join(line + "\n" for line in lines if json.loads(line)["step"] <= step))
    for cache in ref.glob("reference_logprobs.safetensors"):
        shutil.copy(cache, cut / cache.name)


# --- preference pairs -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("verb", ["reward", "dpo"])
def test_a_pair_whose_replies_are_the_same_is_left_out_with_a_warning_naming_its_line(tmp_path, tiny_base, verb):
    """A pair that prefers nothing has loss log 2 whatever the model and counted as a wrong ranking; it
    trained silently."""
    data = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": "Who is Hamlet?", "chosen": "A prince.", "rejected": "A king."},
        {"prompt": [{"role": "user", "content": "Who?"}], "chosen": [{"role": "assistant", "content": "Me."}],
         "rejected": [{"role": "assistant", "content": "Me."}]}])
    result = cli_in_process(verb, "--out", tmp_path / "out", f"init_from={tiny_base}", f"data={data}", "max_steps=1",
                            "threads=1", "seq_len=64", "eval_task=false")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"1 record(s) have the same reply as 'chosen' and 'rejected' (first: {data}:2)" in result.stderr
    assert "1 pairs (0 held out) (1 dropped: no two different replies" in result.stdout, result.stdout


def test_pairs_the_cut_to_seq_len_makes_identical_are_dropped_and_counted(tmp_path, tiny_base):
    from llmkit.checkpoint import load_tokenizer
    from llmkit.train.chat_data import load_records
    from llmkit.train.post_common import encode_pairs

    tokenizer = load_tokenizer(tiny_base)
    shared = "the same words for a while " * 12
    data = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": "Say it.", "chosen": shared + "yes", "rejected": shared + "no"},  # differ after 32 tokens
        {"prompt": "Say it.", "chosen": "yes", "rejected": "no"}])
    pairs, dropped = encode_pairs(tokenizer, load_records(data, "preference"), 32)
    assert dropped == 1 and len(pairs) == 1 and pairs[0].chosen != pairs[0].rejected
    with pytest.raises(DataError, match=r"pairs.jsonl:1: no pair keeps two different replies within seq_len=32"):
        encode_pairs(tokenizer, load_records(data, "preference", [0, 1]), 32)


@pytest.mark.parametrize("verb", ["reward", "dpo"])
def test_preference_stages_resume_exactly(tmp_path, tiny_base, task_files, verb):
    """Killed after step 2 of 4 and resumed: the same losses as the run that was not (LoRA's dropout draws
    included, and DPO's cached reference log-probabilities)."""
    from llmkit.train.dpo import run_dpo
    from llmkit.train.post_config import DPOConfig, RewardConfig
    from llmkit.train.reward import run_reward

    run, cls = {"reward": (run_reward, RewardConfig), "dpo": (run_dpo, DPOConfig)}[verb]
    fields = dict(init_from=tiny_base, data=task_files["preference"], data_records=[0, 32], seq_len=64, micro_batch=4,
                  max_steps=4, ckpt_every=2, keep_checkpoints=5, lr=1e-3, threads=1, eval_task=False, peft="lora")
    run(config(cls, **fields), tmp_path / "ref")
    cut_short(tmp_path / "ref", tmp_path / "cut", 2)
    run(config(cls, **fields), tmp_path / "cut", resume=True)
    assert losses(tmp_path / "cut") == losses(tmp_path / "ref")


# --- RLHF ---------------------------------------------------------------------------------------------------------
def test_a_reward_model_with_a_shorter_context_than_the_policy_s_seq_len_scores_long_replies(shakespeare_tokenizer):
    """RLHF scores with max_len = the policy's seq_len; a reward model of a shorter context was handed sequences
    past its positions."""
    from llmkit.config import ModelConfig
    from llmkit.model import Transformer
    from llmkit.train.reward import RewardModel, score

    torch.manual_seed(0)
    rm = RewardModel(Transformer(ModelConfig.preset("tiny", max_seq_len=32))).eval()
    prompt, reply = "To be, or not to be, that is the question " * 4, "whether tis nobler in the mind " * 3
    long, = score(rm, shakespeare_tokenizer, [prompt], [reply], max_len=128)
    cut, = score(rm, shakespeare_tokenizer, [prompt], [reply], max_len=32)
    assert long == pytest.approx(cut)  # cut to the reward model's own context, as with max_len=32


def test_a_byte_that_is_not_utf8_is_named_by_its_line_and_a_byte_order_mark_reads(tmp_path):
    # it was "unreadable ('utf-8' codec can't decode byte 0xff in position 59 ...)": a position in the whole file
    from llmkit.train.chat_data import read_json_records

    good = json.dumps({"prompt": "Hi", "completion": "Hello."}).encode()
    jsonl, whole = tmp_path / "bad.jsonl", tmp_path / "bad.json"
    jsonl.write_bytes(good + b"\n" + good[:-3] + b"\xff\"}\n")
    whole.write_bytes(b"[\n" + good + b",\n" + good[:-3] + b"\xff\"}\n]")
    for path, line in ((jsonl, 2), (whole, 3)):
        with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:{line}: not valid UTF-8 \(byte 0xff\)"):
            read_json_records(path)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + good + b"\n" + good + b"\n")
    assert [obj for _, obj in read_json_records(bom)] == [json.loads(good)] * 2


def test_data_files_with_cr_or_crlf_line_ends_read_line_by_line_as_before(tmp_path):
    # review: reading bytes split lines at "\n" only, so a file with CR line ends (old Mac editors) became one
    # line, "invalid JSON (Extra data)"; text mode (universal newlines) read it, as before the UTF-8 check
    import gzip

    from llmkit.train.chat_data import read_json_records

    rows = [{"prompt": "Hi", "completion": "Hello."}, {"prompt": "Bye", "completion": "See you \u2028 soon."}]
    for ending in ("\r", "\r\n"):
        text = ending.join(json.dumps(r, ensure_ascii=False) for r in rows) + ending
        plain, packed = tmp_path / "cr.jsonl", tmp_path / "cr.jsonl.gz"
        plain.write_bytes(text.encode())
        packed.write_bytes(gzip.compress(text.encode()))
        for path in (plain, packed):
            assert read_json_records(path) == [(f"{path}:{i}", r) for i, r in enumerate(rows, 1)]
        bad = tmp_path / "cr-bad.jsonl"
        bad.write_bytes(text.encode() + b'{"prompt": "\xfe"}' + ending.encode())
        with pytest.raises(DataError, match=rf"^{re.escape(str(bad))}:3: not valid UTF-8 \(byte 0xfe\)"):
            read_json_records(bad)
