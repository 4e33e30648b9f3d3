"""The judge (autorater): score and verdict parsing, the both-orders tie rule, Bradley-Terry ratings,
Cohen's kappa, agreement with human labels, and `llmkit answer` / `llmkit judge` end to end with a tiny model."""

import gzip
import json
import math
import random

import re

import pytest
import torch

from conftest import TEST_DATA, run_cli
from llmkit.checkpoint import save_checkpoint
from llmkit.config import ModelConfig
from llmkit.errors import DataError
from llmkit.eval.judge import Judge, combine_orders, parse_score, parse_verdict, read_judge_prompts
from llmkit.eval.judge_runs import agreement_summary, agreement_with_humans, pairwise_ratings
from llmkit.eval.ratings import Game, fit_bradley_terry, rate_models
from llmkit.eval.stats import bootstrap_interval, cohen_kappa
from llmkit.model import Transformer

FIXTURES = TEST_DATA / "eval"
PROMPTS = FIXTURES / "mt_bench" / "judge_prompts.jsonl"


# --- parsing and the tie rule ----------------------------------------------------------------------------
def test_score_parser():
    assert parse_score("The answer is fine. Rating: [[7]]") == 7
    assert parse_score("Rating: [[7.5]]") == 7.5
    assert parse_score("first [[3]] then, on reflection, [[8]]") == 8  # the last mark is the verdict
    assert parse_score("Rating: 7") is None  # no [[ ]]: unparsable
    assert parse_score("") is None and parse_score(None) is None
    assert parse_score("[[11]]") is None and parse_score("[[0]]") is None  # outside 1-10


def test_verdict_parser():
    assert parse_verdict("B is clearer. [[B]]") == "B"
    assert parse_verdict("[[C]]") == "tie"
    assert parse_verdict("[[A]] ... no, [[B]]") is None  # undecided
    assert parse_verdict("A is better") is None


def test_both_orders_tie_rule():
    # X shown as A wins, and X shown as B wins: X wins
    assert combine_orders("A", "B") == "first"
    assert combine_orders("B", "A") == "second"
    # the same position wins in both orders: the verdict follows the position, not the answer: tie
    assert combine_orders("A", "A") == "tie"
    assert combine_orders("B", "B") == "tie"
    assert combine_orders("tie", "A") == "tie" and combine_orders("tie", "tie") == "tie"
    assert combine_orders(None, "A") is None and combine_orders("B", None) is None


# --- statistics ------------------------------------------------------------------------------------------
def test_cohen_kappa_against_hand_computed_value():
    # 10 items, rater 1: 6 x "a", 4 x "b"; rater 2: 5 x "a", 5 x "b"; they agree on 7.
    one = list("aaaaaabbbb")
    two = list("aaabbaabbb")
    # p_o = 7/10; p_e = 0.6*0.5 + 0.4*0.5 = 0.5; kappa = (0.7 - 0.5) / 0.5 = 0.4
    assert sum(a == b for a, b in zip(one, two)) == 7
    assert cohen_kappa(one, two) == pytest.approx(0.4)
    assert cohen_kappa(one, one) == pytest.approx(1.0)
    assert math.isnan(cohen_kappa(list("aaa"), list("aaa")))  # chance agreement is total: undefined


def test_bootstrap_interval_is_seeded_and_covers_the_mean():
    values = [float(i % 7) for i in range(200)]
    mean = lambda idx: sum(values[i] for i in idx) / len(idx)
    low, high = bootstrap_interval(len(values), mean, seed=3)
    assert (low, high) == bootstrap_interval(len(values), mean, seed=3)
    assert low < sum(values) / len(values) < high and high - low < 1.0


def simulated_games(strengths: dict, n: int, seed: int, tie_rate: float = 0.0) -> list[Game]:
    rng, names, games = random.Random(seed), list(strengths), []
    for _ in range(n):
        i, j = rng.sample(names, 2)
        if rng.random() < tie_rate:
            games.append(Game(i, j, 0.5))
            continue
        p = 1 / (1 + math.exp(strengths[j] - strengths[i]))
        games.append(Game(i, j, 1.0 if rng.random() < p else 0.0))
    return games


