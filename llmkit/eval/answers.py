"""MT-Bench answers: `llmkit answer --model M --questions mt_bench --out A.jsonl`.

Each question has two user turns; the model answers the first, then the second with the first exchange
as context, every prompt rendered by the checkpoint's chat template (MT-Bench measures chat models).
All questions' first turns go through the one engine together (continuous batching), then all second
turns. Greedy by default; with --temperature > 0 each reply is sampled with its own seed derived from
--seed, the question id and the turn, so a file is reproducible whatever else was batched with it
(the engine's per-request seeds).

The answer file holds one JSON object a line, with the question so that a judge needs nothing else:
{"question_id", "category", "turns": [q1, q2], "reference": [...] (if any), "model", "answers": [a1, a2]}.
It is written atomically: complete or not at all.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from llmkit.atomic import atomic_write_text
from llmkit.errors import DataError, GenerationError
from llmkit.eval.jsonl import json_lines, read_utf8
from llmkit.eval.locations import SHARED_ROOT, cache_root, search_roots

MT_BENCH = "mt_bench"


def mt_bench_dir(task_dir: str | Path | None = None) -> Path:
    roots = search_roots(task_dir, SHARED_ROOT, cache_root())
    for root in roots:
        if (root / MT_BENCH / "question.jsonl").is_file():
            return root / MT_BENCH
    raise DataError(f"mt_bench: no mt_bench/question.jsonl under {', '.join(str(r) for r in roots)}; pass "
                    "--task-dir DIR (holding mt_bench/) or --questions FILE.jsonl")


def questions_path(questions: str, task_dir: str | Path | None = None) -> Path:
    return mt_bench_dir(task_dir) / "question.jsonl" if questions == MT_BENCH else Path(questions)


def read_questions(path: str | Path) -> list[dict]:
    """MT-Bench questions: {"question_id", "category", "turns": [str, ...], "reference"?: [str, ...]}."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such questions file; give --questions mt_bench or a JSONL of "
                        '{"question_id", "turns": [...]}')
    return [q for _, q in _numbered_questions(path)]


def _numbered_questions(path: Path) -> list[tuple[int, dict]]:
    """(line number, question) for each record of a questions or answers file, each field checked."""
    out, seen = [], {}
    for number, q in json_lines(path, read_utf8(path)):
        turns = q.get("turns") if isinstance(q, dict) else None
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise DataError(f'{path}:{number}: expected {{"question_id", "turns": [strings]}}')
        q.setdefault("question_id", number)
        q.setdefault("category", "general")
        qid = q["question_id"]
        if not isinstance(qid, (int, str)) or isinstance(qid, bool):
            raise DataError(f"{path}:{number}: question_id must be a number or a string, not {qid!r}")
        if qid in seen:  # a judge would grade one of the two twice and the other never
            raise DataError(f"{path}:{number}: question_id {qid!r} again (first at line {seen[qid]}); "
                            "give each question its own id")
        # the judge formats these into its prompts: a number or a list there was a TypeError mid-run
        if not isinstance(q["category"], str):
            raise DataError(f"{path}:{number}: field 'category' must be a string, not {json.dumps(q['category'])[:60]}")
        reference = q.get("reference")
        if reference is not None and not (isinstance(reference, list) and all(isinstance(r, str) for r in reference)):
            raise DataError(f"{path}:{number}: field 'reference' must be a list of strings (one reference answer a "
                            f"turn), not {json.dumps(reference)[:60]}")
        seen[qid] = number
        out.append((number, q))
    if not out:
        raise DataError(f"{path}: no questions (the file is empty)")
    return out


def request_seed_of(seed: int, question_id, turn: int) -> int:
    # a stable hash (Python's hash() of a string changes from process to process)
    return int(hashlib.sha256(f"{seed}/{question_id}/{turn}".encode()).hexdigest()[:8], 16)


