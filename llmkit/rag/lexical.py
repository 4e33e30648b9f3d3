"""Lexical retrieval: BM25 (Robertson & Zaragoza 2009, "The Probabilistic Relevance Framework: BM25 and
Beyond") through the `bm25s` library (Lù 2024), which precomputes every (document, term) score into a
sparse matrix, so a query is a sum of a few columns.

Saved and loaded with bm25s's own format: the sparse matrix as three `.npy` arrays written and read
with `allow_pickle=False` (read memory-mapped), the vocabulary and parameters as JSON; nothing is
pickled. BM25 scores depend on the whole collection (IDF, mean length), so adding documents re-scores
the matrix from the stored chunk texts: seconds for the complete works, against minutes for their
dense vectors, which adding never recomputes.

Tokens: lower-cased words of two or more letters/digits (bm25s's default pattern). No stop-word list
by default: the questions quote lines ("To be, or not to be") made of nothing else, and IDF already
weighs common words down.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmkit.errors import LLMKitError


class MissingRagExtraError(LLMKitError):
    """bm25s (the `rag` extra) is not installed."""


def _bm25s():
    try:
        import bm25s
    except ImportError:
        raise MissingRagExtraError("lexical retrieval needs the `rag` extra: pip install 'llmkit[rag]' "
                                   "(missing: bm25s)") from None
    return bm25s


class BM25Index:
    """BM25 over a list of texts; `search` returns (row, score) best first, rows with a matching term only."""

    def __init__(self, retriever, stopwords: str | None = None, folder: Path | None = None):
        self.retriever = retriever
        self.stopwords = stopwords
        self.folder = folder  # where it was loaded from, for errors

    @classmethod
    def build(cls, texts: list[str], k1: float = 1.5, b: float = 0.75, stopwords: str | None = None) -> "BM25Index":
        bm25s = _bm25s()
        tokens = bm25s.tokenize(texts, stopwords=stopwords, show_progress=False)
        retriever = bm25s.BM25(k1=k1, b=b)
        retriever.index(tokens, show_progress=False)
        return cls(retriever, stopwords)

    def save(self, folder: Path) -> None:
        self.retriever.save(str(folder), allow_pickle=False)

    @classmethod
    def load(cls, folder: Path, stopwords: str | None = None, num_docs: int | None = None) -> "BM25Index":
        """bm25s's saved index, checked to be whole and consistent (each failure one line naming the file:
        bm25s itself would fail deep inside a search, or silently score nothing). num_docs: the chunks the
        index should score."""
        bm25s = _bm25s()
        if not (folder / "params.index.json").is_file():
            raise LLMKitError(f"{folder}: the BM25 part of the index is missing; rebuild it with llmkit rag index")
        try:
            retriever = bm25s.BM25.load(str(folder), mmap=True, allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - any failure of a damaged file: JSON, .npy headers, parameters
            raise LLMKitError(f"{folder}: damaged ({type(e).__name__}: {str(e)[:200]}); "
                              "rebuild the index with llmkit rag index") from None
        problem = scores_problem(retriever, num_docs)
        if problem is not None:
            where, what = problem
            raise LLMKitError(f"{folder / where}: damaged ({what}); rebuild the index with llmkit rag index")
        return cls(retriever, stopwords, folder)

    @property
    def size(self) -> int:
        return int(self.retriever.scores["num_docs"])

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        words = _bm25s().tokenize([query], stopwords=self.stopwords, return_ids=False, show_progress=False)[0]
        ids = [self.retriever.vocab_dict[w] for w in words if w in self.retriever.vocab_dict]
        if not ids or k < 1:
            return []
        self._check_rows(ids)
        scores = np.asarray(self.retriever.get_scores_from_ids(ids), dtype=np.float32)
        return top_k(scores, k, positive_only=True)


    def _check_rows(self, terms: list[int]) -> None:
        """The rows the query's terms score lie inside the index (a damaged indices file would raise deep
        in numpy, or wrap around to other chunks): read here, as the scoring reads them anyway."""
        scores = self.retriever.scores
        indices, indptr, docs = scores["indices"], scores["indptr"], scores["num_docs"]
        for term in terms:
            rows = indices[indptr[term]:indptr[term + 1]]
            if len(rows) and (rows.min() < 0 or rows.max() >= docs):
                where = self.folder / "indices.csc.index.npy" if self.folder else "the BM25 index"
                raise LLMKitError(f"{where}: damaged (rows outside 0..{docs - 1}); rebuild the index with "
                                  "llmkit rag index")


def scores_problem(retriever, num_docs: int | None = None) -> tuple[str, str] | None:
    """(file, what is wrong) with a loaded bm25s index, or None: the vocabulary maps words to the matrix's
    term columns, the CSC arrays (one column per term) are consistent, the scores are floats."""
    scores, vocab = retriever.scores, retriever.vocab_dict
    data, indices, indptr, docs = scores["data"], scores["indices"], scores["indptr"], scores["num_docs"]
    if isinstance(docs, bool) or not isinstance(docs, int) or docs < 0 or (num_docs is not None and docs != num_docs):
        return "params.index.json", f"num_docs {docs!r:.40} is not the index's {num_docs} chunks"
    for name, array, kind in (("data", data, "f"), ("indices", indices, "iu"), ("indptr", indptr, "iu")):
        if not isinstance(array, np.ndarray) or array.ndim != 1 or array.dtype.kind not in kind:
            return f"{name}.csc.index.npy", (f"holds {getattr(array, 'dtype', type(array).__name__)} "
                                             f"{getattr(array, 'shape', '')}, expected a 1-D "
                                             f"{'float' if kind == 'f' else 'integer'} array")
    terms = len(indptr) - 1
    if terms < 0 or indptr[0] != 0 or indptr[-1] != len(data) or len(indices) != len(data) \
            or (terms and np.any(np.diff(indptr) < 0)):
        return "indptr.csc.index.npy", (f"{len(indptr)} column offsets do not fit {len(data)} scores and "
                                        f"{len(indices)} rows")
    # the rows of each term (indices) are checked by `search` for the terms it reads: a full scan here
    # would read all of a memory-mapped index on every load
    # bm25s maps "" (the empty word, which no query holds) to a number past the matrix's columns
    if not isinstance(vocab, dict) or not all(isinstance(word, str) and isinstance(term, int)
                                              and not isinstance(term, bool) and 0 <= term <= terms
                                              and (term < terms or word == "") for word, term in vocab.items()):
        return "vocab.index.json", f"not a map of words to term numbers below {terms}"
    return None


def top_k(scores: np.ndarray, k: int, positive_only: bool = False) -> list[tuple[int, float]]:
    """The k best (row, score) pairs, best first, ties by row (deterministic); positive_only: only rows
    scoring above 0 (BM25: rows that share a term with the query)."""
    k = min(k, len(scores))
    if k <= 0:
        return []
    best = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    ranked = sorted(best.tolist(), key=lambda i: (-float(scores[i]), i))
    return [(i, float(scores[i])) for i in ranked if scores[i] > 0 or not positive_only]
