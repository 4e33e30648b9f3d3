"""RLAIF labelling: the policy's two samples per prompt go to a judge in both orders; its verdict is read
from the probabilities of "A" and "B", position bias cancels, and the pairs are written in the
preference format that `llmkit reward` / `llmkit dpo` read."""

import json
import math
import re
from types import SimpleNamespace

import llmkit
from llmkit.train.chat_data import load_records
from llmkit.train.label import label_preferences
from posttrain_fixtures import run_cli, tiny_base  # noqa: F401 (fixtures)


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
            out.append(SimpleNamespace(logprobs=[SimpleNamespace(top=top)]))
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
    result = run_cli("label", "--judge", tiny_base, "--policy", tiny_base, "--input", tmp_path / "none.jsonl",
                     "--out", tmp_path / "x.jsonl")
    assert result.returncode == 2 and "none.jsonl: no such file" in result.stderr
