"""A model as judge (an autorater), with MT-Bench's prompts (Zheng et al. 2023, "Judging LLM-as-a-Judge
with MT-Bench and Chatbot Arena").

    judge = Judge.load("smollm2")                  # or Judge.load("http://HOST:PORT/v1")
    grades = judge.grade(questions, answers)       # 1-10, parsed from "[[N]]"
    verdicts = judge.compare(questions, first, second)   # both orders; a verdict that flips is a tie

The judge is any backend that generates from chat messages: a local checkpoint through the one engine
(backends.LocalBackend, greedy) or an OpenAI-compatible server (remote.RemoteBackend, temperature 0).
Its reply is free text (an explanation, then the verdict); the verdict is read from the last
`[[N]]` (single grading) or from `[[A]]` / `[[B]]` / `[[C]]` (pairwise). A reply without one is
*unparsable*: kept, counted and reported, never a crash.

A small judge rarely writes a verdict at all (SmolLM2-135M wrote none in 12 of 12 MT-Bench pairs: it
continues the conversation). `verdict="probability"` reads the verdict from its next-token
distribution instead, as `llmkit label` does (Lee et al. 2023, "RLAIF", section 2.1): the reply is
started for it with "[[", and each possible mark ("A]]", "B]]", "C]]", or "1]]".."10]]") is scored as a
continuation; the verdict is the most likely mark, a grade the probability-weighted mean of 1..10
(G-Eval, Liu et al. 2023). This needs the judge's log-probabilities over its own chat template: a
local judge only.

Pairwise verdicts are asked in both orders, (X, Y) and (Y, X). LLM judges favour a position (Zheng et
al. 2023, section 3.3); a verdict that names the same answer in both orders stands, any other pair of
verdicts (one flips with the order, or one says tie) is a tie, MT-Bench's own rule. If either order is
unparsable the comparison is unparsable.

A judge given a ReplyCache keeps every finished chunk of replies on disk, so that `llmkit judge` (and
`llmkit answer`, `llmkit label`, `llmkit constitution`, which use the same cache) resume a run cut short.

Prompts: MT-Bench's judge_prompts.jsonl (single-v1, pair-v2 and their -math- variants with a
reference answer for maths, reasoning and coding, and the -multi-turn variants that grade the second
turn with the whole conversation shown).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import ConfigError, DataError, GenerationError, OutputError, text_lines
from llmkit.eval.jsonl import read_utf8

SCORE = re.compile(r"\[\[(\d+(?:\.\d+)?)\]\]")
VERDICT = re.compile(r"\[\[([ABC])\]\]")
# MT-Bench grades these categories against a reference answer (FastChat's NEED_REF_CATS)
REFERENCE_CATEGORIES = ("math", "reasoning", "coding")
DEFAULT_MAX_NEW_TOKENS = 512
VERDICT_PREFIX = "[["  # the judge's reply begins with this; its next tokens are the mark
VERDICT_MARKS = {"A": "A]]", "B": "B]]", "tie": "C]]"}
GRADE_MARKS = {n: f"{n}]]" for n in range(1, 11)}  # "1]]" and "10]]" differ after the first token
# judge replies are kept on disk (ReplyCache) after every CHUNK of them: an interrupted run loses at most one
# chunk. 64 is the local backend's own chunk, so continuous batching is not cut any finer than it was.
CHUNK = 64


def parse_score(text: str) -> float | None:
    """The rating in the last `[[N]]` of a judge's reply (N may be a decimal), or None when there is no
    such mark or N is outside 1-10."""
    found = SCORE.findall(text or "")
    if not found:
        return None
    value = float(found[-1])
    return value if 1 <= value <= 10 else None


def parse_verdict(text: str) -> str | None:
    """"A", "B" or "tie" from `[[A]]`, `[[B]]`, `[[C]]`; None when none appears or two different ones do
    (a judge that writes `[[A]]` and `[[B]]` has not decided)."""
    found = set(VERDICT.findall(text or ""))
    if len(found) != 1:
        return None
    return {"A": "A", "B": "B", "C": "tie"}[found.pop()]


def combine_orders(first_as_a: str | None, first_as_b: str | None) -> str | None:
    """The verdict on (X, Y) from the two orders: "first" (X), "second" (Y), "tie", or None when either
    order is unparsable. first_as_a: the verdict with X shown as A; first_as_b: with X shown as B."""
    if first_as_a is None or first_as_b is None:
        return None
    one = {"A": "first", "B": "second", "tie": "tie"}[first_as_a]
    other = {"A": "second", "B": "first", "tie": "tie"}[first_as_b]
    return one if one == other else "tie"


# --- prompts --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JudgePrompt:
    name: str
    kind: str  # "single" | "pairwise"
    system_prompt: str
    template: str

    def messages(self, **fields) -> list[dict]:
        # str.format ignores fields a template does not use; the answers are values, never formatted
        return [{"role": "system", "content": self.system_prompt},
                {"role": "user", "content": self.template.format(**fields)}]


def read_judge_prompts(path: str | Path) -> dict[str, JudgePrompt]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no judge prompts file (MT-Bench's judge_prompts.jsonl)")
    prompts = {}
    for number, line in enumerate(text_lines(read_utf8(path)), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompts[row["name"]] = JudgePrompt(row["name"], row["type"], row["system_prompt"], row["prompt_template"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"{path}:{number}: not a judge prompt ({e}); expected MT-Bench's "
                            '{"name", "type", "system_prompt", "prompt_template"}') from None
    for needed in ("single-v1", "pair-v2"):
        if needed not in prompts:
            raise DataError(f"{path}: no {needed!r} prompt; use MT-Bench's judge_prompts.jsonl")
    return prompts


def prompt_for(prompts: dict[str, JudgePrompt], kind: str, turn: int, reference: bool) -> JudgePrompt:
    """MT-Bench's prompt for a kind ("single"/"pair"), turn (1, 2) and whether a reference answer is shown."""
    name = f"{'single' if kind == 'single' else 'pair'}-{'math-v1' if reference else ('v1' if kind == 'single' else 'v2')}"
    name += "-multi-turn" if turn == 2 else ""
    if name not in prompts:
        raise DataError(f"the judge prompts have no {name!r}; use MT-Bench's judge_prompts.jsonl")
    return prompts[name]


