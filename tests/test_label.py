"""RLAIF labelling: the policy's two samples per prompt go to a judge in both orders; its verdict is read
from the probabilities of "A" and "B", position bias cancels, and the pairs are written in the
preference format that `llmkit reward` / `llmkit dpo` read."""

import json
import math
import re
from types import SimpleNamespace

import llmkit
import pytest
from llmkit.train.chat_data import load_records
from llmkit.train.label import label_preferences
from conftest import cli_in_process, run_cli
from posttrain_fixtures import tiny_base  # noqa: F401 (fixtures)


class FakeJudge:
    """A judge with a known taste: prefers the longer response, or (biased) always answers "A"."""

    def __init__(self, tokenizer, biased=False):
        self.tokenizer, self.biased, self.engine = tokenizer, biased, self
        self.a, self.b = tokenizer.encode("A")[0], tokenizer.encode("B")[0]

    def generate_batch(self, requests, params):
        out = []
        for ids in requests:
            text = self.tokenizer.decode(ids)
            a, b = re.search(r"Response A:\n(.*)\n\nResponse B:\n(.*)\n\nAnswer with", text, re.S).groups()
            prefer_a = self.biased or len(a) > len(b)
            top = [(self.a, math.log(0.9)), (self.b, math.log(0.1))] if prefer_a else \
                [(self.a, math.log(0.1)), (self.b, math.log(0.9))]
            if not self.biased and len(a) == len(b):  # no preference: an unbiased judge says 50/50
                top = [(self.a, math.log(0.5)), (self.b, math.log(0.5))]
            out.append(SimpleNamespace(finish_reason="length", logprobs=[SimpleNamespace(top=top)]))
        return out


def test_label_writes_judged_pairs_and_cancels_position_bias(tmp_path, tiny_base):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"Tell me of the king {i}."}]}) + "\n"
                               for i in range(12)))
    policy = llmkit.load(tiny_base)
    stats = label_preferences(FakeJudge(policy.tokenizer), policy, prompts, tmp_path / "pairs.jsonl",
                              max_new_tokens=12, temperature=1.0)
    rows = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert stats["pairs"] == len(rows) >= 8 and stats["consistent"] == 1.0
    for row in rows:
        assert len(row["chosen"][0]["content"]) > len(row["rejected"][0]["content"])
    assert len(load_records(tmp_path / "pairs.jsonl", "preference")) == len(rows)
    # a judge that always says "A" has no preference once both orders are asked
    stats = label_preferences(FakeJudge(policy.tokenizer, biased=True), policy, prompts, tmp_path / "biased.jsonl",
                              max_new_tokens=12)
    assert stats["pairs"] == 0 and stats["consistent"] == 0.0


def test_label_cli_with_a_real_model_as_judge(tmp_path, tiny_base):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"ROMEO. {i}"}) + "\n" for i in range(4)))
    result = run_cli("label", "--judge", tiny_base, "--policy", tiny_base, "--input", prompts, "--out",
                     tmp_path / "pairs.jsonl", "--max-new-tokens", 8)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "preference pairs" in result.stdout and (tmp_path / "pairs.jsonl").exists()
    result = cli_in_process("label", "--judge", tiny_base, "--policy", tiny_base, "--input", tmp_path / "none.jsonl",
                     "--out", tmp_path / "x.jsonl")
    assert result.returncode == 2 and "none.jsonl: no such file" in result.stderr


def test_label_by_answer_pairs_the_policys_wrong_answers_with_the_reference(tmp_path, tiny_base):
    from llmkit.errors import DataError
    from llmkit.train.label import label_by_answer
    from llmkit.train.post_common import generate, reply_text

    policy = llmkit.load(tiny_base)
    # plain-text prompts (the untrained fixture model has no chat manners): its greedy replies differ by prompt
    prompts = ["Who says it", "ROMEO. 1", "KING. 2", "Who says this", "Say what", "Who knows"]
    greedy = [reply_text(policy.tokenizer, ids) for ids in generate(policy.model, policy.tokenizer, prompts, 24)]
    assert greedy[0].strip() and "Iago" not in greedy, greedy
    # the first question's reference answer is what the model says: it is right there, wrong elsewhere
    rows = [{"prompt": p, "chosen": a, "rejected": "Cassio", "kind": "speaker", "answer": a}
            for p, a in zip(prompts, [greedy[0]] + ["Iago"] * 5)]
    source = tmp_path / "questions.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = label_by_answer(policy, source, tmp_path / "pairs.jsonl", samples=2, seed=3)
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert stats["prompts"] == 6 and stats["greedy_accuracy"] == 1 / 6 and stats["pairs"] == len(pairs)
    by_prompt = {}
    for pair in pairs:
        by_prompt.setdefault(pair["prompt"], []).append(pair)
        assert pair["kind"] == "speaker" and pair["chosen"] == pair["answer"]
    for i, prompt in enumerate(prompts):
        rejected = [p["rejected"] for p in by_prompt[prompt]]
        if i == 0:  # right greedy; the sampled answers may still be wrong, else the task's own wrong option
            assert greedy[0] not in rejected and (rejected == ["Cassio"] or "Cassio" not in rejected)
        else:  # wrong greedy answer first, then distinct wrong samples (at most 1 + 2)
            assert rejected[0] == greedy[i] and 1 <= len(rejected) <= 3 and len(set(rejected)) == len(rejected)
    assert stats["on_policy"] == len(pairs) - (by_prompt[prompts[0]][0]["rejected"] == "Cassio")
    assert len(load_records(tmp_path / "pairs.jsonl", "preference")) == len(pairs)
    # without reference answers there is nothing to judge by: an error naming the line
    (tmp_path / "bare.jsonl").write_text(json.dumps({k: v for k, v in rows[0].items() if k != "answer"}) + "\n")
    with pytest.raises(DataError, match=r'bare.jsonl:1: field "answer" missing'):
        label_by_answer(policy, tmp_path / "bare.jsonl", tmp_path / "x.jsonl")
    result = run_cli("label", "--judge", "answers", "--policy", tiny_base, "--input", source, "--out",
                     tmp_path / "cli.jsonl", "--max-new-tokens", 24)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "greedy accuracy 0.167" in result.stdout and (tmp_path / "cli.jsonl").exists()


def test_a_question_longer_than_the_policys_context_keeps_its_own_pair_and_is_counted(tmp_path, tiny_base):
    """The tiny speedrun's 256-token model met a task passage of 262 tokens: collecting pairs stopped with an
    error. Such a prompt now gets no answer: label_by_answer keeps the record's own pair, task_accuracy
    counts it wrong, and both say how many."""
    from llmkit.train.label import label_by_answer
    from llmkit.train.post_common import task_accuracy

    policy = llmkit.load(tiny_base)
    context = policy.model.config.max_seq_len
    long_prompt = " ".join(["ROMEO. Who says it"] * context)
    assert len(policy.tokenizer.encode(long_prompt)) >= context
    rows = [{"prompt": p, "chosen": "Iago", "rejected": "Cassio", "kind": "speaker", "answer": "Iago"}
            for p in ("Who says it", long_prompt)]
    source = tmp_path / "questions.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = label_by_answer(policy, source, tmp_path / "pairs.jsonl")
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert stats["too_long"] == 1 and stats["prompts"] == 2
    assert [p["rejected"] for p in pairs if p["prompt"] == long_prompt] == ["Cassio"]
    result = task_accuracy(policy.model, policy.tokenizer, load_records(source, "preference"))
    assert result["too_long"] == 1 and result["correct"][1] is False and result["n"] == 2