def test_bradley_terry_recovers_known_strengths():
    truth = {"a": 1.2, "b": 0.4, "c": 0.0, "d": -1.0}
    centre = sum(truth.values()) / len(truth)
    fitted = fit_bradley_terry(simulated_games(truth, 6000, seed=0), prior=0.0)
    for name, value in truth.items():
        assert fitted[name] == pytest.approx(value - centre, abs=0.12)
    # ties count half a win each: adding ties between everyone pulls no model's order
    with_ties = fit_bradley_terry(simulated_games(truth, 6000, seed=0, tie_rate=0.3), prior=0.0)
    assert sorted(with_ties, key=with_ties.get) == ["d", "c", "b", "a"]


def test_bradley_terry_half_wins_for_ties_and_finite_for_unbeaten():
    # a beats b twice, then two ties: 3 wins to 1 -> p_a / p_b = 3
    fitted = fit_bradley_terry([Game("a", "b", 1.0), Game("a", "b", 1.0), Game("a", "b", 0.5), Game("b", "a", 0.5)],
                               prior=0.0)
    assert fitted["a"] - fitted["b"] == pytest.approx(math.log(3), abs=1e-6)
    # never beaten: the prior keeps it finite
    unbeaten = fit_bradley_terry([Game("a", "b", 1.0)] * 5)
    assert math.isfinite(unbeaten["a"]) and unbeaten["a"] > unbeaten["b"]


def test_ratings_have_intervals_around_the_fit():
    rows = rate_models(simulated_games({"x": 1.0, "y": 0.0, "z": -1.0}, 600, seed=1), resamples=200)
    assert [r["model"] for r in rows] == ["x", "y", "z"]
    for r in rows:
        assert r["ci95"][0] < r["rating"] < r["ci95"][1]
    assert rows[0]["ci95"][0] > rows[2]["ci95"][1]  # a clear gap is seen as one


# --- the judge with a scripted backend -------------------------------------------------------------------
class ScriptedBackend:
    """Stands in for a model: replies by a rule on the prompt text, and records what it was asked."""

    def __init__(self, rule):
        self.rule, self.asked = rule, []

    def generate(self, prompts, max_new_tokens, stop, on_done=None):
        from llmkit.eval.backends import Generated

        self.asked += prompts
        return [Generated(self.rule(p[-1]["content"]), "stop", 1) for p in prompts]


def answer_a_text(prompt: str) -> str:
    return prompt.split("[The Start of Assistant A's Answer]\n")[1].split("\n[The End")[0]


def test_agreement_with_humans_reads_both_orders():
    prompts = read_judge_prompts(PROMPTS)
    pairs = [{"prompt": f"question {i}", "chosen": f"good answer {i} " * (1 + i % 2), "rejected": f"bad {i}"}
             for i in range(40)]
    # a perfect judge: prefers whichever shown answer is the good one
    perfect = Judge(ScriptedBackend(lambda p: "[[A]]" if "good" in answer_a_text(p) else "[[B]]"), "perfect")
    summary, records = agreement_with_humans(perfect, prompts, pairs, seed=0)
    assert len(perfect.backend.asked) == 80  # both orders
    assert {r["human"] for r in records} == {"first", "second"}  # the chosen reply is shown first or second
    assert summary["kappa"]["value"] == pytest.approx(1.0) and summary["accuracy"]["value"] == 1.0
    assert summary["position_consistency"]["value"] == 1.0 and summary["ties"]["k"] == 0
    assert summary["judge_picks_longer"]["value"] == summary["humans_pick_longer"]["value"] == 1.0
    # a judge that always says A: every verdict flips with the order: all ties, kappa 0, consistency 0
    always_a = Judge(ScriptedBackend(lambda p: "[[A]]"), "always A")
    summary, records = agreement_with_humans(always_a, prompts, pairs, seed=0)
    assert summary["ties"]["value"] == 1.0 and summary["accuracy"]["value"] == 0.0
    assert summary["kappa"]["value"] == pytest.approx(0.0) and summary["position_consistency"]["value"] == 0.0
    assert summary["first_position_picked"]["value"] == 1.0 and summary["accuracy_one_order"]["k"] == sum(
        r["human"] == "first" for r in records)
    # a judge that writes no verdict: counted, not a crash
    mute = Judge(ScriptedBackend(lambda p: "I cannot decide."), "mute")
    summary, _ = agreement_with_humans(mute, prompts, pairs[:5], seed=0)
    assert summary["unparsable"] == 5 and summary["accuracy"]["n"] == 0


