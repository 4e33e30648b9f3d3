"""Constitutional AI (`llmkit constitution`): principles read from a file with errors naming file, line and
field; SL-CAI answers, critiques and revises in a few engine batches, and a prompt's trace equals the same
prompt run alone; its output trains with `llmkit sft`; RL-CAI asks a judge by principle in both orders,
keeps order-consistent pairs only, and `llmkit dpo` trains on them; the judge may be a server."""

import json
import math
import re
from types import SimpleNamespace

import httpx
import llmkit
import pytest
from llmkit.errors import ConfigError, OutputError
from llmkit.train.chat_data import load_records
from llmkit.train.constitution import critique_and_revise, label, read_prompts, revise
from llmkit.train.principles import load_constitution
from conftest import TEST_DATA, cli_in_process
from posttrain_fixtures import config, tiny_base  # noqa: F401 (fixtures)

# short requests: the tiny test model has a 256-token context
SHORT = """principles:
  - name: kind
    critique: Was it unkind?
    revision: Say it kindly.
    compare: Which is kinder?
  - name: truth
    critique: Was it false?
    revision: Say only what is true.
    compare: Which is truer?
"""
PROMPTS = [{"messages": [{"role": "user", "content": "Who is the king?"}, {"role": "assistant", "content": "Lear."}]},
           {"prompt": "Speak of the sea."},
           {"prompt": [{"role": "user", "content": "Tell me of Rome."}]},
           {"chosen": "\n\nHuman: Where is the ghost?\n\nAssistant: Here.", "rejected": "\n\nHuman: Where is the "
            "ghost?\n\nAssistant: Gone."},
           {"prompt": "Name a play.", "completion": "Hamlet."}]


@pytest.fixture
def short_principles(tmp_path):
    path = tmp_path / "short.yaml"
    path.write_text(SHORT)
    return load_constitution(path)


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS))
    return path


class CountingEngine:
    """The model's engine, counting its batches: the stages must submit many requests at once."""

    def __init__(self, engine):
        self.engine, self.batches = engine, []

    def generate_batch(self, prompts, params):
        self.batches.append(len(prompts))
        return self.engine.generate_batch(prompts, params)


# --- principles ----------------------------------------------------------------------------------------------
def test_the_default_constitution_and_a_users_file(tmp_path):
    default = load_constitution()
    names = [p.name for p in default.principles]
    assert {"helpful", "harmless", "honest"} <= set(names) and len(set(names)) == len(names)
    assert all(p.critique and p.revision and p.compare for p in default.principles)
    (tmp_path / "mine.json").write_text(json.dumps({"principles": [{"name": "brief", "critique": "Too long?",
                                                                    "revision": "Shorter.", "compare": "Which is shorter?"}]}))
    mine = load_constitution(tmp_path / "mine.json")
    assert [p.name for p in mine.principles] == ["brief"] and mine.principles[0].compare == "Which is shorter?"
    # a principle is drawn from (seed, purpose, prompt): stable, and both principles get used
    prompt = [{"role": "user", "content": "hi"}]
    assert default.pick(3, "label", prompt) == default.pick(3, "label", prompt)
    drawn = {default.pick(seed, "revise:1", prompt).name for seed in range(40)}
    assert len(drawn) == len(names)


@pytest.mark.parametrize("text, error", [
    ("principles:\n  - name: a\n    critique: c\n    revision: r\n", r"bad.yaml: line 2: principle 0: field 'compare' is missing"),
    ("principles:\n  - name: a\n    critique: c\n    revision: r\n    compare: x\n    weight: 2\n",
     r"bad.yaml: line 6: field 'weight': principle 0: unknown field"),
    ("principles:\n  - name: a\n    critique: ''\n    revision: r\n    compare: x\n",
     r"bad.yaml: line 3: field 'critique': principle 0: must be a non-empty string"),
    ("principles:\n  - name: a\n    critique: c\n    revision: [1]\n    compare: x\n",
     r"bad.yaml: line 4: field 'revision': principle 0: must be a non-empty string, not \[1\]"),
    ("principles:\n  - {name: a, critique: c, revision: r, compare: x}\n  - {name: a, critique: c, revision: r, "
     "compare: x}\n", r"bad.yaml: line 3: field 'name': principle 1: name 'a' is used twice"),
    ("principles:\n  - name: two words\n    critique: c\n    revision: r\n    compare: x\n",
     r"bad.yaml: line 2: field 'name': principle 0: 'two words' is not a name"),
    ("principles: []\n", r"bad.yaml: line 1: field 'principles': 'principles' must be a non-empty list"),
    ("principles:\n  - just text\n", r"bad.yaml: line 1: field 'principles': principle 0 must be a mapping"),
    ("rules: []\n", r"bad.yaml: line 1: field 'rules': unknown field"),
    ("principles: [\n", r"bad.yaml: line 2: invalid YAML"),
])
def test_a_bad_constitution_names_file_line_and_field(tmp_path, text, error):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ConfigError, match=error):
        load_constitution(tmp_path / "bad.yaml")


