"""Answers from retrieved passages, with citations: retrieve, number the passages, ask through the chat
template, generate through the one engine (`LLM.chat_stream`), and name the sources the answer cites.

The prompt follows the usual retrieval-augmented layout (Lewis et al. 2020 put retrieved passages
before the question; the numbered-citation instruction is the one of Gao et al. 2023, "Enabling Large
Language Models to Generate Text with Citations", ALCE): a system turn with the instruction, a user
turn with "[1] (source) text ... Question: ...". Passages that do not fit the model's context
beside the reply are dropped from the lowest-ranked up.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from llmkit.errors import GenerationError
from llmkit.rag.index import Hit, RagIndex

SYSTEM_PROMPT = ("Answer the question using the numbered passages. Cite the passages you use by their numbers in "
                 "square brackets, like [1]. If the passages do not hold the answer, say so.")
CITATION = re.compile(r"\[(\d+)\]")


@dataclass
class RagAnswer:
    question: str
    text: str = ""
    passages: list[Hit] = field(default_factory=list)  # as numbered in the prompt: passages[i] is [i + 1]

    @property
    def cited(self) -> list[int]:
        """The passage numbers the answer cites, in order of first citation (numbers it was shown only)."""
        numbers = dict.fromkeys(int(n) for n in CITATION.findall(self.text))
        return [n for n in numbers if 1 <= n <= len(self.passages)]

    def sources(self) -> list[str]:
        """`[2] hamlet_gut.txt, line 1734` for each cited passage (each passage shown, if none is cited)."""
        numbers = self.cited or range(1, len(self.passages) + 1)
        return [f"[{n}] {self.passages[n - 1].chunk.citation()}" for n in numbers]


def rag_messages(question: str, passages: list[Hit], system: str = SYSTEM_PROMPT) -> list[dict]:
    shown = "\n\n".join(f"[{i}] ({hit.chunk.citation()})\n{hit.chunk.text.strip()}" for i, hit in enumerate(passages, 1))
    user = f"Passages:\n\n{shown}\n\nQuestion: {question}" if passages else f"Question: {question}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def fitting_messages(llm, question: str, hits: list[Hit], max_new_tokens: int) -> tuple[list[dict], list[Hit]]:
    """The prompt with as many of the best passages as fit the context beside max_new_tokens."""
    context = llm.model.text_context
    for keep in range(len(hits), -1, -1):
        messages = rag_messages(question, hits[:keep])
        if len(llm.tokenizer.encode_chat(messages)) + max(max_new_tokens, 1) <= context:
            return messages, hits[:keep]
    raise GenerationError(f"the question alone does not fit the model's context of {context} tokens beside "
                          f"{max_new_tokens} new tokens; shorten it or lower --max-new-tokens")


def stream_answer(llm, index: RagIndex, question: str, k: int = 5, mode: str | None = None, embedder=None,
                  answer: RagAnswer | None = None, **sampling) -> Iterator[str]:
    """Yield the answer's text as it is generated; `answer` (a RagAnswer) receives the passages and text."""
    if not question.strip():
        raise GenerationError("the question is empty; ask something")
    answer = answer if answer is not None else RagAnswer(question)
    hits = index.search(question, k, mode, embedder)
    messages, answer.passages = fitting_messages(llm, question, hits, sampling.get("max_new_tokens") or 128)
    for piece in llm.chat_stream(messages, **sampling):
        answer.text += piece
        yield piece


def answer_question(llm, index: RagIndex, question: str, k: int = 5, mode: str | None = None, embedder=None,
                    **sampling) -> RagAnswer:
    answer = RagAnswer(question)
    for _ in stream_answer(llm, index, question, k, mode, embedder, answer, **sampling):
        pass
    return answer