def test_agreement_summary_kappa_matches_hand_count():
    records = ([{"human": "first", "winner": "first"}] * 3 + [{"human": "second", "winner": "second"}] * 3
               + [{"human": "first", "winner": "second"}] * 2 + [{"human": "second", "winner": "tie"}] * 2)
    records = [{**r, "verdict_first_as_a": "A", "verdict_first_as_b": "B", "longer": None} for r in records]
    # p_o = 6/10; judge: first 3, second 5, tie 2; human: first 5, second 5 -> p_e = (15 + 25) / 100 = 0.4
    assert agreement_summary(records, "j")["kappa"]["value"] == pytest.approx((0.6 - 0.4) / 0.6)


def test_pairwise_ratings_follow_a_judge_that_prefers_longer_answers():
    prompts = read_judge_prompts(PROMPTS)
    questions = [json.loads(line) for line in (FIXTURES / "mt_bench" / "question.jsonl").read_text().splitlines()]

    def answers(model: str, words: int):
        return [{**q, "model": model, "answers": ["word " * words] * len(q["turns"])} for q in questions]

    def longer_wins(prompt: str) -> str:
        if "Assistant A's Answer" in prompt:
            a = answer_a_text(prompt)
            b = prompt.split("[The Start of Assistant B's Answer]\n")[1].split("\n[The End")[0]
        else:  # multi-turn: compare the conversations' lengths
            a = prompt.split("<|The Start of Assistant A's Conversation")[1].split("<|The End")[0]
            b = prompt.split("<|The Start of Assistant B's Conversation")[1].split("<|The End")[0]
        return "[[A]]" if len(a) > len(b) else "[[B]]" if len(b) > len(a) else "[[C]]"

    judge = Judge(ScriptedBackend(longer_wins), "length")
    summary, records = pairwise_ratings(judge, prompts, [answers("short", 2), answers("long", 20), answers("mid", 8)],
                                        resamples=100)
    assert len(records) == 3 * len(questions) * 2 and len(judge.backend.asked) == 2 * len(records)
    assert [r["model"] for r in summary["ratings"]] == ["long", "mid", "short"]
    assert summary["order_flips"] == 0 and summary["unparsable"] == 0
    # the math and coding questions are judged against their reference answers
    asked = [p[-1]["content"] for p in judge.backend.asked]
    for q in questions:
        shown = [p for p in asked if q["turns"][0] in p]
        if q["category"] in ("math", "coding"):
            assert all(q["reference"][0] in p for p in shown) and any(q["reference"][1] in p for p in shown)
        else:
            assert not any("Reference Answer" in p for p in shown)


def test_duplicate_ids_and_different_questions_under_one_id_are_refused(tmp_path):
    """A duplicated question_id had one answer graded twice and its twin never; two files answering
    different questions under the same ids were compared answer against answer."""
    from llmkit.eval.answers import read_answers

    path = tmp_path / "a.jsonl"
    path.write_text('{"question_id": 1, "turns": ["Name a colour"], "answers": ["blue"]}\n'
                    '{"question_id": 1, "turns": ["What is 2+2?"], "answers": ["4"]}\n')
    with pytest.raises(DataError, match=f"{path}:2: question_id 1 again \\(first at line 1\\)"):
        read_answers(path)
    path.write_text('{"question_id": [1], "turns": ["Name a colour"], "answers": ["blue"]}\n')
    with pytest.raises(DataError, match="question_id must be a number or a string"):
        read_answers(path)
    colour = [{"question_id": 1, "turns": ["Name a colour"], "answers": ["blue"], "model": "a", "category": "x"}]
    poem = [{"question_id": 1, "turns": ["Write a poem"], "answers": ["roses"], "model": "b", "category": "x"}]
    judge = Judge(ScriptedBackend(lambda prompt: "[[A]]"), "scripted")
    with pytest.raises(DataError, match="question_id 1: the answer files of a and b hold different questions"):
        pairwise_ratings(judge, read_judge_prompts(PROMPTS), [colour, poem], resamples=10)
    assert not judge.backend.asked


