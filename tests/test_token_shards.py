"""Token shards are checked against their manifest when a run opens them: sizes, the tokenizer's hash,
token ids below the vocabulary, and files inside the shard directory only. A mismatch is one line naming
the file and saying to re-run `llmkit data prepare`, before any model is built."""

import json
import shutil

import numpy as np
import pytest

from llmkit.data.prepare import prepare
from llmkit.errors import DataError
from llmkit.train.data import TokenShards

from conftest import SHAKESPEARE, cli_in_process


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, shakespeare_tokenizer):
    root = tmp_path_factory.mktemp("shards")
    shakespeare_tokenizer.save(root / "tok")
    files = sorted((SHAKESPEARE / "val").glob("*.txt"))[:2]
    prepare(files, root / "tok", root / "shards", shard_tokens=20_000)
    return root / "shards"


@pytest.fixture
def shards(prepared, tmp_path):
    shutil.copytree(prepared, tmp_path / "shards")
    return tmp_path / "shards"


def edit_manifest(directory, edit):
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_intact_shards_open(shards):
    opened = TokenShards(shards)
    assert len(opened.shards) >= 2 and opened.tokens == json.loads((shards / "manifest.json").read_text())["tokens"]


def test_a_truncated_shard_is_refused(shards):
    path = shards / "shard_00000.bin"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"shard_00000\.bin: .* bytes, but .*manifest\.json says .* tokens .*"
                                        r"re-run `llmkit data prepare`"):
        TokenShards(shards)


def test_a_shard_from_another_run_of_other_length_is_refused(shards):
    (shards / "shard_00001.bin").write_bytes((shards / "shard_00000.bin").read_bytes())
    with pytest.raises(DataError, match="shard_00001.bin: .* bytes, but"):
        TokenShards(shards)


def test_token_ids_beyond_the_vocabulary_are_refused(shards):
    manifest = json.loads((shards / "manifest.json").read_text())
    path = shards / "shard_00001.bin"
    tokens = np.fromfile(path, dtype=manifest["dtype"])
    tokens[len(tokens) // 2] = manifest["vocab_size"]  # one id just past the end, same file size
    tokens.tofile(path)
    with pytest.raises(DataError, match=f"shard_00001.bin: token id {manifest['vocab_size']:,} is outside the "
                                        f"vocabulary of {manifest['vocab_size']:,}"):
        TokenShards(shards)


def test_a_swapped_tokenizer_is_refused(shards, tmp_path):
    from llmkit.tokenizer import Tokenizer, read_text_files

    other = Tokenizer.train(read_text_files(sorted((SHAKESPEARE / "val").glob("*.txt"))[:1]), vocab_size=300)
    other.save(tmp_path / "other")
    shutil.copy(tmp_path / "other" / "tokenizer.json", shards / "tokenizer.json")
    with pytest.raises(DataError, match=r"tokenizer\.json: not the tokenizer the shards were made with"):
        TokenShards(shards)


@pytest.mark.parametrize("name", ["../outside.bin", "/etc/hostname", "sub/../../outside.bin", ""])
def test_a_manifest_may_not_point_outside_its_directory(shards, name):
    (shards.parent / "outside.bin").write_bytes((shards / "shard_00000.bin").read_bytes())

    def point_outside(manifest):
        manifest["shards"][0]["file"] = name

    edit_manifest(shards, point_outside)
    with pytest.raises(DataError, match="points outside .*; a manifest names files inside its own directory only"):
        TokenShards(shards)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(dtype="float64"), "'dtype' must be one of uint16, uint32"),
    (lambda m: m.update(vocab_size="512"), "'vocab_size' must be a positive integer"),
    (lambda m: m.update(bos_id=10**6), "'bos_id' must be a token id below vocab_size"),
    (lambda m: m.update(shards={"file": "shard_00000.bin"}), "'shards' must be a non-empty list"),
    (lambda m: m["shards"][0].update(tokens=-5), r"shards\[0\] must be an object with a 'file' name and a 'tokens'"),
    (lambda m: m["shards"][0].pop("file"), r"shards\[0\] must be an object"),
])
def test_a_malformed_manifest_is_named(shards, edit, message):
    edit_manifest(shards, edit)
    with pytest.raises(DataError, match=message):
        TokenShards(shards)


def test_a_manifest_that_is_not_an_object(shards):
    (shards / "manifest.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="manifest.json: is not a JSON object"):
        TokenShards(shards)


def test_pretrain_stops_with_one_line_before_building_anything(shards, tmp_path):
    path = shards / "shard_00000.bin"
    path.write_bytes(path.read_bytes()[:-2])
    result = cli_in_process("pretrain", "--out", tmp_path / "run", "model=tiny", f"data={shards}", "max_steps=1",
                            "seq_len=32", "plot=false")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "shard_00000.bin" in lines[0] and "llmkit data prepare" in lines[0]
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_special_token_text_in_documents_stays_text(tmp_path, shakespeare_tokenizer, monkeypatch):
    """`<|bos|>`, `<|end|>` (or a Hugging Face tokenizer's `<|endoftext|>`) written in a document are its
    characters, not control tokens: each document has one BOS, the one that starts it, short or long."""
    from tokenizers import AddedToken

    import llmkit.data.prepare as prepare_module
    from llmkit.tokenizer import Tokenizer

    shakespeare_tokenizer.save(tmp_path / "tok")
    tok = Tokenizer.load(tmp_path / "tok")
    tok.backend.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    tok.save(tmp_path / "tok")
    tok = Tokenizer.load(tmp_path / "tok")
    monkeypatch.setattr(prepare_module, "LONG_DOCUMENT", 300)  # the long-document path on a small file
    docs = ["hello <|bos|> x <|end|>", "a story<|endoftext|>another <|user|>one",
            "And then <|bos|> spoke, <|eos|> said the king. " * 40]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text(docs[0])
    (tmp_path / "in" / "b.jsonl").write_text(json.dumps({"text": docs[1]}) + "\n")
    (tmp_path / "in" / "c.txt").write_text(docs[2])
    prepare([tmp_path / "in"], tmp_path / "tok", tmp_path / "shards")
    tokens = np.fromfile(tmp_path / "shards" / "shard_00000.bin", dtype=json.loads(
        (tmp_path / "shards" / "manifest.json").read_text())["dtype"]).tolist()
    starts = np.load(tmp_path / "shards" / "shard_00000.docs.npy").tolist()
    specials = {tok.backend.token_to_id(t) for t in ("<|bos|>", "<|eos|>", "<|end|>", "<|user|>", "<|endoftext|>")}
    assert [i for i, t in enumerate(tokens) if t in specials] == starts == [0, starts[1], starts[2]]
    for doc, start, end in zip(docs, starts, starts[1:] + [len(tokens)]):
        assert tokens[start] == tok.bos_id and tok.decode(tokens[start + 1:end]) == doc