def uses_reference(question: dict) -> bool:
    return question.get("category") in REFERENCE_CATEGORIES and bool(question.get("reference"))


def turn_fields(question: dict, turn: int) -> dict:
    """The question's and reference's placeholders for a turn (1 or 2)."""
    turns, reference = question["turns"], question.get("reference") or []
    fields = {"question": turns[turn - 1], "question_1": turns[0], "question_2": turns[1] if len(turns) > 1 else ""}
    for k in (1, 2):
        fields[f"ref_answer_{k}"] = reference[k - 1] if len(reference) >= k else ""
    return fields


def _no_probabilities_over_http(name: str) -> ConfigError:
    return ConfigError(f"--verdict probability scores the judge's next tokens under its own chat template, which a "
                       f"server's chat endpoint does not return; use a local judge (checkpoint or named model) or "
                       f"--verdict text with {name}")


# --- resuming -------------------------------------------------------------------------------------------
class ReplyCache:
    """The judge's finished replies (or mark probabilities), one JSON line each, appended and fsynced after
    every chunk: `llmkit judge` run again with the same --out asks the judge only what it has not answered
    (judging 400 pairs takes a 2-core CPU ~20 min; a Ctrl-C, a kill or a server that stops answering
    must not cost the finished ones). A reply is found by a hash of everything that decides it (the judge's
    model_identity, --max-new-tokens, the verdict mode and the full conversation), so changed settings,
    weights or answer files are asked again, never mixed in. A line cut short by a kill, or damaged (not
    UTF-8, not JSON), is ignored: its reply is asked again.

    A run holds an exclusive lock on the file while it lives (flock, released by the kernel however the
    process ends): a second run writing the same --out at the same time is refused in one line, instead of
    both appending to one file and each replacing the other's output. A file the run leaves empty (it
    stopped before its first chunk) is removed when the process exits."""

    def __init__(self, path: str | Path):
        self.path, self.entries, self.torn = Path(path), {}, False
        self._lock = _lock_exclusively(self.path)
        if self.path.is_file():
            data = self.path.read_bytes()
            self.torn = bool(data) and not data.endswith(b"\n")  # the next write starts a line of its own
            for raw in data.split(b"\n"):
                try:
                    row = json.loads(raw.decode("utf-8"))  # strict: a damaged byte is no reply to reuse
                    self.entries[row["key"]] = row["value"]
                except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
                    continue  # the torn last line of a killed run

    @staticmethod
    def key(*parts) -> str:
        return hashlib.sha256(json.dumps(parts, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()

    def add(self, items: Sequence[tuple[str, object]]) -> None:
        if not items:
            return
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("\n" * self.torn + "".join(json.dumps({"key": k, "value": v}, ensure_ascii=False) + "\n"
                                                    for k, v in items))
                self.torn = False
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:  # a full disk or a read-only folder: one line, not a traceback
            raise OutputError(f"{self.path}: cannot keep the finished replies there ({e.strerror or e}); free space "
                              "or choose another --out") from None
        self.entries.update(items)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self._lock.close()  # releases the lock

    @classmethod
    def beside(cls, out: str | Path) -> "ReplyCache":
        """The cache of a run writing `out` (a file or a folder written whole at the end): a hidden sibling
        `.NAME.resume.jsonl`, which the atomic writers' tidying of killed runs' leftovers does not touch."""
        out = Path(out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{out}: cannot write there ({e.strerror or e}); choose another --out") from None
        return cls(out.parent / f".{out.name}.resume.jsonl")


_LOCKED: dict[str, object] = {}  # resume files this process holds locked: resolved path -> open file


def _lock_exclusively(path: Path):
    """The resume file `path` opened (created if need be) and locked for this process, or an OutputError
    naming the run's output when another process holds it. Held per process, not per ReplyCache: a run cut
    short by an exception and run again in the same process (a Python caller, the tests) resumes."""
    import atexit
    import fcntl

    key = str(path.resolve())
    if key in _LOCKED and not _LOCKED[key].closed:
        return _LOCKED[key]
    try:
        handle = open(path, "ab")
    except OSError as e:
        raise OutputError(f"{path}: cannot keep the finished replies there ({e.strerror or e}); choose another "
                          "--out") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        output = path.with_name(path.name.removeprefix(".").removesuffix(".resume.jsonl"))
        raise OutputError(f"{output}: another llmkit run is writing it now (it holds {path}); wait for it to "
                          "finish, or choose another --out") from None

    def remove_if_empty() -> None:  # a run stopped before its first chunk leaves nothing to resume
        if not handle.closed:
            try:
                if os.fstat(handle.fileno()).st_size == 0 and path.exists() and path.stat().st_size == 0:
                    path.unlink()
            except OSError:
                pass
            handle.close()

    atexit.register(remove_if_empty)
    _LOCKED[key] = handle
    return handle


def cached_map(cache: "ReplyCache | None", keys: list[str], compute, on_done=None) -> list:
    """compute(indices) -> values for the keys not in `cache`, each key computed once (a conversation that
    comes twice is asked once: a resumed run then cuts the rest into the same chunks as an uninterrupted
    one, whose batches decide the last digits of log-probabilities), in chunks of CHUNK, each written to the
    cache as soon as it is done; the cached and repeated ones are reported to on_done."""
    values = {k: cache.entries[k] for k in keys if cache is not None and k in cache.entries}
    first = {}  # each key not in the cache -> the first index asking it
    for i, k in enumerate(keys):
        if k not in values:
            first.setdefault(k, i)
    if on_done is not None and len(keys) > len(first):
        on_done(len(keys) - len(first))
    todo = list(first.values())
    for start in range(0, len(todo), CHUNK):
        part = todo[start:start + CHUNK]
        results = compute(part)
        if cache is not None:
            cache.add([(keys[i], v) for i, v in zip(part, results)])
        values.update((keys[i], v) for i, v in zip(part, results))
    return [values[k] for k in keys]


def model_settings(model) -> dict:
    """A backend's settings(), or a loaded `llmkit.LLM`'s device and dtype: what model_identity records
    (nothing for another object: a Python caller's stand-in)."""
    if callable(getattr(model, "settings", None)):
        return model.settings()
    weights = getattr(getattr(getattr(model, "model", None), "tok_emb", None), "weight", None)
    if weights is None:
        return {}
    return {"device": str(weights.device), "dtype": str(weights.dtype).removeprefix("torch.")}


def model_identity(name: str, settings: dict) -> list:
    """What decides a model's replies besides the conversation, for ReplyCache keys: its name, a backend's
    settings (a server's URL and served model; a local model's dtype and device) and, for a checkpoint on
    disk, the size and time of each of its files (retrained weights or another chat template at the same
    path are not the model whose replies were kept)."""
    from llmkit.eval.remote import is_url

    stamp = []
    if not is_url(name):
        from llmkit.convert import resolve_model
        from llmkit.errors import LLMKitError

        try:
            directory = resolve_model(name)
            stamp = sorted([f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in directory.iterdir()
                           if f.is_file() and f.suffix in (".json", ".safetensors", ".jinja"))
        except (LLMKitError, OSError):
            stamp = []
    return [str(name), settings, stamp]


# --- the judge ------------------------------------------------------------------------------------------
@contextmanager
def _progress(what: str, total: int):
    """A progress bar with items/s on a terminal while the judge works (400 HH-RLHF pairs take ~20 min
    of a 2-core CPU); yields the callback that advances it."""
    from llmkit.eval.runner import Progress

    display = Progress()
    display.start(what, total)
    try:
        yield display.advance
    finally:
        display.close()


@dataclass
class Judgement:
    text: str  # the judge's reply
    finish_reason: str  # "length": the reply was cut at max_new_tokens (often before its verdict)
    truncated: int = 0  # prompt tokens cut from the left to fit the judge's context


class Judge:
    """A backend that generates from chat messages (LocalBackend(chat=True) or RemoteBackend(chat=True))."""

    def __init__(self, backend, name: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, verdict: str = "text",
                 cache: ReplyCache | None = None):
        if verdict not in ("text", "probability"):
            raise ValueError(f"verdict must be 'text' or 'probability', not {verdict!r}")
        if verdict == "probability" and getattr(backend, "scores_chat", True) is False:
            raise _no_probabilities_over_http(name)
        self.backend, self.name, self.max_new_tokens, self.verdict = backend, name, max_new_tokens, verdict
        self.cache = cache  # finished replies kept for a rerun (ReplyCache); None: nothing kept
        self.identity = model_identity(name, model_settings(backend))  # what the cached replies' keys name

    @classmethod
    def load(cls, model: str, *, device=None, dtype=None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
             api_key: str | None = None, verdict: str = "text") -> "Judge":
        """A checkpoint directory / named model (greedy, through its engine) or an OpenAI-compatible URL."""
        from llmkit.eval.remote import RemoteBackend, is_url

        if is_url(model):
            if verdict == "probability":  # before connecting: the answer does not depend on the server
                raise _no_probabilities_over_http(model)
            return cls(RemoteBackend(model, chat=True, api_key=api_key), model, max_new_tokens, verdict)
        import llmkit

        llm = llmkit.load(model, device=device, dtype=dtype)
        return cls.of(llm, str(model), max_new_tokens, verdict)

    @classmethod
    def of(cls, llm, name: str = "judge", max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
           verdict: str = "text") -> "Judge":
        """A loaded `llmkit.LLM` as judge (label.py holds one already)."""
        from llmkit.eval.backends import LocalBackend

        return cls(LocalBackend(llm.model, llm.tokenizer, engine=llm.engine, chat=True), name, max_new_tokens,
                   verdict)

    def mark_probabilities(self, conversations: Sequence[list[dict]],
                           marks: Sequence[str]) -> list[tuple[list[float], int]]:
        """For each conversation, (P(the judge's reply starts "[[" + mark) for each mark, renormalised over
        the marks; prompt tokens cut from the left to fit the context): the verdict read from the judge's
        log-probabilities rather than its text."""
        from llmkit.eval.prompts import ExampleRequests

        contexts = [self.backend.render_chat(list(c)) + VERDICT_PREFIX for c in conversations]
        keys = [ReplyCache.key(self.identity, "marks", list(marks), context) for context in contexts]

        def score(indices: list[int]) -> list:
            requests = [ExampleRequests(i, [contexts[i]] * len(marks), list(marks), None, [len(m) for m in marks])
                        for i in indices]
            scored = self.backend.loglikelihood(requests, where=lambda k: f"judge question {k // len(marks) + 1}",
                                                on_batch=advance)
            out = []
            for example in scored:
                logprobs = [option.logprob for option in example.scores]
                top = max(logprobs)
                if not math.isfinite(top):
                    raise GenerationError(f"the judge {self.name} gave no finite log-probability to any verdict "
                                          "mark; are its weights finite?")
                weights = [math.exp(lp - top) for lp in logprobs]
                out.append([[w / sum(weights) for w in weights], example.truncated])
            return out

        with _progress("judge: verdicts", len(contexts)) as advance:
            return [tuple(v) for v in cached_map(self.cache, keys, score, advance)]

    def ask(self, conversations: Sequence[list[dict]], on_done=None) -> list[Judgement]:
        """The judge's greedy replies to message lists."""
        if not conversations:
            return []
        keys = [ReplyCache.key(self.identity, "reply", self.max_new_tokens, list(c)) for c in conversations]
        with _progress("judge: replies", len(conversations)) as advance:
            def done(n: int) -> None:
                advance(n)
                if on_done is not None:
                    on_done(n)

            def reply(indices: list[int]) -> list:
                out = self.backend.generate([conversations[i] for i in indices], self.max_new_tokens, [],
                                            on_done=done)
                for g in out:
                    if g.finish_reason == "error":  # a failed judge is not an unreadable verdict: say so, stop
                        raise GenerationError(f"the judge {self.name} failed to answer: {g.error}")
                return [[g.text, g.finish_reason, g.truncated] for g in out]

            replies = cached_map(self.cache, keys, reply, done)
        return [Judgement(*r) for r in replies]

    def grade(self, prompts: dict[str, JudgePrompt], items: Sequence[dict]) -> list[dict]:
        """Single-answer grades. items: {"question": MT-Bench question, "answers": [turn 1, turn 2], "turn"}."""
        conversations = []
        for item in items:
            q, turn = item["question"], item["turn"]
            prompt = prompt_for(prompts, "single", turn, uses_reference(q))
            answers = item["answers"]
            conversations.append(prompt.messages(**turn_fields(q, turn), answer=answers[turn - 1],
                                                 answer_1=answers[0], answer_2=answers[1] if len(answers) > 1 else ""))
        if self.verdict == "probability":
            out = []
            marks = self.mark_probabilities(conversations, list(GRADE_MARKS.values()))
            for c, (probs, truncated) in zip(conversations, marks):
                distribution = dict(zip(GRADE_MARKS, probs))
                out.append({"prompt": c[-1]["content"], "judgement": None, "finish_reason": "probability",
                            "truncated": truncated, "score": sum(n * p for n, p in distribution.items()),
                            "grade_probabilities": {str(n): round(p, 5) for n, p in distribution.items()}})
            return out
        replies = self.ask(conversations)
        return [{"prompt": c[-1]["content"], "judgement": r.text, "finish_reason": r.finish_reason,
                 "truncated": r.truncated, "score": parse_score(r.text)} for c, r in zip(conversations, replies)]

    def compare(self, prompts: dict[str, JudgePrompt], items: Sequence[dict]) -> list[dict]:
        """Pairwise verdicts, both orders. items: {"question", "turn", "first": [a1, a2], "second": [a1, a2]}."""
        conversations = []
        for item in items:
            q, turn = item["question"], item["turn"]
            prompt = prompt_for(prompts, "pair", turn, uses_reference(q))
            for a, b in ((item["first"], item["second"]), (item["second"], item["first"])):
                conversations.append(prompt.messages(
                    **turn_fields(q, turn), answer_a=a[turn - 1], answer_b=b[turn - 1],
                    answer_a_1=a[0], answer_a_2=a[1] if len(a) > 1 else "",
                    answer_b_1=b[0], answer_b_2=b[1] if len(b) > 1 else ""))
        if self.verdict == "probability":
            return self._compare_by_probability(conversations)
        replies = self.ask(conversations)
        out = []
        for k in range(len(items)):
            forward, backward = replies[2 * k], replies[2 * k + 1]
            v1, v2 = parse_verdict(forward.text), parse_verdict(backward.text)
            out.append({"verdict_first_as_a": v1, "verdict_first_as_b": v2, "winner": combine_orders(v1, v2),
                        "judgement_first_as_a": forward.text, "judgement_first_as_b": backward.text,
                        "finish_reasons": [forward.finish_reason, backward.finish_reason],
                        "truncated": max(forward.truncated, backward.truncated)})
        return out

    def _compare_by_probability(self, conversations: list[list[dict]]) -> list[dict]:
        """compare()'s records from mark probabilities: each order's verdict is its most likely mark, and
        `p_first` is P(the first answer wins) averaged over the two orders, ties counted half (the order
        average that `llmkit label` trains on; the MT-Bench rule for `winner` is kept)."""
        probs = self.mark_probabilities(conversations, list(VERDICT_MARKS.values()))
        out = []
        for k in range(len(conversations) // 2):
            forward = dict(zip(VERDICT_MARKS, probs[2 * k][0]))
            backward = dict(zip(VERDICT_MARKS, probs[2 * k + 1][0]))
            v1, v2 = max(forward, key=forward.get), max(backward, key=backward.get)
            p_first = (forward["A"] + backward["B"] + (forward["tie"] + backward["tie"]) / 2) / 2
            out.append({"verdict_first_as_a": v1, "verdict_first_as_b": v2, "winner": combine_orders(v1, v2),
                        "judgement_first_as_a": None, "judgement_first_as_b": None,
                        "finish_reasons": ["probability", "probability"],
                        "truncated": max(probs[2 * k][1], probs[2 * k + 1][1]),
                        "p_first": round(p_first, 5),
                        "probabilities_first_as_a": {m: round(p, 5) for m, p in forward.items()},
                        "probabilities_first_as_b": {m: round(p, 5) for m, p in backward.items()}})
        return out

    def compare_replies(self, prompts: dict[str, JudgePrompt], questions: Sequence[str], first: Sequence[str],
                        second: Sequence[str]) -> list[dict]:
        """Pairwise verdicts on single replies to plain-text questions (RLAIF labelling, preference
        pairs): compare() with one-turn questions; each result's "winner" is "first", "second", "tie"
        or None (unparsable)."""
        items = [{"question": {"turns": [q], "category": "general"}, "turn": 1, "first": [a], "second": [b]}
                 for q, a, b in zip(questions, first, second, strict=True)]
        return self.compare(prompts, items)