# --- end to end ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_chat_models(tmp_path_factory, shakespeare_tokenizer):
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        directory = tmp_path_factory.mktemp(f"tiny-judge{seed}")
        save_checkpoint(directory, Transformer(ModelConfig.preset("tiny", max_seq_len=512)), shakespeare_tokenizer)
        out.append(directory)
    return out


def test_answer_then_judge_single_and_pairwise(tiny_chat_models, tmp_path):
    files = []
    for k, model in enumerate(tiny_chat_models):
        path = tmp_path / f"answers{k}.jsonl"
        result = run_cli("answer", "--model", model, "--questions", "mt_bench", "--task-dir", FIXTURES, "--limit", 2,
                         "--max-new-tokens", 8, "--name", f"m{k}", "--out", path, "--device", "cpu")
        assert result.returncode == 0, result.stderr
        files.append(path)
    records = [json.loads(line) for line in files[0].read_text().splitlines()]
    assert [r["question_id"] for r in records] == [81, 111] and all(len(r["answers"]) == 2 for r in records)
    assert records[1]["reference"] and records[0]["model"] == "m0"
    again = tmp_path / "again.jsonl"
    run_cli("answer", "--model", tiny_chat_models[0], "--task-dir", FIXTURES, "--limit", 2, "--max-new-tokens", 8,
            "--name", "m0", "--out", again, "--device", "cpu")
    assert again.read_text() == files[0].read_text()  # greedy and seeded: reproducible

    single = tmp_path / "single"
    result = run_cli("judge", "--judge", tiny_chat_models[0], "--answers", *files, "--task-dir", FIXTURES,
                     "--max-new-tokens", 6, "--out", single, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    summary = json.loads((single / "results.json").read_text())
    assert set(summary["models"]) == {"m0", "m1"}
    # a random tiny judge writes no [[N]]: every grade is unparsable, counted and reported
    assert summary["models"]["m0"]["judged"] == 4 and summary["models"]["m0"]["unparsable"] == 4
    assert "| m0 |" in result.stdout and (single / "results.md").is_file()
    assert len((single / "judgements.jsonl").read_text().splitlines()) == 8

    pairwise = tmp_path / "pairwise"
    result = run_cli("judge", "--judge", tiny_chat_models[0], "--answers", *files, "--mode", "pairwise",
                     "--task-dir", FIXTURES, "--max-new-tokens", 6, "--out", pairwise, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in (pairwise / "judgements.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all("judgement_first_as_b" in r for r in lines)
    assert json.loads((pairwise / "results.json").read_text())["comparisons"] == 4


def test_judge_pairs_file_and_user_errors(tiny_chat_models, tmp_path):
    pairs = tmp_path / "pairs.jsonl.gz"
    with gzip.open(TEST_DATA / "hh-rlhf" / "harmless-base-test-300.jsonl.gz", "rt") as f:
        head = [next(f) for _ in range(3)]
    with gzip.open(pairs, "wt") as f:
        f.writelines(head)
    result = run_cli("judge", "--judge", tiny_chat_models[0], "--pairs", pairs, "--task-dir", FIXTURES,
                     "--max-new-tokens", 4, "--out", tmp_path / "agree", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "agree" / "results.json").read_text())
    assert summary["pairs"] == 3 and summary["unparsable"] == 3 and "Cohen's kappa" in result.stdout
    result = run_cli("judge", "--judge", tiny_chat_models[0], "--task-dir", FIXTURES, "--out", tmp_path / "x")
    assert result.returncode == 2 and result.stderr.startswith("error: judge: give --answers")
    result = run_cli("judge", "--judge", tiny_chat_models[0], "--answers", tmp_path / "missing.jsonl",
                     "--task-dir", FIXTURES, "--out", tmp_path / "y")
    assert result.returncode == 2 and "missing.jsonl" in result.stderr and "Traceback" not in result.stderr


def test_a_judge_that_fails_is_an_error_not_an_unreadable_verdict():
    from llmkit.eval.backends import Generated
    from llmkit.errors import GenerationError

    class FailingBackend(ScriptedBackend):
        def generate(self, prompts, max_new_tokens, stop, on_done=None):
            return [Generated("", "error", 0, error="the prompt does not fit the context") for _ in prompts]

    judge = Judge(FailingBackend(None), "broken")
    with pytest.raises(GenerationError, match="the judge broken failed to answer: the prompt does not fit"):
        judge.ask([[{"role": "user", "content": "which is better?"}]])


@pytest.mark.parametrize("content, message", [
    (b"\x1f\x8b not really gzip", "unreadable"),
    (b'{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"chosen": "a"}\n', ':2: expected {"chosen", "rejected"}'),
    (b'{"prompt": 7, "chosen": "a", "rejected": "b"}\n', ":1: field 'prompt' must be text or a list"),
    (b'{"prompt": "q", "chosen": [{"role": "assistant"}], "rejected": "b"}\n', ":1: field 'chosen' must be text"),
])
def test_bad_preference_pair_files_are_one_clear_error(tmp_path, content, message):
    from llmkit.errors import DataError
    from llmkit.eval.judge_runs import read_preference_pairs

    path = tmp_path / ("pairs.jsonl.gz" if content.startswith(b"\x1f\x8b") else "pairs.jsonl")
    path.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(message)):
        read_preference_pairs(str(path))


def test_a_line_that_is_not_json_is_named_by_every_eval_file_reader(tmp_path):
    """GSM8K, HumanEval and MT-Bench question files share one JSONL loop (llmkit/eval/jsonl.py)."""
    from llmkit.errors import DataError
    from llmkit.eval.answers import read_questions
    from llmkit.eval.gsm8k import read_gsm8k
    from llmkit.eval.humaneval import read_problems

    path = tmp_path / "bad.jsonl"
    path.write_text('\n\n{not json\n')  # blank lines are skipped, but counted
    for read in (read_gsm8k, read_problems, read_questions):
        with pytest.raises(DataError, match=re.escape(f"{path}:3: not valid JSON (") + r".*column 2\)"):
            read(path)


# --- verdicts read from probabilities (small judges) -------------------------------------------------------
def _mark_logprob(llm, messages, mark):
    """log P(reply starts "[[" + mark), computed here from one plain forward over the whole text."""
    tok = llm.tokenizer
    context = tok.apply_chat_template(messages, add_generation_prompt=True) + "[["
    head, whole = tok.encode(context), tok.encode(context + mark)
    assert whole[:len(head)] == head
    with torch.no_grad():
        logits = llm.model(torch.tensor([whole])).float().log_softmax(-1)[0]
    return sum(logits[i - 1, whole[i]].item() for i in range(len(head), len(whole)))


def test_probability_verdicts_equal_a_plain_forward_and_are_symmetric_in_the_order(tmp_path, shakespeare_tokenizer):
    import llmkit

    torch.manual_seed(0)  # a context long enough for MT-Bench's judge prompt (~700 tokens here): nothing cut
    save_checkpoint(tmp_path / "judge", Transformer(ModelConfig.preset("tiny", max_seq_len=1024)), shakespeare_tokenizer)
    llm = llmkit.load(tmp_path / "judge", device="cpu")
    judge = Judge.of(llm, "tiny", verdict="probability")
    prompts = read_judge_prompts(PROMPTS)
    questions = [json.loads(line) for line in (FIXTURES / "mt_bench" / "question.jsonl").read_text().splitlines()][:2]
    items = [{"question": q, "turn": 1, "first": ["Thou art a villain.", "x"], "second": ["Good morrow, sir.", "y"]}
             for q in questions]
    records = judge.compare(prompts, items)
    swapped = judge.compare(prompts, [{**i, "first": i["second"], "second": i["first"]} for i in items])
    for r, s in zip(records, swapped):
        # the swapped question asks the same two conversations in the other order
        assert r["probabilities_first_as_a"] == s["probabilities_first_as_b"]
        assert abs(r["p_first"] + s["p_first"] - 1) < 1e-4
        forward, backward = r["probabilities_first_as_a"], r["probabilities_first_as_b"]
        assert abs(sum(forward.values()) - 1) < 1e-4 and abs(sum(backward.values()) - 1) < 1e-4
        assert r["verdict_first_as_a"] == max(forward, key=forward.get)
        assert r["winner"] == combine_orders(r["verdict_first_as_a"], r["verdict_first_as_b"])
    # the probabilities are the judge's own: renormalised exp(log P) of "[[A]]", "[[B]]", "[[C]]"
    from llmkit.eval.judge import prompt_for, turn_fields, uses_reference

    q = questions[0]
    conversation = prompt_for(prompts, "pair", 1, uses_reference(q)).messages(
        **turn_fields(q, 1), answer_a="Thou art a villain.", answer_b="Good morrow, sir.", answer_a_1="Thou art a villain.",
        answer_a_2="x", answer_b_1="Good morrow, sir.", answer_b_2="y")
    raw = {m: math.exp(_mark_logprob(llm, conversation, m + "]]")) for m in "ABC"}
    expected = {"A": raw["A"], "B": raw["B"], "tie": raw["C"]}
    total = sum(expected.values())
    for mark, p in records[0]["probabilities_first_as_a"].items():
        assert abs(p - expected[mark] / total) < 1e-4, mark

    grades = judge.grade(prompts, [{"question": questions[0], "answers": ["Good morrow.", "Fare thee well."], "turn": 1}])
    distribution = {int(n): p for n, p in grades[0]["grade_probabilities"].items()}
    assert sorted(distribution) == list(range(1, 11)) and abs(sum(distribution.values()) - 1) < 1e-3
    assert abs(grades[0]["score"] - sum(n * p for n, p in distribution.items())) < 1e-3
    assert 1 <= grades[0]["score"] <= 10


def test_probability_verdicts_through_the_cli_and_refused_for_a_server_judge(tiny_chat_models, tmp_path):
    pairs = tmp_path / "pairs.jsonl.gz"
    with gzip.open(TEST_DATA / "hh-rlhf" / "harmless-base-test-300.jsonl.gz", "rt") as f:
        head = [next(f) for _ in range(4)]
    with gzip.open(pairs, "wt") as f:
        f.writelines(head)
    result = run_cli("judge", "--judge", tiny_chat_models[0], "--pairs", pairs, "--verdict", "probability",
                     "--task-dir", FIXTURES, "--out", tmp_path / "agree", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "agree" / "results.json").read_text())
    # every pair gets a verdict: none is unparsable, and the order-averaged accuracy is reported
    assert summary["pairs"] == 4 and summary["unparsable"] == 0 and summary["verdict"] == "probability"
    assert summary["accuracy_order_averaged"]["n"] == 4 and "averaged over both orders" in result.stdout
    records = [json.loads(line) for line in (tmp_path / "agree" / "judgements.jsonl").read_text().splitlines()]
    assert all(0 <= r["p_first"] <= 1 for r in records)
    result = run_cli("judge", "--judge", "http://127.0.0.1:9/v1", "--pairs", pairs, "--verdict", "probability",
                     "--task-dir", FIXTURES, "--out", tmp_path / "remote")
    assert result.returncode == 2 and "--verdict probability" in result.stderr and "Traceback" not in result.stderr
