"""The weights and KV cache of a CPU engine in 2 MB pages (llmkit/infer/huge_pages.py): same values, same
Parameters, tied weights still tied, checkpoints still saved, and the memory advised for huge pages."""

import sys
from pathlib import Path

import pytest
import torch

from llmkit.checkpoint import load_model, save_checkpoint
from llmkit.config import ModelConfig
from llmkit.infer import Engine, SamplingParams, huge_pages, quantize_model
from llmkit.model import Transformer

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def test_huge_pages_are_available_wherever_the_kernel_offers_them(monkeypatch):
    offered = sys.platform.startswith("linux") and THP.exists() and "[never]" not in THP.read_text()
    assert huge_pages.available() == offered
    monkeypatch.setenv("LLMKIT_HUGE_PAGES", "0")
    assert not huge_pages.available()


def advised_for_huge_pages(tensor: torch.Tensor) -> bool:
    """Whether the mapping holding the tensor carries MADV_HUGEPAGE ("hg" in its smaps VmFlags)."""
    address, inside = tensor.data_ptr(), False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            first, end = (int(x, 16) for x in head.split("-"))
            inside = first <= address < end
        elif inside and head == "VmFlags:":
            return "hg" in line.split()[1:]
    raise AssertionError("no mapping holds the tensor")


def test_zeros_are_zeros_in_advised_memory_or_ordinary_ones_without_huge_pages(monkeypatch):
    shape = (3, 2, 2 << 20)  # 24 MiB of float16
    z = huge_pages.zeros(shape, torch.float16)
    assert z.shape == shape and z.dtype == torch.float16 and not z.any()
    if huge_pages.available():
        assert huge_pages.in_huge_pages(z) and advised_for_huge_pages(z)
        assert z.data_ptr() % huge_pages.HUGE_PAGE == 0
    small = huge_pages.zeros((4, 5), torch.float32)  # under a huge page: not worth a mapping
    assert not huge_pages.in_huge_pages(small) and not small.any()
    monkeypatch.setenv("LLMKIT_HUGE_PAGES", "0")
    plain = huge_pages.zeros(shape, torch.int8)
    assert not huge_pages.in_huge_pages(plain) and not plain.any()


def tiny(**overrides) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.preset("tiny", **overrides)).eval()


def test_a_model_moved_into_huge_pages_keeps_its_values_parameters_ties_and_checkpoint(tmp_path):
    # where the kernel offers no huge pages nothing moves, and the rest must hold all the same
    huge = huge_pages.available()
    model = tiny()
    x = torch.randint(0, 512, (2, 9))
    before = model(x)
    parameters = dict(model.named_parameters())
    assert model.lm_head.weight is model.tok_emb.weight  # tied
    moved = huge_pages.place_in_huge_pages(model, min_bytes=0)
    assert moved >= sum(p.nbytes for p in model.parameters()) if huge else moved == 0
    assert dict(model.named_parameters()) == parameters  # the same Parameter objects
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        assert huge_pages.in_huge_pages(tensor) == huge, name
    assert not huge or advised_for_huge_pages(model.tok_emb.weight)
    assert model.lm_head.weight is model.tok_emb.weight
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    assert huge_pages.place_in_huge_pages(model, min_bytes=0) == 0  # placed already
    # each tensor has a storage of its own: safetensors sees nothing shared, and the copy loads back equal
    save_checkpoint(tmp_path, model)
    torch.testing.assert_close(load_model(tmp_path)(x), before, rtol=0, atol=0)
    # training still updates the moved Parameters
    model.train()
    model(x).sum().backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(model(x), before) and huge_pages.in_huge_pages(model.tok_emb.weight) == huge


def test_views_and_small_models_stay_where_they_are():
    model = tiny()
    model.register_buffer("window", model.tok_emb.weight.detach()[:3])  # a view into a parameter's storage
    assert huge_pages.place_in_huge_pages(model) == 0  # under min_bytes (a huge page): nothing moves
    assert not huge_pages.in_huge_pages(model.tok_emb.weight)
    huge_pages.place_in_huge_pages(model, min_bytes=0)
    assert huge_pages.in_huge_pages(model.tok_emb.weight) == huge_pages.available()
    assert not huge_pages.in_huge_pages(model.window)
    torch.testing.assert_close(model.window, model.tok_emb.weight.detach()[:3], rtol=0, atol=0)


