"""llmkit.inspect: attention weights recomputed from the model's own queries and keys, the logit lens,
word vectors and their benchmarks, and the `llmkit inspect` / `eval --analogies` / `score` commands."""

import pytest
import torch

from conftest import TEST_DATA, cli_in_process
from llmkit.config import ModelConfig
from llmkit.inspect.attention import AttentionMaps, token_position
from llmkit.inspect.embeddings import WordVectors, parse_expression, unit
from llmkit.inspect.internals import lens_logits, trace
from llmkit.inspect.word_benchmarks import (evaluate_analogies, evaluate_similarity, read_analogies, read_similarity,
                                            spearman)
from llmkit.model import Transformer

ANALOGY = TEST_DATA / "analogy"


def random_model(**overrides) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.preset("tiny", **overrides)).eval()


def check_attention_reproduces_the_layer(model, ids):
    """weights @ values, with grouped-query heads expanded, == what SDPA gave the output projection."""
    values = []
    recorded = trace(model, ids, values=values)
    weights = recorded.attention
    cfg = model.config
    assert weights.shape == (cfg.n_layers, cfg.n_heads, len(ids), len(ids))
    for layer, (v, sdpa_out) in enumerate(values):
        v = v.repeat_interleave(cfg.n_heads // cfg.n_kv_heads, dim=0)  # (heads, seq, head_dim)
        ours = (weights[layer] @ v).transpose(0, 1).reshape(len(ids), -1)
        torch.testing.assert_close(ours, sdpa_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    assert torch.all(weights.triu(1) == 0)  # causal: nothing attends to a later token
    return recorded


@pytest.mark.parametrize("shape", [
    dict(),                                                                     # tiny: 4 query heads on 2 KV heads
    dict(n_heads=9, n_kv_heads=3, d_model=72),                                  # SmolLM2's 3:1 grouping
    dict(n_heads=4, n_kv_heads=4, qk_norm=True),                                # MHA with QK-norm (Qwen3, OLMo 2)
    dict(n_heads=4, n_kv_heads=1, pos_embedding="learned", norm="layernorm", mlp="gelu"),  # GPT-2 style, MQA
])
def test_recomputed_attention_weights_times_values_equal_the_attention_output(shape):
    model = random_model(**shape)
    ids = torch.randint(0, model.config.vocab_size, (23,)).tolist()
    check_attention_reproduces_the_layer(model, ids)


def test_lens_at_the_last_layer_is_the_models_own_logits_and_hooks_leave_nothing_behind():
    model = random_model()
    ids = torch.randint(0, 512, (17,)).tolist()
    expected = model(torch.tensor([ids]))[0]
    recorded = trace(model, ids)
    assert recorded.hidden.shape == (model.config.n_layers + 1, 17, model.config.d_model)
    torch.testing.assert_close(lens_logits(model, recorded.hidden[-1]), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(recorded.logits, expected, rtol=0, atol=0)
    # the first row is the embedding lookup itself
    torch.testing.assert_close(recorded.hidden[0], model.tok_emb.weight[ids], rtol=0, atol=0)
    assert all(not b._forward_pre_hooks and not b.attn._forward_pre_hooks for b in model.blocks)
    assert not model.norm._forward_pre_hooks
    torch.testing.assert_close(model(torch.tensor([ids]))[0], expected, rtol=0, atol=0)


def test_a_token_is_chosen_by_index_or_word():
    tokens = ["<s>", "The", " cat", " ate", " the", " cheese"]
    assert token_position(tokens, None) == 5
    assert token_position(tokens, "-2") == 4
    assert token_position(tokens, "the") == 4  # the last occurrence, case and spaces ignored
    assert token_position(tokens, "cat") == 2
    from llmkit.inspect import InspectError
    with pytest.raises(InspectError, match="not one of the text's tokens"):
        token_position(tokens, "dog")
    with pytest.raises(InspectError, match="has 6 tokens"):
        token_position(tokens, "6")


def test_attended_tokens_are_the_largest_weights_of_the_row_and_the_mean_over_heads():
    weights = torch.zeros(1, 2, 3, 3)
    weights[0, 0, 2] = torch.tensor([0.1, 0.7, 0.2])
    weights[0, 1, 2] = torch.tensor([0.5, 0.1, 0.4])
    maps = AttentionMaps(["a", "b", "c"], weights)
    assert [i for i, _, _ in maps.attended(2, 0, head=0)] == [1, 2, 0]
    mean = maps.attended(2, 0, head=None)
    assert [i for i, _, _ in mean] == [1, 0, 2] and mean[0][2] == pytest.approx(0.4)


def hand_space() -> WordVectors:
    """Words as sums of three features (royal, female, young) plus a private direction each: king - man +
    woman lands on queen, and the analogy is right only if the query words are left out."""
    names = ["man", "woman", "king", "queen", "boy", "girl", "prince", "princess"]
    royal, female, young = torch.eye(12)[:3]
    vectors = {}
    for i, word in enumerate(names):
        vectors[word] = (3 * royal * (word in ("king", "queen", "prince", "princess"))
                         + 3 * female * (word in ("woman", "queen", "girl", "princess"))
                         + 3 * young * (word in ("boy", "girl", "prince", "princess")) + 0.5 * torch.eye(12)[3 + i])
    return WordVectors(names, unit(torch.stack([vectors[w] for w in names])), vectors.get, "hand-made")


def test_analogy_by_3cosadd_leaves_out_the_query_words():
    space = hand_space()
    assert space.analogy("king - man + woman")[0][0] == "queen"
    assert space.analogy("prince - boy + girl")[0][0] == "princess"
    assert parse_expression("king - man + woman") == [(1, "king"), (-1, "man"), (1, "woman")]
    from llmkit.inspect import InspectError
    with pytest.raises(InspectError):
        parse_expression("king man")
    with pytest.raises(InspectError, match="has no vector"):
        space.analogy("king - dog + woman")


def test_batched_analogy_evaluation_equals_one_question_at_a_time(tmp_path):
    space = hand_space()
    path = tmp_path / "q.txt"
    path.write_text(": royal\nman king woman queen\nboy prince girl princess\nman woman king queen\n"
                    ": other\nman king boy prince\nman woman dog cat\n")
    questions = read_analogies(path)
    result = evaluate_analogies(space, questions, batch=2)
    one_by_one = {}
    for q in questions:
        if all(space.vector_of(w) is not None for w in q.words):
            a, b, c, d = q.words
            one_by_one.setdefault(q.section, []).append(space.analogy(f"{b} - {a} + {c}", top=1)[0][0] == d)
    assert dict(result.answered) == {s: len(v) for s, v in one_by_one.items()}
    assert dict(result.correct) == {s: sum(v) for s, v in one_by_one.items()}
    assert result.total["other"] == 2 and result.answered["other"] == 1  # dog/cat have no vectors: counted, skipped
    assert result.coverage == pytest.approx(4 / 5)
    assert result.correct["royal"] == 3


def test_spearman_matches_hand_computed_values_with_ties():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks of [1, 2, 2, 3] are [1, 2.5, 2.5, 4]; Pearson of those with [1, 2, 3, 4]
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)


def test_the_fixture_sets_are_read():
    questions = read_analogies(ANALOGY / "questions-words-sample.txt")
    assert len(questions) == 16 and questions[0].words == ("Athens", "Greece", "Baghdad", "Iraq")
    assert sorted({q.section for q in questions}) == ["capital-common-countries", "family", "gram2-opposite"]
    pairs = read_similarity(ANALOGY / "wordsim353-sample.tsv")
    assert len(pairs) == 10 and pairs[1] == ("tiger", "cat", 7.35)
    assert len(read_similarity(ANALOGY / "simlex999-sample.txt")) == 10
    sims = evaluate_similarity(hand_space(), [("king", "queen", 5.0), ("man", "woman", 6.0), ("king", "boy", 1.0),
                                              ("dog", "cat", 9.0)])
    assert sims["pairs"] == 3 and sims["total"] == 4


# --- the commands ----------------------------------------------------------------------------------------
def test_inspect_attention_prints_per_head_percentages_and_writes_png_and_html(saved_tiny_model, tmp_path):
    result = cli_in_process("inspect", "attention", "--model", saved_tiny_model, "ROMEO: But soft, what light",
                            "--layer", "1", "--token", "-1", "--png", tmp_path / "a.png", "--html", tmp_path / "a.html")
    assert result.returncode == 0, result.stderr
    assert "layer  1 head  3" in result.stdout and "%" in result.stdout
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    page = (tmp_path / "a.html").read_text()
    assert "atob(" in page and "ROMEO" in page and "http" not in page.replace("http://www.w3.org/2000/svg", "")


def test_inspect_attention_refuses_a_layer_that_does_not_exist(saved_tiny_model):
    result = cli_in_process("inspect", "attention", "--model", saved_tiny_model, "hello", "--layer", "7")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: layer 7 does not exist: the model has 2 layers, numbered 0 to 1"]


def test_inspect_lens_table_and_grid(saved_tiny_model, tmp_path):
    result = cli_in_process("inspect", "lens", "--model", saved_tiny_model, "ROMEO: But soft", "--png", tmp_path / "l.png")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("layer"))
    assert [line.split()[0] for line in lines[header + 1:header + 4]] == ["emb", "1", "2"]
    assert "last layer" in lines[header + 4]
    assert (tmp_path / "l.png").stat().st_size > 1000


def test_inspect_embeddings_neighbours_analogy_and_map(saved_tiny_model, tmp_path):
    result = cli_in_process("inspect", "embeddings", "--model", saved_tiny_model, "--neighbours", "the", "--top", "3")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 4
    result = cli_in_process("inspect", "embeddings", "--model", saved_tiny_model, "--map", "the", "and", "king", "lord",
                            "--png", tmp_path / "m.png")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m.png").exists()
    result = cli_in_process("inspect", "embeddings", "--model", saved_tiny_model, "--map", "the", "and")
    assert result.returncode == 2 and "--png" in result.stderr


def test_eval_analogies_and_similarity_on_the_fixture_sets(saved_tiny_model):
    result = cli_in_process("eval", "--model", saved_tiny_model, "--analogies", ANALOGY / "questions-words-sample.txt",
                            "--similarity", ANALOGY / "wordsim353-sample.tsv")
    assert result.returncode == 0, result.stderr
    assert "capital-common-countries" in result.stdout and "coverage" in result.stdout
    assert "Spearman" in result.stdout and "/10 pairs" in result.stdout
    result = cli_in_process("eval", "--model", saved_tiny_model, "--analogies", ANALOGY / "questions-words-sample.txt",
                            "--embeddings", "hidden")
    assert result.returncode == 0, result.stderr
    assert "layer 2" in result.stdout and "best" in result.stdout


def test_score_ranks_sentences_and_draws_them(saved_tiny_model, tmp_path):
    result = cli_in_process("score", "--model", saved_tiny_model, "the king", "king the the", "--png", tmp_path / "s.png")
    assert result.returncode == 0, result.stderr
    ranking = result.stdout.split("ranking")[1].splitlines()
    assert ranking[1].lstrip().startswith("1.") and ranking[2].lstrip().startswith("2.")
    assert (tmp_path / "s.png").exists()


# --- SmolLM2 ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_attention_lens_and_embeddings(smollm2_dir):
    from llmkit.checkpoint import load_model, load_tokenizer
    from llmkit.inspect.embeddings import input_embeddings

    model, tokenizer = load_model(smollm2_dir), load_tokenizer(smollm2_dir)
    ids = tokenizer.encode("The cat ate the cheese because it was hungry.", add_bos=True)
    recorded = check_attention_reproduces_the_layer(model, ids)  # 9 query heads on 3 KV heads, real weights
    torch.testing.assert_close(lens_logits(model, recorded.hidden[-1]), recorded.logits, rtol=0, atol=1e-4)
    space = input_embeddings(model, tokenizer)
    assert space.analogy("king - man + woman")[0][0] == "queen"
    assert "queen" in [w for w, _ in space.neighbours("king", 5)]
