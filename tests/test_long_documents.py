"""Long documents are read and tokenized in bounded pieces, with exactly the ids of the whole text.

`data prepare` and `tokenizer train` read a text file a block at a time, cut it at whitespace, and
`Tokenizer.encode_long` encodes the pieces; every cut is checked, so the result must equal `encode` of the
whole text for any tokenizer: byte-level BPE (ours, GPT-2/4, Llama 3) and SentencePiece-style ones that
mark the start of a text with a space symbol (Metaspace; Llama 2's normalizer)."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from conftest import SHAKESPEARE
from llmkit.data.prepare import LONG_DOCUMENT, prepare
from llmkit.errors import DataError
from llmkit.tokenizer import Tokenizer, read_text_pieces, text_pieces

PLAY = (SHAKESPEARE / "val" / "macbeth_gut.txt").read_text()


def sentencepiece_style(kind: str) -> Tokenizer:
    """A small BPE trained on a play, with a SentencePiece-style space marker: Metaspace pre-tokenization
    ("first": only the text's first word gets the marker; "always": every text starts with one), or
    Llama 2's normalizer (prepend the marker, spaces become markers; no pre-tokenizer)."""
    backend = BackendTokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    if kind == "llama2":
        backend.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
        backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                             decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    else:
        backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=kind)
        backend.decoder = decoders.Metaspace(prepend_scheme=kind)
    alphabet = [f"<0x{b:02X}>" for b in range(256)]
    backend.train_from_iterator([PLAY[:40000]], trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", *alphabet]))
    return Tokenizer(backend, bos_token="<s>")


@pytest.fixture(scope="module")
def tokenizers_under_test(shakespeare_tokenizer):
    return {"byte-level": shakespeare_tokenizer, **{k: sentencepiece_style(k) for k in ("first", "always", "llama2")}}


TEXT = st.lists(st.one_of(st.sampled_from(["the", "king", "  ", " ", "\n", "\n\n", "\t", "327", "é", "日本", "?!",
                                           " \n", "'s", "\u2581"]),
                          st.text(max_size=6)), max_size=60).map("".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT, chunk=st.integers(2, 12), window=st.integers(1, 16))
@example(text="king king", chunk=2, window=1)  # found by hypothesis: a Llama 2 token spanning the cut
def test_pieces_encode_to_the_ids_of_the_whole_text(tokenizers_under_test, text, chunk, window):
    pieces = list(text_pieces(text, chunk))
    assert "".join(pieces) == text
    for name, tok in tokenizers_under_test.items():
        ids = [i for part in tok.encode_long(iter(pieces), add_bos=True, window=window) for i in part]
        assert ids == tok.encode(text, add_bos=True), name


def test_a_play_in_small_pieces_equals_the_whole_for_every_kind_of_tokenizer(tokenizers_under_test):
    for text in (PLAY, PLAY.replace("\n", " ")):  # lines, and one long line
        pieces = list(text_pieces(text, 500))
        assert len(pieces) > 50 and "".join(pieces) == text
        for name, tok in tokenizers_under_test.items():
            assert [i for p in tok.encode_long(pieces) for i in p] == tok.encode(text), name


def test_files_are_read_in_blocks_with_universal_newlines_and_exact_error_offsets(tmp_path):
    text = "é日本 words\r\n" * 3000 + "last\r"
    path = tmp_path / "crlf.txt"
    path.write_bytes(text.encode("utf-8"))
    for chunk in (7, 64, 4096):  # CRLFs and multi-byte characters straddle the blocks
        pieces = list(read_text_pieces(path, chunk))
        assert "".join(pieces) == text.replace("\r\n", "\n").replace("\r", "\n")
        assert max(map(len, pieces)) <= 4 * chunk + 16
    data = "ok\n".encode() * 5000 + b"\xff" + b"more\n"
    path.write_bytes(data)
    with pytest.raises(DataError, match="crlf.txt: byte 15000: the file is not UTF-8"):
        list(read_text_pieces(path, 64, DataError))


def test_prepare_a_long_document_gives_the_same_shard_as_whole_text_tokenization(tmp_path, shakespeare_tokenizer):
    shakespeare_tokenizer.save(tmp_path / "tok")
    long_text = (PLAY * 3).replace("\n", " ")  # ~300k characters on one line: above LONG_DOCUMENT
    assert len(long_text) > LONG_DOCUMENT
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a_long.txt").write_text(long_text)
    (tmp_path / "in" / "b_records.jsonl").write_text(json.dumps({"text": long_text[:LONG_DOCUMENT + 5000]}) + "\n"
                                                    + json.dumps({"text": "short one"}) + "\n")
    stats = prepare([tmp_path / "in"], tmp_path / "tok", tmp_path / "out")
    expected = [shakespeare_tokenizer.encode(t, add_bos=True)
                for t in (long_text, long_text[:LONG_DOCUMENT + 5000], "short one")]
    tokens = np.fromfile(tmp_path / "out" / "shard_00000.bin", dtype=np.uint16).tolist()
    assert tokens == [i for ids in expected for i in ids]
    starts = np.load(tmp_path / "out" / "shard_00000.docs.npy").tolist()
    assert starts == [0, len(expected[0]), len(expected[0]) + len(expected[1])]
    assert stats.bytes == len(long_text.encode()) + LONG_DOCUMENT + 5000 + len("short one")