def generate_answers(llm, questions: list[dict], *, max_new_tokens: int = 512, temperature: float = 0.0,
                     seed: int = 0, model_name: str = "model", cache=None, identity=None) -> list[dict]:
    """Every turn of every question answered through the engine, turn by turn across all questions.
    cache: a judge.ReplyCache that keeps each reply as its chunk finishes, so that an interrupted run
    (MT-Bench's 160 replies take a 2-core CPU hours) resumes; a reply is found by `identity` (the model),
    the sampling settings and the whole conversation so far, so nothing else's reply is reused."""
    from llmkit.eval.judge import ReplyCache, cached_map
    from llmkit.infer import SamplingParams

    tokenizer, engine = llm.tokenizer, llm.engine
    context = llm.model.text_context
    keep = max(context - max_new_tokens, context // 2)  # prompt tokens kept (the oldest cut first)
    stops = set(engine.stop_token_ids)
    histories = [[] for _ in questions]
    answers = [[] for _ in questions]
    for turn in range(max(len(q["turns"]) for q in questions)):
        active = [i for i, q in enumerate(questions) if turn < len(q["turns"])]
        prompts, params, keys = [], [], []
        for i in active:
            histories[i].append({"role": "user", "content": questions[i]["turns"][turn]})
            ids = tokenizer.encode_chat(histories[i], add_generation_prompt=True)
            prompts.append(ids[max(0, len(ids) - keep):])
            request_seed = None if temperature == 0 else request_seed_of(seed, questions[i]["question_id"], turn)
            params.append(SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=request_seed))
            keys.append(ReplyCache.key("answer", identity, max_new_tokens, temperature, request_seed, histories[i]))

        def reply(indices: list[int]) -> list[str]:
            texts = []
            for k, completion in zip(indices, engine.generate_batch([prompts[k] for k in indices],
                                                                    [params[k] for k in indices])):
                if completion.finish_reason == "error":  # never written down as an (empty) answer to be judged
                    raise GenerationError(f"question {questions[active[k]]['question_id']}, turn {turn + 1}: "
                                          f"generation failed ({completion.error})")
                tokens = completion.token_ids
                if tokens and tokens[-1] in stops:
                    tokens = tokens[:-1]
                texts.append(tokenizer.decode_reply(tokens).strip())  # as the server's
            return texts

        for i, text in zip(active, cached_map(cache, keys, reply)):
            histories[i].append({"role": "assistant", "content": text})
            answers[i].append(text)
    return [{"question_id": q["question_id"], "category": q["category"], "turns": q["turns"],
             **({"reference": q["reference"]} if q.get("reference") else {}), "model": model_name, "answers": a}
            for q, a in zip(questions, answers)]


def write_answers(path: str | Path, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_answers(path: str | Path) -> list[dict]:
    """An answer file written by `llmkit answer` (or any JSONL of the same shape): one model's answers to
    one or two turns a question (MT-Bench's judge prompts grade the first turn, or the second with the first
    shown)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such answers file; write one with `llmkit answer --model M --out {path}`")
    records, model = [], None
    for number, r in _numbered_questions(path):
        answers = r.get("answers")
        if not isinstance(answers, list) or len(answers) != len(r["turns"]) or not all(isinstance(a, str) for a in answers):
            raise DataError(f"{path}:{number}: expected \"answers\": one string per turn "
                            "(a file written by `llmkit answer`)")
        if len(r["turns"]) > 2:  # a third turn was graded with the one-turn prompt, its context unseen
            raise DataError(f"{path}:{number}: {len(r['turns'])} turns; MT-Bench's judge prompts grade one or two "
                            "turns: keep the first two turns of each question")
        r.setdefault("model", path.stem)
        # the judge names a file's model by its first record: a second name was silently rated as the first
        if not isinstance(r["model"], str) or not r["model"]:
            raise DataError(f"{path}:{number}: field 'model' must be a non-empty string, not {json.dumps(r['model'])}")
        if model is not None and r["model"] != model:
            raise DataError(f"{path}:{number}: model {r['model']!r}, but the file's first record is {model!r}; "
                            "an answers file holds one model's answers (one `llmkit answer` run)")
        model = r["model"]
        records.append(r)
    return records
