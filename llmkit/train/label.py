"""RLAIF: preference pairs judged by a model instead of people (Bai et al. 2022, Constitutional AI;
Lee et al. 2023, "RLAIF").

For each prompt the policy samples two replies (through the one engine); the judge model is asked which
is better, and its answer is read as probabilities rather than sampled text: the judge's next-token
distribution after the question puts mass on "A" and "B" (Lee et al. 2023, section 2.1). Each pair is
judged in both orders and the two verdicts averaged, which cancels the judge's preference for a
position (Zheng et al. 2023 found strong position bias in LLM judges). Pairs the judge cannot separate
(identical replies, or a preference within `min_margin` of a coin flip) are skipped. The output is a
preference JSONL that `llmkit reward` and `llmkit dpo` read as it is. Each chunk of judged prompts is
kept beside it (`.OUT.resume.jsonl`) until the file is written: the same command resumes a run cut short.

Where every prompt has a reference answer (the built-in task, or any task checked by exact match), the
answer key is the judge (`--judge answers`, `label_by_answer`): the policy answers each prompt, and its
wrong answers become the rejected replies, the reference answer the chosen one. Preference data from
the policy's own mistakes ("on-policy") is what makes DPO and reward models work on the policy's actual
errors (Tajwar et al. 2024, "Preference Fine-Tuning of LLMs Should Leverage Suboptimal, On-Policy Data";
Pang et al. 2024, "Iterative Reasoning Preference Optimization").
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path

from llmkit.atomic import atomic_write_text
from llmkit.errors import DataError, GenerationError, OutputError
from llmkit.eval.remote import RemoteBackend, is_url
from llmkit.infer import SamplingParams
from llmkit.train.chat_data import load_records
from llmkit.train.post_common import reply_text

JUDGE_QUESTION = "Which response answers the request better? Be helpful, honest and harmless."
JUDGE_PROMPT = """{question}

Request:
{prompt}

Response A:
{a}

Response B:
{b}

Answer with a single letter, A or B."""


def render_prompt(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def letter_ids(tokenizer, letter: str) -> set[int]:
    """Token ids that decode to the letter (with or without a leading space)."""
    ids = set()
    for text in (letter, " " + letter):
        encoded = tokenizer.encode(text)
        if len(encoded) == 1:
            ids.add(encoded[0])
    if not ids:
        raise DataError(f"the judge's tokenizer has no single token for {letter!r}")
    return ids


def judge_conversation(prompt, a: str, b: str, question: str = JUDGE_QUESTION) -> list[dict]:
    """The judge's question about one pair, as a one-turn conversation; `question` is the criterion
    (Constitutional AI asks by a principle, Bai et al. 2022 section 4.1)."""
    return [{"role": "user", "content": JUDGE_PROMPT.format(question=question, prompt=render_prompt(prompt), a=a, b=b)}]


def judge_probabilities(judge, prompts: list, first: list[str], second: list[str],
                        questions: list[str] | None = None) -> list[float]:
    """P(the judge prefers `first`) for each (prompt, first, second), from its next-token probabilities
    of "A" and "B", renormalised over the two. judge: a loaded `llmkit.LLM` (all questions in one batch
    through its engine) or a `RemoteBackend` (an OpenAI-compatible server's top log-probabilities)."""
    questions = questions or [JUDGE_QUESTION] * len(prompts)
    conversations = [judge_conversation(*item) for item in zip(prompts, first, second, questions)]
    if isinstance(judge, RemoteBackend):
        return [remote_preference(text, top) for text, top in judge.first_tokens(conversations)]
    tok = judge.tokenizer
    a_ids, b_ids = letter_ids(tok, "A"), letter_ids(tok, "B")
    requests = [tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True)) for messages in conversations]
    params = SamplingParams(max_new_tokens=1, temperature=0, logprobs=20)
    out = []
    for completion in judge.engine.generate_batch(requests, params):
        if completion.finish_reason == "error":
            raise GenerationError(f"the judge failed on a question ({completion.error}); is the judge's context long "
                                  "enough for the request and both replies? Lower --max-new-tokens")
        top = completion.logprobs[0].top
        pa = sum(math.exp(lp) for t, lp in top if t in a_ids)
        pb = sum(math.exp(lp) for t, lp in top if t in b_ids)
        out.append(0.5 if pa + pb == 0 else pa / (pa + pb))
    return out