def test_bad_principles_or_prompts_stop_the_cli_before_a_model_is_loaded(tmp_path, prompts):
    (tmp_path / "bad.yaml").write_text("principles:\n  - name: a\n")
    result = cli_in_process("constitution", "revise", "--model", tmp_path / "no-model", "--prompts", prompts,
                            "--principles", tmp_path / "bad.yaml", "--out", tmp_path / "out")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "bad.yaml: line 2: principle 0: field 'critique' is missing" in result.stderr
    result = cli_in_process("constitution", "label", "--model", tmp_path / "no-model", "--prompts",
                            tmp_path / "none.jsonl", "--out", tmp_path / "out")
    assert result.returncode == 2 and "none.jsonl: no such file" in result.stderr
    result = cli_in_process("constitution", "revise", "--model", tmp_path / "no-model", "--principles", "nope",
                            "--prompts", prompts, "--out", tmp_path / "out")
    assert result.returncode == 2 and "unknown constitution 'nope'; available: default" in result.stderr
    assert not (tmp_path / "out").exists()


# --- prompts -------------------------------------------------------------------------------------------------
def test_prompts_in_every_post_training_format_and_hh_rlhf_by_name(tmp_path, prompts, monkeypatch):
    read = read_prompts(prompts)
    assert read == [[{"role": "user", "content": "Who is the king?"}], [{"role": "user", "content": "Speak of the sea."}],
                    [{"role": "user", "content": "Tell me of Rome."}], [{"role": "user", "content": "Where is the ghost?"}],
                    [{"role": "user", "content": "Name a play."}]]
    assert read_prompts(prompts, records=[1, 3]) == read[1:3] and read_prompts(prompts, limit=2) == read[:2]
    monkeypatch.setenv("LLMKIT_CACHE", str(tmp_path / "cache"))
    fetched = []

    def fetch(repo, filename, folder):  # the Hub download, replaced: tests reach no hub
        fetched.append((repo, filename))
        return TEST_DATA / "hh-rlhf" / "harmless-base-test-300.jsonl.gz"

    hh = read_prompts("hh-rlhf", limit=5, fetch=fetch)
    assert fetched == [("Anthropic/hh-rlhf", "harmless-base/train.jsonl.gz")] and len(hh) == 5
    assert all(p[-1]["role"] == "user" and p[0]["role"] == "user" for p in hh)


# --- SL-CAI --------------------------------------------------------------------------------------------------
def test_revise_in_batches_equals_each_prompt_alone_and_a_seed_repeats_a_run(tiny_base, prompts, short_principles,
                                                                              one_thread):
    llm = llmkit.load(tiny_base)
    counting = CountingEngine(llm.engine)
    llm.engine = counting
    conversations = read_prompts(prompts)
    for temperature in (0.0, 0.9):
        counting.batches.clear()
        together = critique_and_revise(llm, conversations, short_principles, rounds=2, max_new_tokens=10,
                                       temperature=temperature, seed=5)
        # one batch for the answers, then one for each round's critiques and one for its revisions
        assert counting.batches == [len(conversations)] * 5
        alone = [critique_and_revise(llm, [c], short_principles, rounds=2, max_new_tokens=10,
                                     temperature=temperature, seed=5)[0] for c in conversations]
        assert together == alone
        assert all(len(t["rounds"]) == 2 and t["final"] is not None for t in together)
        assert {s["principle"] for t in together for s in t["rounds"]} <= {"kind", "truth"}
    sampled = together
    assert critique_and_revise(llm, conversations, short_principles, rounds=2, max_new_tokens=10, temperature=0.9,
                               seed=5) == sampled
    other = critique_and_revise(llm, conversations, short_principles, rounds=2, max_new_tokens=10, temperature=0.9,
                                seed=6)
    assert [t["initial"] for t in other] != [t["initial"] for t in sampled]
    # a revision is the next round's answer: round 2 critiques what round 1 wrote
    for t in sampled:
        assert t["final"] == (t["rounds"][1]["revision"] or t["rounds"][0]["revision"] or t["initial"])


