"""The task scorer against its definition: every option alone through the model, one plain forward each;
accuracies as lm-evaluation-harness computes them; the LM check as greedy decoding by the engine."""

import json

import numpy as np
import pytest
import torch

from conftest import TEST_DATA
from llmkit.api import LLM
from llmkit.config import ModelConfig
from llmkit.eval import evaluate_tasks, parse_task_list
from llmkit.eval.prompts import build_requests
from llmkit.eval.scoring import TokenizedOption, encode_options, pack_example, score_alone, score_examples
from llmkit.eval.tasks import read_examples
from llmkit.infer import SamplingParams
from llmkit.model import Transformer

FIXTURES = TEST_DATA / "eval"


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return Transformer(ModelConfig.preset("tiny")).eval()  # 128 positions: few-shot prompts get truncated


@pytest.fixture(scope="module")
def tiny_long():
    torch.manual_seed(1)
    return Transformer(ModelConfig.preset("tiny", max_seq_len=512)).eval()  # the fixtures' prompts fit


def tokenized(spec, tokenizer, model, limit=20):
    examples = read_examples(spec.path, spec.kind)
    requests = build_requests(spec, examples, list(range(min(limit, len(examples)))))
    grouped = [encode_options(tokenizer, r.pairs, model.config.max_seq_len, add_bos=True) for r in requests]
    return requests, grouped


@pytest.mark.parametrize("task,shots,cut", [("arc_easy", 0, False), ("arc_easy", 2, True), ("copa", 1, False),
                                            ("copa", 3, True), ("winogrande", 0, False), ("winogrande", 3, False),
                                            ("lambada_openai", 1, True)])
def test_batched_prefix_sharing_equals_each_option_alone(tiny_model, tiny_long, shakespeare_tokenizer, task, shots,
                                                          cut):
    model = tiny_model if cut else tiny_long
    spec = parse_task_list(str(FIXTURES / f"{task}.jsonl"), shots=shots)[0]
    _, grouped = tokenized(spec, shakespeare_tokenizer, model)
    batched = score_examples(model, grouped, batch_tokens=700)  # several forwards of several examples each
    for options, scores in zip(grouped, batched):
        for option, score in zip(options, scores):
            alone = score_alone(model, option)
            assert score.tokens == alone.tokens == len(option.tokens) - option.start
            assert score.logprob == pytest.approx(alone.logprob, abs=2e-4)
            assert score.greedy == alone.greedy
    truncated = sum(1 for options in grouped if any(o.truncated for o in options))
    if cut:  # the tiny model's 128 positions cut the few-shot prompts from the left
        assert truncated >= 15 and all(len(o.tokens) == 129 for options in grouped for o in options if o.truncated)
    else:  # the shared context is computed once: rows hold far fewer tokens than the options alone
        assert truncated == 0
        rows = sum(len(pack_example(options).tokens) for options in grouped)
        alone_tokens = sum(len(o.tokens) - 1 for options in grouped for o in options)
        assert rows < (0.9 if shots == 0 else 0.6) * alone_tokens


def test_prefix_sharing_handles_options_that_are_prefixes_of_each_other(tiny_model):
    # "A" and "A B": the first option's inputs lie wholly inside the shared prefix
    context = [3, 17, 99, 4]
    options = [TokenizedOption(context + [7], 4), TokenizedOption(context + [7, 8, 9], 4),
               TokenizedOption(context + [8], 4), TokenizedOption([5] + context + [7], 5)]
    for batch_tokens in (10, 4096):
        scores = score_examples(tiny_model, [options, options[:1]], batch_tokens=batch_tokens)
        for got, option in zip(scores[0], options):
            assert got.logprob == pytest.approx(score_alone(tiny_model, option).logprob, abs=1e-5)
        assert scores[1][0].logprob == pytest.approx(scores[0][0].logprob, abs=1e-5)