def remote_preference(text: str, top: dict[str, float]) -> float:
    """P("A") over {"A", "B"} from a server's first-token log-probabilities; a server that returns none
    is read by the letter it answered (1, 0, or 0.5 for neither)."""
    pa = sum(math.exp(lp) for t, lp in top.items() if t.strip() == "A")
    pb = sum(math.exp(lp) for t, lp in top.items() if t.strip() == "B")
    if pa + pb > 0:
        return pa / (pa + pb)
    letter = text.strip()[:1]
    return 1.0 if letter == "A" else 0.0 if letter == "B" else 0.5


def load_judge(judge, policy, policy_llm):
    """The judge of `--judge`: an OpenAI-compatible URL (a RemoteBackend), the policy itself (the same
    name as `policy`: `policy_llm` is reused), another checkpoint directory / named model, or an object
    already loaded."""
    import llmkit

    if not isinstance(judge, (str, Path)):
        return judge
    if is_url(str(judge)):  # the key as `llmkit judge` and `llmkit eval` send it: a server may require one
        return RemoteBackend(str(judge), chat=True, api_key=os.environ.get("OPENAI_API_KEY"))
    return policy_llm if str(judge) == str(policy) else llmkit.load(judge)


def sample_reply_pairs(llm, prompts: list, max_new_tokens: int, temperature: float,
                       seeds: list[int]) -> tuple[list[str], list[str]]:
    """Two sampled replies per prompt, all in one batch through the engine; seeds[2i], seeds[2i+1] are the
    two requests' seeds for prompt i."""
    from llmkit.train.chat_data import encode_prompt

    tok = llm.tokenizer
    ids = [encode_prompt(tok, p) for p in prompts for _ in range(2)]
    params = [SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=s) for s in seeds]
    completions = llm.engine.generate_batch(ids, params)
    for completion in completions:
        if completion.finish_reason == "error":
            raise GenerationError(f"sampling a reply failed ({completion.error}); is a prompt longer than the "
                                  "model's context?")
    replies = [reply_text(tok, c.token_ids) for c in completions]
    return replies[0::2], replies[1::2]


def label_preferences(judge, policy, input_path: str | Path, out: str | Path, records: list | None = None,
                      max_new_tokens: int = 64, temperature: float = 1.0, seed: int = 0,
                      min_margin: float = 0.05) -> dict:
    """Sample two replies per prompt with `policy`, let `judge` choose, write {prompt, chosen, rejected}.
    judge, policy: checkpoint directories / named models, or loaded `llmkit.LLM`s."""
    check_output(out, input_path, max_new_tokens, temperature, seed)
    import llmkit

    from llmkit.eval.judge import ReplyCache, cached_map, model_identity, model_settings

    prompts = [r.prompt for r in load_records(input_path, "prompt", records)]
    policy_llm = llmkit.load(policy) if isinstance(policy, (str, Path)) else policy
    judge_llm = load_judge(judge, policy, policy_llm)
    # Each prompt's two replies and verdicts are kept beside --out as they are done (chunks of prompts): the
    # same command after a Ctrl-C, a kill or a failing judge server resumes instead of starting over. A
    # prompt's seeds depend on its index alone, and its replies on nothing else in its batch (per-request
    # seeds), so a resumed file equals an uninterrupted one. Models passed loaded (Python callers) cannot be
    # told apart from others by name: their runs keep nothing, rather than risk reusing another model's work.
    named = all(isinstance(m, (str, Path)) for m in (policy, judge))
    cache = ReplyCache.beside(out) if named else None
    models = [model_identity(str(policy), model_settings(policy_llm)), model_identity(str(judge), model_settings(judge_llm))]
    keys = [ReplyCache.key("label", models, max_new_tokens, temperature, seed + 2 * i, prompt)
            for i, prompt in enumerate(prompts)]

    def judged(indices: list[int]) -> list:
        chunk = [prompts[i] for i in indices]
        a, b = sample_reply_pairs(policy_llm, chunk, max_new_tokens, temperature,
                                  [seed + 2 * i + k for i in indices for k in (0, 1)])
        forward = judge_probabilities(judge_llm, chunk, a, b)
        backward = judge_probabilities(judge_llm, chunk, b, a)
        return [list(v) for v in zip(a, b, forward, backward)]

    done = cached_map(cache, keys, judged)
    first, second, forward, backward = ([v[k] for v in done] for k in range(4)) if done else ([], [], [], [])
    rows, ties, consistent = [], 0, 0
    for prompt, a, b, p_ab, p_ba in zip(prompts, first, second, forward, backward):
        p = (p_ab + (1 - p_ba)) / 2  # P(a better than b), position bias averaged out
        consistent += (p_ab > 0.5) == (p_ba < 0.5)
        if a.strip() == b.strip() or abs(p - 0.5) < min_margin:
            ties += 1
            continue
        chosen, rejected = (a, b) if p > 0.5 else (b, a)
        if isinstance(prompt, list):
            chosen, rejected = [{"role": "assistant", "content": chosen}], [{"role": "assistant", "content": rejected}]
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "judge_probability": round(max(p, 1 - p), 4)})
    write_pairs(out, rows)
    if cache is not None:
        cache.remove()
    return {"pairs": len(rows), "ties": ties, "consistent": consistent / max(len(prompts), 1)}