def test_revise_writes_sft_data_that_llmkit_sft_trains_on(tmp_path, tiny_base, prompts, short_principles, one_thread):
    from llmkit.train.post_config import SFTConfig
    from llmkit.train.sft import run_sft

    llm = llmkit.load(tiny_base)
    out = tmp_path / "cai"
    summary = revise(llm, read_prompts(prompts), short_principles, out, rounds=1, max_new_tokens=12, seed=1)
    assert summary["kept"] == 5 and summary["dropped"] == 0 and 0 <= summary["per_round"][0]["changed_rate"] <= 1
    records = load_records(out / "sft.jsonl", "sft")
    traces = [json.loads(line) for line in (out / "critiques.jsonl").read_text().splitlines()]
    assert len(records) == len(traces) == 5
    for record, trace in zip(records, traces):
        assert record.prompt == trace["prompt"] and record.completion == [{"role": "assistant", "content": trace["final"]}]
        step = trace["rounds"][0]
        assert set(step) == {"principle", "critique", "revision", "changed", "similarity"}
        assert step["changed"] == (trace["final"].strip() != trace["initial"].strip())
    report = (out / "report.md").read_text()
    assert "critique" in report and "| 1 | 5 |" in report and traces[0]["rounds"][0]["principle"] in report
    result = run_sft(config(SFTConfig, init_from=tiny_base, data=out / "sft.jsonl", max_steps=2, micro_batch=2,
                            eval_task=False), tmp_path / "sft")
    assert result.steps == 2 and (tmp_path / "sft" / "model.safetensors").exists()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert losses and all(math.isfinite(x) for x in losses)
    # the run is never replaced unasked, and the files stay as they were
    before = (out / "sft.jsonl").read_bytes()
    with pytest.raises(OutputError, match="--overwrite"):
        revise(llm, read_prompts(prompts), short_principles, out, max_new_tokens=12)
    assert (out / "sft.jsonl").read_bytes() == before


def test_prompts_that_outgrow_the_context_are_dropped_and_counted(tmp_path, tiny_base, prompts):
    long_rules = tmp_path / "long.yaml"
    long_rules.write_text(SHORT.replace("Was it unkind?", "Was it unkind? " * 60))
    llm = llmkit.load(tiny_base)
    traces = critique_and_revise(llm, read_prompts(prompts), load_constitution(long_rules), max_new_tokens=8, seed=0)
    dropped = [t for t in traces if t["final"] is None]
    assert dropped and all("outgrew the model's context" in t["dropped"] for t in dropped)
    assert all(s["principle"] == "truth" for t in traces if t["final"] is not None for s in t["rounds"])


# --- RL-CAI --------------------------------------------------------------------------------------------------
class PrincipledJudge:
    """A judge with a known taste, asked by principle: prefers the longer answer, or (biased) always "A",
    or (lean) always "A" but more so when A is the longer; it records the questions it was asked."""

    def __init__(self, tokenizer, biased=False, lean=False):
        self.tokenizer, self.biased, self.lean, self.engine, self.questions = tokenizer, biased, lean, self, []
        self.a, self.b = tokenizer.encode("A")[0], tokenizer.encode("B")[0]

    def generate_batch(self, requests, params):
        out = []
        for ids in requests:
            text = self.tokenizer.decode(ids)
            self.questions.append(re.search(r"(Which is \w+\?)\n\nRequest:", text).group(1))
            a, b = re.search(r"Response A:\n(.*)\n\nResponse B:\n(.*)\n\nAnswer with", text, re.S).groups()
            prefer_a = self.biased or len(a) > len(b)
            p_a = (0.9 if len(a) > len(b) else 0.6) if self.lean else 0.8 if prefer_a else 0.2
            top = [(self.a, math.log(p_a)), (self.b, math.log(1 - p_a))]
            out.append(SimpleNamespace(finish_reason="length", logprobs=[SimpleNamespace(top=top)]))
        return out


