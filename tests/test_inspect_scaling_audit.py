"""Defects found by using `llmkit inspect`, `llmkit eval --similarity` and `llmkit scaling` as a user would:
each test failed before its fix. Bad input is one clear error naming file and line, never a silently
wrong number; a sweep never writes among a user's files nor trains two runs into one folder."""

import html
import re

import pytest
import torch

from conftest import cli_in_process
from llmkit.errors import ConfigError, DataError, OutputError
from llmkit.inspect import InspectError
from llmkit.inspect.attention import AttentionMaps
from llmkit.inspect.attention_html import write_attention_html
from llmkit.inspect.embeddings import WordVectors, unit
from llmkit.inspect.word_benchmarks import evaluate_similarity, read_similarity
from test_scaling import shards, tiny_overrides  # noqa: F401 - the module's tiny shards fixture, reused


def toy_space() -> WordVectors:
    """Four words on known directions; vector_of strips, as the input embeddings' rule does."""
    words = ["king", "queen", "man", "woman"]
    vectors = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.1], [0.0, 0.1, 1.0]])
    lookup = dict(zip(words, vectors))
    return WordVectors(words, unit(vectors), lambda w: lookup.get(w.strip()), "a toy space")


# --- word-similarity files and Spearman ------------------------------------------------------------------
def test_a_similarity_score_that_is_not_finite_is_refused_with_its_line(tmp_path):
    path = tmp_path / "sim.tsv"
    path.write_text("# Word 1\tWord 2\tHuman\nking\tqueen\t8.5\nman\twoman\tnan\nking\tman\t3\n")
    with pytest.raises(DataError, match=r"sim\.tsv:3: the score 'nan' is not a finite number"):
        read_similarity(path)
    path.write_text("king\tqueen\tinf\n")
    with pytest.raises(DataError, match=r"sim\.tsv:1:"):
        read_similarity(path)


def test_only_the_first_line_of_a_similarity_file_may_be_a_header(tmp_path):
    path = tmp_path / "sim.tsv"
    path.write_text("Word 1\tWord 2\tHuman (mean)\nking\tqueen\t8.5\nman\twoman\t7\n")
    assert read_similarity(path) == [("king", "queen", 8.5), ("man", "woman", 7.0)]
    path.write_text("Word 1\tWord 2\tHuman (mean)\nking queen\nman\twoman\t7\n")  # a broken second line
    with pytest.raises(DataError, match=r"sim\.tsv:2: expected"):
        read_similarity(path)


def test_spearman_against_constant_human_scores_is_undefined_not_zero():
    pairs = [("king", "queen", 5.0), ("man", "woman", 5.0), ("king", "man", 5.0), ("queen", "woman", 5.0)]
    result = evaluate_similarity(toy_space(), pairs)
    assert result["spearman"] is None and result["pairs"] == 4


# --- neighbours and analogies ----------------------------------------------------------------------------
def test_neighbours_of_a_space_prefixed_word_leave_the_word_itself_out():
    space = toy_space()
    assert [w for w, _ in space.neighbours(" king", 3)] == [w for w, _ in space.neighbours("king", 3)]
    assert "king" not in [w for w, _ in space.neighbours(" king", 3)]


def test_an_analogy_whose_terms_cancel_is_an_error_not_a_list_of_zeros():
    with pytest.raises(InspectError, match="cancel out"):
        toy_space().analogy("king - king")
    assert toy_space().analogy("king - man + woman", 1)[0][0] == "queen"


def test_eval_hidden_layer_must_be_one_of_the_models_layers(saved_tiny_model, tmp_path):
    pairs = tmp_path / "sim.tsv"
    pairs.write_text("king\tqueen\t8\nman\twoman\t7\nking\tman\t3\nqueen\tman\t2\n")
    for layer in ("-1", "3", "x"):  # the tiny model has layers 0 (embeddings' output) to 2
        result = cli_in_process("eval", "--model", saved_tiny_model, "--similarity", pairs,
                                "--embeddings", f"hidden:{layer}")
        assert result.returncode == 2 and "the model has layers 0 to 2" in result.stderr, result.stdout
        assert "layer -1" not in result.stdout and "Traceback" not in result.stderr
    result = cli_in_process("eval", "--model", saved_tiny_model, "--similarity", pairs, "--embeddings", "hidden:2")
    assert result.returncode == 0 and "layer 2:" in result.stdout