def check_output(out: str | Path, input_path: str | Path, max_new_tokens: int = 1, temperature: float = 1.0,
                 seed: int = 0, samples: int = 0) -> None:
    """Checked before any labelling work: the pairs never replace the input they are made from, and the
    sampling values are ones the engine takes (a bad one is found before models are loaded)."""
    SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    if max_new_tokens < 1 or samples < 0:
        raise GenerationError(f"max_new_tokens must be >= 1 and samples >= 0, not {max_new_tokens} and {samples}")
    out = Path(out)
    if out.resolve() == Path(input_path).resolve():
        raise OutputError(f"{out}: is the --input file; write the pairs to another --out")
    if out.is_dir():
        raise OutputError(f"{out}: is a directory; --out names the JSONL file to write")


def write_pairs(out: str | Path, rows: list[dict]) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in rows))


def label_by_answer(policy, input_path: str | Path, out: str | Path, records: list | None = None,
                    samples: int = 0, max_new_tokens: int = 24, temperature: float = 1.0, seed: int = 0) -> dict:
    """On-policy pairs judged by the answer key. For each record with an "answer" field (and a prompt),
    the policy answers greedily (plus `samples` sampled answers); chosen = the reference answer, rejected =
    each distinct wrong answer (the greedy one first). Where every answer is right the record's own
    rejected reply is kept, so no prompt is lost. Other fields ("kind", "answer") are carried over.
    policy: a checkpoint directory / named model, or a loaded `llmkit.LLM`."""
    check_output(out, input_path, max_new_tokens, temperature, seed, samples)
    import llmkit
    from llmkit.data.assistant_task import is_correct, normalise_answer, require_answers
    from llmkit.train.post_common import generate

    items = load_records(input_path, "preference", records)
    require_answers(items, "labelling by the answer key", "or use a judge model: --judge MODEL")
    llm = llmkit.load(policy) if isinstance(policy, (str, Path)) else policy
    prompts = [r.prompt for r in items]
    # a prompt longer than the policy's context gets no answer: its record's own pair is kept, and counted
    greedy = generate(llm.model, llm.tokenizer, prompts, max_new_tokens, skip_too_long=True)
    answers = [[reply_text(llm.tokenizer, ids)] for ids in greedy]
    if samples:
        sampled = generate(llm.model, llm.tokenizer, [p for p in prompts for _ in range(samples)], max_new_tokens,
                           temperature=temperature, seed=seed, skip_too_long=True)
        for i, ids in enumerate(sampled):
            answers[i // samples].append(reply_text(llm.tokenizer, ids))
    rows, stats = [], Counter()
    for record, replies in zip(items, answers):
        answer = record.extra["answer"]
        stats["greedy_right"] += is_correct(replies[0], answer)
        wrong: dict[str, str] = {}
        for reply in replies:
            if reply.strip() and not is_correct(reply, answer):
                wrong.setdefault(normalise_answer(reply), reply)
        stats["on_policy"] += len(wrong)
        as_turn = (lambda text: [{"role": "assistant", "content": text}]) if isinstance(record.prompt, list) else str
        for rejected in list(wrong.values()) or [record.rejected]:
            rows.append({"prompt": record.prompt, "chosen": as_turn(answer),
                         "rejected": as_turn(rejected) if isinstance(rejected, str) else rejected, **record.extra})
    write_pairs(out, rows)
    return {"pairs": len(rows), "prompts": len(items), "greedy_accuracy": stats["greedy_right"] / max(len(items), 1),
            "on_policy": stats["on_policy"], "too_long": sum(not ids for ids in greedy)}