def test_label_keeps_order_consistent_pairs_that_llmkit_dpo_trains_on(tmp_path, tiny_base, short_principles):
    from llmkit.train.dpo import run_dpo
    from llmkit.train.post_config import DPOConfig

    llm = llmkit.load(tiny_base)
    conversations = [[{"role": "user", "content": f"Tell me of the king {i}."}] for i in range(10)]
    judge = PrincipledJudge(llm.tokenizer)
    summary = label(judge, llm, conversations, short_principles, tmp_path / "rl", max_new_tokens=12, seed=2)
    assert set(judge.questions) <= {"Which is kinder?", "Which is truer?"} and len(judge.questions) == 20
    rows = [json.loads(line) for line in (tmp_path / "rl" / "judgements.jsonl").read_text().splitlines()]
    pairs = [json.loads(line) for line in (tmp_path / "rl" / "pairs.jsonl").read_text().splitlines()]
    assert summary["pairs"] == len(pairs) >= 6 and summary["inconsistent"] == 0 and summary["order_agreement"] == 1.0
    for pair in pairs:
        assert len(pair["chosen"][0]["content"]) > len(pair["rejected"][0]["content"])
        assert pair["principle"] in ("kind", "truth") and pair["judge_probability"] == pytest.approx(0.8)
    assert sum(r["verdict"] in ("a", "b") for r in rows) == len(pairs)
    assert "two-order agreement" in (tmp_path / "rl" / "report.md").read_text()
    assert len(load_records(tmp_path / "rl" / "pairs.jsonl", "preference")) == len(pairs)
    result = run_dpo(config(DPOConfig, init_from=tiny_base, data=tmp_path / "rl" / "pairs.jsonl", max_steps=2,
                            micro_batch=2, eval_task=False), tmp_path / "dpo")
    assert result.steps == 2 and (tmp_path / "dpo" / "model.safetensors").exists()
    # a judge that always says "A" contradicts itself once the order is swapped: nothing is kept
    summary = label(PrincipledJudge(llm.tokenizer, biased=True), llm, conversations, short_principles,
                    tmp_path / "biased", max_new_tokens=12, seed=2)
    assert summary["pairs"] == 0 and summary["order_agreement"] == 0.0 and summary["first_position_preferred"] == 1.0


def test_the_averaged_rule_keeps_the_preference_under_a_position_bias(tmp_path, tiny_base, short_principles):
    """A judge that always says "A" but says it more surely for the longer answer: both-orders keeps
    nothing; the averaged rule keeps its taste (longer chosen, averaged probability (0.9 + 0.4) / 2)."""
    llm = llmkit.load(tiny_base)
    conversations = [[{"role": "user", "content": f"Tell me of the king {i}."}] for i in range(10)]
    strict = label(PrincipledJudge(llm.tokenizer, lean=True), llm, conversations, short_principles, tmp_path / "strict",
                   max_new_tokens=12, seed=2)
    averaged = label(PrincipledJudge(llm.tokenizer, lean=True), llm, conversations, short_principles,
                     tmp_path / "averaged", max_new_tokens=12, seed=2, rule="averaged", margin=0.1)
    assert strict["pairs"] == 0 and strict["order_agreement"] == 0.0
    different_lengths = strict["prompts"] - strict["identical"]
    pairs = [json.loads(line) for line in (tmp_path / "averaged" / "pairs.jsonl").read_text().splitlines()]
    assert averaged["order_agreement"] == 0.0 and averaged["settings"]["rule"] == "averaged"
    assert len(pairs) == averaged["pairs"] >= 6 and averaged["pairs"] <= different_lengths
    for pair in pairs:
        assert len(pair["chosen"][0]["content"]) > len(pair["rejected"][0]["content"])
        assert pair["judge_probability"] == pytest.approx(0.65)
    assert 'rule "averaged"' in (tmp_path / "averaged" / "report.md").read_text()
    # a margin beyond the judge's lean keeps nothing
    none = label(PrincipledJudge(llm.tokenizer, lean=True), llm, conversations, short_principles, tmp_path / "margin",
                 max_new_tokens=12, seed=2, rule="averaged", margin=0.2)
    assert none["pairs"] == 0 and none["undecided"] == none["prompts"] - none["identical"]