# --- the attention page ----------------------------------------------------------------------------------
def test_attention_page_keeps_placeholder_names_in_the_users_text(tmp_path):
    tokens = ["<|bos|>", " __DATA__", " <img src=x onerror=alert(1)>", " __TOKENS__"]
    torch.manual_seed(0)
    weights = torch.randn(2, 3, 4, 4).masked_fill(torch.ones(4, 4, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
    title = "tiny: __TOKENS__ and __DATA__ <b>"
    page = write_attention_html(AttentionMaps(tokens, weights), tmp_path / "a.html", title=title).read_text()
    assert f"<title>Attention: {html.escape(title)}</title>" in page  # the title as written, escaped
    assert "<img" not in page.split("<script>")[0]  # no token reaches the page's HTML unescaped
    script_tokens = re.search(r"const tokens = (.*);", page)[1]
    assert script_tokens == '["<|bos|>", " __DATA__", " <img src=x onerror=alert(1)>", " __TOKENS__"]'
    assert page.count('atob("') == 1 and 'atob("__DATA__")' not in page


# --- the sweep -------------------------------------------------------------------------------------------
def test_a_sweep_refuses_two_runs_that_would_share_a_name(tmp_path, shards):  # noqa: F811
    from llmkit.scaling.shapes import parse_sizes
    from llmkit.scaling.sweep import run_sweep

    out = tmp_path / "sweep"
    with pytest.raises(ConfigError, match=r"both be named C1e08-L1-d16: budgets"):
        run_sweep(out, [1e8, 1.0001e8], parse_sizes("1x16", None, 16, 16), overrides=tiny_overrides(shards),
                  dry_run=True, say=lambda line: None)
    assert not out.exists()
    # shapes that differ only in their heads are named with them (review: refusing them left a sweep of
    # such shapes, recorded under one name by older versions, with no way to go on)
    from llmkit.scaling.sweep import base_config, plan_sweep

    config = base_config("shakespeare-cpu", tiny_overrides(shards))
    planned, _ = plan_sweep(config, [1e8], parse_sizes("1x16x2,1x16x4,2x16", None, 16, 16), 512, 10**6)
    assert [p.name for p in planned] == ["C1e08-L1-d16-h2", "C1e08-L1-d16-h4", "C1e08-L2-d16"]


def test_a_sweep_does_not_write_among_a_users_files(tmp_path, shards):  # noqa: F811
    from llmkit.scaling.shapes import parse_sizes
    from llmkit.scaling.sweep import run_sweep

    mine = tmp_path / "project"
    (mine / "runs" / "C1e08-L1-d16").mkdir(parents=True)
    (mine / "runs" / "C1e08-L1-d16" / "notes.txt").write_text("my notes\n")
    (mine / "README.md").write_text("mine\n")
    with pytest.raises(OutputError, match="not a scaling sweep"):
        run_sweep(mine, [1e8], parse_sizes("1x16", None, 16, 16), overrides=tiny_overrides(shards),
                  say=lambda line: None)
    assert (mine / "runs" / "C1e08-L1-d16" / "notes.txt").read_text() == "my notes\n"
    assert sorted(p.name for p in mine.iterdir()) == ["README.md", "runs"]


# --- the fit's pictures ----------------------------------------------------------------------------------
# A measured sweep (3 budgets x depths 1-3, width 16 per layer, the built-in corpus): the 4e10 parabola's
# vertex lands at N = 0.7, far outside the swept 70k-280k parameters.
MEASURED = [(2e10, 69632, 43008, 7.4454), (2e10, 157696, 17408, 7.6264), (2e10, 279552, 9216, 7.7449),
            (4e10, 69632, 85504, 6.8244), (4e10, 157696, 34816, 7.0496), (4e10, 279552, 18944, 7.2166),
            (8e10, 69632, 171520, 6.6537), (8e10, 157696, 70144, 6.6896), (8e10, 279552, 37888, 6.7505)]


def test_plots_do_not_draw_a_parabolas_far_extrapolated_vertex(tmp_path, monkeypatch):
    from llmkit.scaling import plots
    from llmkit.scaling.fit import fit_runs

    runs = [{"budget": c, "params": n, "tokens": d, "flops": c, "val_loss": loss} for c, n, d, loss in MEASURED]
    fit = fit_runs(runs, bootstrap=0)
    assert any(p.n_opt is not None and p.n_opt < 10 for p in fit.approach2["profiles"])  # the case at hand
    figures = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.__setitem__(path.name, fig))
    plots.plot_fit(fit, tmp_path)
    isoflop = figures["isoflop.png"].axes[0]
    assert isoflop.get_xlim()[0] > 1e4 and isoflop.get_ylim()[0] > 6.0  # the axes span the runs, not the vertex
    assert any("outside the swept sizes" in text.get_text() for text in isoflop.get_legend().get_texts())
    n_axis = figures["frontier.png"].axes[0]
    assert n_axis.get_ylim()[0] > 1e3
    assert "IsoFLOP minima" not in [t.get_text() for t in n_axis.get_legend().get_texts()]  # none was found


def test_attention_of_a_text_too_long_to_hold_is_one_clear_error(saved_tiny_model, monkeypatch):
    from llmkit.inspect import attention

    # the tiny model (2 layers x 4 heads) at 600 tokens needs 23 MB at its peak; a budget of 8 MiB stands in
    # for half the machine's free memory
    monkeypatch.setattr(attention, "attention_memory_budget", lambda: 8 << 20)
    result = cli_in_process("inspect", "attention", "--model", saved_tiny_model, "To be, or not to be. " * 100)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert re.search(r"the text has \d+ tokens: .* GiB at their peak, .*; give a text of at most 362 tokens",
                     result.stderr), result.stderr
    assert cli_in_process("inspect", "attention", "--model", saved_tiny_model, "To be, or not to be.").returncode == 0


def test_attention_heatmap_says_which_axis_attends_and_what_a_colour_weighs(tmp_path, monkeypatch):
    from llmkit.inspect import plots

    torch.manual_seed(0)
    weights = torch.randn(2, 3, 4, 4).masked_fill(torch.ones(4, 4, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
    saved = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: saved.append(fig) or path)
    plots.plot_attention(AttentionMaps(["<|bos|>", " a", " b", " c"], weights), tmp_path / "a.png", layer=1)
    fig = saved[0]
    assert "attends (row)" in fig._supylabel.get_text() and "attended to (column)" in fig._supxlabel.get_text()
    assert any(ax.get_ylabel() == "attention weight" for ax in fig.axes)  # the colour bar


def test_fitting_something_that_is_not_a_file_says_so(tmp_path):
    result = cli_in_process("scaling", "fit", "/dev/null")
    assert result.returncode == 2 and "/dev/null: not a regular file" in result.stderr
    assert "no such file" not in result.stderr and "sweep --out /dev" not in result.stderr


def test_a_model_with_nan_weights_gives_an_error_not_nan_percentages(shakespeare_tokenizer):
    from llmkit.config import ModelConfig
    from llmkit.inspect.attention import attention_maps_of_ids
    from llmkit.inspect.lens import next_token_of_ids
    from llmkit.model import Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", vocab_size=shakespeare_tokenizer.vocab_size)).eval()
    with torch.no_grad():
        model.tok_emb.weight[5] = float("nan")  # one token's embedding: every later position reads it
    ids = shakespeare_tokenizer.encode("To be, or not", add_bos=True)
    ids[2] = 5
    # (the server answers these in JSON, which has no NaN: before, a 500 "internal server error")
    with pytest.raises(InspectError, match="attention weights are not finite"):
        attention_maps_of_ids(model, shakespeare_tokenizer, ids)
    with pytest.raises(InspectError, match="next-token probabilities are not finite"):
        next_token_of_ids(model, shakespeare_tokenizer, ids)


def test_a_similarity_file_with_a_byte_order_mark_reads(tmp_path):
    """Review: the mark glued itself to a first '#' comment, which then took the one header line, and the
    real header after it was an error (and a mark on a data line dropped that pair)."""
    from llmkit.inspect.word_benchmarks import read_similarity

    path = tmp_path / "s.tsv"
    path.write_bytes(b"\xef\xbb\xbf# WordSim353\nWord 1\tWord 2\tHuman (mean)\nlove\tsex\t6.77\ntiger\tcat\t7.35\n")
    assert read_similarity(path) == [("love", "sex", 6.77), ("tiger", "cat", 7.35)]
    path.write_bytes(b"\xef\xbb\xbflove\tsex\t6.77\n")
    assert read_similarity(path) == [("love", "sex", 6.77)]