@pytest.mark.parametrize("bits", [8, 4])
def test_a_cpu_engine_decodes_from_huge_pages_as_from_ordinary_memory(monkeypatch, bits):
    # vocabulary and width big enough that the weights and the cache are more than a huge page each
    overrides = dict(vocab_size=4096, n_layers=3, d_model=128, n_heads=4, n_kv_heads=2, head_dim=32, d_ff=256,
                     max_seq_len=1024)
    models = []
    for setting in ("0", "1"):
        monkeypatch.setenv("LLMKIT_HUGE_PAGES", setting)
        model = tiny(**overrides)
        quantize_model(model, bits)
        engine = Engine(model, max_batch_size=8, prefix_cache_mib=0)
        engine.scheduler.reserve()  # the cache at its largest: > 2 MB
        prompts = [[5 + i, 9, 300 + 7 * i, 4000 - i] for i in range(5)]
        params = SamplingParams(max_new_tokens=12, temperature=0)
        models.append((engine, [c.token_ids for c in engine.generate_batch(prompts, [params] * 5)]))
    (plain, plain_ids), (huge, huge_ids) = models
    assert huge_ids == plain_ids
    assert not huge_pages.in_huge_pages(plain.model.tok_emb.weight)
    assert not huge_pages.in_huge_pages(plain.scheduler.cache.key_store)
    offered = huge_pages.available()  # (LLMKIT_HUGE_PAGES=1 now) where the kernel offers them
    assert huge_pages.in_huge_pages(huge.model.tok_emb.weight) == offered
    quantized = [b for n, b in huge.model.named_buffers() if n.endswith(("qweight", "packed"))]
    assert quantized and all(huge_pages.in_huge_pages(b) == offered for b in quantized)
    cache = huge.scheduler.cache
    assert cache.key_store.nbytes > huge_pages.HUGE_PAGE
    assert huge_pages.in_huge_pages(cache.key_store) == huge_pages.in_huge_pages(cache.value_store) == offered
    assert not offered or advised_for_huge_pages(cache.key_store)


def test_a_refused_mapping_leaves_memory_as_pytorch_allocates_it(monkeypatch, caplog):
    def refuse(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(huge_pages.mmap, "mmap", refuse)
    monkeypatch.setattr(huge_pages, "_refused", [])
    z = huge_pages.zeros((3, 2 << 20), torch.float32)
    assert not z.any() and not huge_pages.in_huge_pages(z)
    model = tiny()
    x = torch.randint(0, 512, (1, 5))
    before = model(x)
    assert huge_pages.place_in_huge_pages(model, min_bytes=0) == 0
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    if huge_pages.available():  # the refusal is said once, with what to expect
        assert [r.message for r in caplog.records].count(
            "huge pages: [Errno 12] Cannot allocate memory; keeping PyTorch's own allocation (4 KB pages: slower "
            "decode)") == 1


def test_a_draft_model_is_placed_with_its_engine(monkeypatch):
    from llmkit.infer import Speculator

    overrides = dict(vocab_size=4096, d_model=128, n_heads=4, n_kv_heads=2, head_dim=32, d_ff=256)
    target, draft = tiny(**overrides), tiny(n_layers=1, **overrides)
    engine = Engine(target, speculator=Speculator(draft, 3), max_batch_size=1, prefix_cache_mib=0)
    offered = huge_pages.available()
    assert huge_pages.in_huge_pages(target.tok_emb.weight) == huge_pages.in_huge_pages(draft.tok_emb.weight) == offered
    ids = engine.generate([5, 9, 300], SamplingParams(max_new_tokens=6, temperature=0))
    assert len(ids) == 6


def test_a_model_made_under_inference_mode_still_runs_after_the_move():
    # a Parameter made under torch.inference_mode is an inference tensor; ordinary data swapped into it
    # failed every later forward ("Inference tensors do not track version counter")
    with torch.inference_mode():
        model = tiny()
    x = torch.randint(0, 512, (1, 7))
    with torch.no_grad():
        before = model(x)
    huge_pages.place_in_huge_pages(model, min_bytes=0)
    assert huge_pages.in_huge_pages(model.tok_emb.weight) == huge_pages.available()
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            torch.testing.assert_close(model(x), before, rtol=0, atol=0)