def test_decide_rules_and_their_bad_values():
    from llmkit.train.constitution import decide

    assert decide(0.9, 0.4) == "inconsistent" and decide(0.9, 0.6) == "a" and decide(0.1, 0.4) == "b"
    assert decide(0.9, 0.4, "averaged") == "a" and decide(0.6, 0.3, "averaged") == "b"
    assert decide(0.6, 0.45, "averaged", margin=0.05) == "undecided"
    with pytest.raises(ValueError, match="rule must be one of both-orders, averaged"):
        decide(0.5, 0.5, "majority")


def test_constitution_verbs_through_the_cli_with_the_model_as_its_own_judge(tmp_path, tiny_base, prompts):
    rules = tmp_path / "short.yaml"
    rules.write_text(SHORT)
    result = cli_in_process("constitution", "revise", "--model", tiny_base, "--prompts", prompts, "--principles", rules,
                            "--out", tmp_path / "sl", "--rounds", 2, "--max-new-tokens", 8, "--limit", 3)
    assert result.returncode == 0, result.stderr
    assert "wrote 3 revised answers" in result.stdout and len(load_records(tmp_path / "sl" / "sft.jsonl", "sft")) == 3
    assert json.loads((tmp_path / "sl" / "summary.json").read_text())["settings"]["limit"] == 3
    result = cli_in_process("constitution", "label", "--model", tiny_base, "--prompts", prompts, "--principles", rules,
                            "--out", tmp_path / "rl", "--max-new-tokens", 8, "--judge", tiny_base)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "rl" / "summary.json").read_text())
    assert summary["prompts"] == 5 and f"wrote {summary['pairs']} preference pairs" in result.stdout
    result = cli_in_process("constitution", "label", "--model", tiny_base, "--prompts", prompts, "--principles", rules,
                            "--out", tmp_path / "rl", "--max-new-tokens", 8)
    assert result.returncode == 2 and "--overwrite" in result.stderr
    result = cli_in_process("constitution", "label", "--model", tiny_base, "--prompts", prompts, "--principles", rules,
                            "--out", tmp_path / "rl2", "--max-new-tokens", 8, "--rule", "averaged")
    assert result.returncode == 0, result.stderr
    assert "not kept by rule averaged" in result.stdout
    assert json.loads((tmp_path / "rl2" / "summary.json").read_text())["settings"]["rule"] == "averaged"
    result = cli_in_process("constitution", "label", "--model", tiny_base, "--prompts", prompts, "--principles", rules,
                            "--out", tmp_path / "rl3", "--rule", "averaged", "--margin", "0.5")
    assert result.returncode == 2 and "--margin" in result.stderr


def test_a_judge_behind_an_openai_compatible_server(tmp_path):
    from llmkit.eval.remote import RemoteBackend
    from llmkit.train.label import judge_probabilities

    asked = []

    def handler(request):
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "judge"}]})
        body = json.loads(request.content)
        asked.append(body)
        question = body["messages"][0]["content"]
        a, b = re.search(r"Response A:\n(.*)\n\nResponse B:\n(.*)\n\nAnswer with", question, re.S).groups()
        if "no logprobs" in question:  # a server without log-probabilities: its letter is the verdict
            return httpx.Response(200, json={"choices": [{"message": {"content": "B"}}]})
        p_a = 0.9 if len(a) > len(b) else 0.1
        top = [{"token": "A", "logprob": math.log(p_a)}, {"token": " B", "logprob": math.log(1 - p_a)}]
        return httpx.Response(200, json={"choices": [{"message": {"content": "A"}, "logprobs": {"content": [
            {"token": "A", "logprob": math.log(p_a), "top_logprobs": top}]}}]})

    judge = RemoteBackend("http://judge.invalid:1", chat=True, transport=httpx.MockTransport(handler))
    prompts = [[{"role": "user", "content": "hi"}], "no logprobs"]
    p = judge_probabilities(judge, prompts, ["a long answer", "x"], ["short", "y"], ["Which is kinder?"] * 2)
    assert p == [pytest.approx(0.9), 0.0]
    assert all(b["max_tokens"] == 1 and b["temperature"] == 0 and b["top_logprobs"] == 20 for b in asked)
    assert asked[0]["messages"][0]["content"].startswith("Which is kinder?") and asked[0]["model"] == "judge"