def test_examples_packed_into_one_row_see_only_their_own_tokens(tiny_long, shakespeare_tokenizer):
    """Short examples share rows; each sees only its own prefix and option: the scores equal each option
    alone however the examples are packed, and packed rows leave less padding than one example a row."""
    from llmkit.eval.scoring import _batches, _pack_rows

    spec = parse_task_list(str(FIXTURES / "copa.jsonl"), shots=0)[0]
    _, grouped = tokenized(spec, shakespeare_tokenizer, tiny_long)
    lengths = [len(pack_example(options).tokens) for options in grouped]
    def padded(rows):
        row_lengths = [sum(lengths[i] for i in r) for r in rows]
        return sum(len(g) * max(row_lengths[i] for i in g) for g in _batches(row_lengths, 4096))

    rows = _pack_rows(lengths, 256)
    assert len(rows) == -(-sum(lengths) // 256) and sorted(i for r in rows for i in r) == list(range(len(grouped)))
    assert max(sum(lengths[i] for i in r) for r in rows) <= 256 + max(lengths)
    assert padded(rows) < 1.1 * sum(lengths) < padded([[i] for i in range(len(grouped))])
    assert _pack_rows([300, 10, 20, 600], 256) == [[0], [3], [2, 1]]  # the long ones alone
    for row_tokens in (1, 64, 512):
        for got, options in zip(score_examples(tiny_long, grouped, row_tokens=row_tokens), grouped):
            for score, option in zip(got, options):
                alone = score_alone(tiny_long, option)
                assert score.logprob == pytest.approx(alone.logprob, abs=2e-4) and score.greedy == alone.greedy


def test_accuracies_as_lm_evaluation_harness_defines_them(tiny_model, shakespeare_tokenizer):
    spec = parse_task_list(str(FIXTURES / "arc_easy.jsonl"), shots=1)[0]
    run = evaluate_tasks(tiny_model, shakespeare_tokenizer, [spec], progress=False)
    requests, grouped = tokenized(spec, shakespeare_tokenizer, tiny_model)
    raw = [json.loads(line) for line in (FIXTURES / "arc_easy.jsonl").read_text().splitlines()]
    acc, acc_norm, acc_token = [], [], []
    for record, example, options in zip(run["examples"]["arc_easy"], raw, grouped):
        alone = [score_alone(tiny_model, o) for o in options]
        lls = np.array([s.logprob for s in alone])
        completion_len = np.array([float(len(c)) for c in example["choices"]])  # the answer text, no delimiter
        acc.append(int(np.argmax(lls)) == example["gold"])
        acc_norm.append(int(np.argmax(lls / completion_len)) == example["gold"])
        acc_token.append(int(np.argmax(lls / np.array([s.tokens for s in alone]))) == example["gold"])
        assert record["scores"] == pytest.approx(lls.tolist(), abs=2e-4)
        assert record["prediction"] == int(np.argmax(lls)) and record["gold"] == example["gold"]
        assert record["predictions"]["acc_norm"] == int(np.argmax(lls / completion_len))
        assert record["choices"] == example["choices"]
    metrics = run["tasks"]["arc_easy"]["metrics"]
    assert metrics["acc"]["value"] == pytest.approx(np.mean(acc))
    assert metrics["acc_norm"]["value"] == pytest.approx(np.mean(acc_norm))
    assert metrics["acc_per_token"]["value"] == pytest.approx(np.mean(acc_token))
    low, high = metrics["acc"]["ci95"]
    assert metrics["acc"]["n"] == 20 and low <= metrics["acc"]["value"] <= high
    assert run["tasks"]["arc_easy"]["truncated"] == sum(1 for r in run["examples"]["arc_easy"] if r["truncated"])


def test_lm_check_equals_greedy_decoding_by_the_engine(tiny_model, shakespeare_tokenizer):
    llm = LLM(tiny_model, shakespeare_tokenizer)
    prompts = [shakespeare_tokenizer.encode(text, add_bos=True)
               for text in ["To be, or not", "My lord, I", "What light through", "O Romeo", "Now is the winter",
                            "Friends, Romans", "All the world", "Good night"]]
    params = SamplingParams(max_new_tokens=5, temperature=0)
    generated = [c.token_ids for c in llm.engine.generate_batch(prompts, params)]
    options = []
    for i, (prompt, tokens) in enumerate(zip(prompts, generated)):
        if i % 3 == 1:
            tokens = tokens[:-1] + [(tokens[-1] + 1) % 512]  # the last token wrong
        elif i % 3 == 2:
            tokens = [(tokens[0] + 7) % 512] + tokens[1:]  # the first token wrong
        options.append([TokenizedOption(prompt + tokens, len(prompt))])
    checks = [s[0].greedy for s in score_examples(tiny_model, options)]
    # greedy decoding reproduces the continuation iff each continuation token is the argmax given the
    # context and the continuation's earlier tokens: what one forward over context + continuation checks
    expected = []
    for (option,) in options:
        n = len(option.tokens) - option.start
        out = llm.engine.generate_batch([option.tokens[:option.start]], SamplingParams(max_new_tokens=n,
                                                                                        temperature=0))[0]
        expected.append(out.token_ids == option.tokens[option.start:])
    assert checks == expected
    assert any(expected) and not all(expected)


def test_lm_task_accuracy_is_the_greedy_check(tiny_model, shakespeare_tokenizer):
    spec = parse_task_list(str(FIXTURES / "lambada_openai.jsonl"), shots=0)[0]
    run = evaluate_tasks(tiny_model, shakespeare_tokenizer, [spec], progress=False)
    records = run["examples"]["lambada_openai"]
    assert [r["correct"]["acc"] for r in records] == [r["greedy"][0] for r in records]
    assert set(run["tasks"]["lambada_openai"]["metrics"]) == {"acc"}


def test_boundary_tokenization_moves_trailing_space_and_takes_the_tail(shakespeare_tokenizer):
    tok = shakespeare_tokenizer
    (option,) = encode_options(tok, [("Question: who?\nAnswer: ", "Romeo")], max_seq_len=128, add_bos=True)
    context_ids = tok.encode("Question: who?\nAnswer:")  # the trailing space went to the continuation
    whole = tok.encode("Question: who?\nAnswer: Romeo")
    assert option.tokens[0] == tok.bos_id
    assert option.tokens[1:option.start] == context_ids
    assert option.tokens[option.start:] == whole[len(context_ids):]
    assert tok.decode(option.tokens[option.start:]) == " Romeo"
    (plain,) = encode_options(tok, [("Question: who?\nAnswer: ", "Romeo")], max_seq_len=128, add_bos=False)
    assert plain.tokens == option.tokens[1:] and plain.start == option.start - 1
    (cut,) = encode_options(tok, [("word " * 200, "end")], max_seq_len=32, add_bos=True)
    assert len(cut.tokens) == 33 and cut.truncated > 0
    assert tok.decode(cut.tokens[cut.start:]) == " end"


def test_a_continuation_longer_than_the_context_is_scored_on_what_fits(tiny_model, shakespeare_tokenizer):
    """A small model meets a CORE answer longer than its whole context (PIQA has 380-token answers; the
    speedrun's model reads 256): the last max_seq_len + 1 tokens are kept, the kept part of the answer is
    scored after its own first kept token, and the cut is counted, never an error that ends the run."""
    context_len = tiny_model.config.max_seq_len
    long_answer = " the quick brown fox" * 100
    (option,) = encode_options(shakespeare_tokenizer, [("Question: what?", long_answer)], context_len, add_bos=True)
    whole = len(shakespeare_tokenizer.encode("Question: what?" + long_answer, add_bos=True))
    assert len(option.tokens) == context_len + 1 and option.start == 1
    assert option.truncated == whole - (context_len + 1)
    (scores,) = score_examples(tiny_model, [[option]])
    assert scores[0].tokens == context_len and scores[0] == score_alone(tiny_model, option)
