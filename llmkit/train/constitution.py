"""Constitutional AI: a model's answers critiqued and revised by written principles, and preferences
from AI feedback (Bai et al. 2022, "Constitutional AI: Harmlessness from AI Feedback").

Supervised stage (SL-CAI, section 3): the model answers each prompt; then, for each of `rounds` rounds,
it is asked in the same conversation to critique its answer against a principle drawn for that prompt
and round, and then to rewrite the answer; the rewrite is the answer the next round critiques. Every step
runs for all prompts at once: one batch through the one engine for the answers, one for the critiques of
a round, one for its revisions. The final revisions become SFT data ({"prompt": conversation,
"completion": [the revision]}, which `llmkit sft` reads; the loss covers the revision only, not the
earlier turns of a multi-turn prompt, which in HH-RLHF are another model's replies), and every step is
kept in critiques.jsonl for inspection.

RL stage (RL-CAI, section 4): the policy samples two answers per prompt; a judge (the model itself,
another local model, or an OpenAI-compatible server) is asked which better follows a principle drawn
for the prompt, in both orders (train/label.py's judge: its probabilities of "A" and "B"). Two rules
decide which pairs are kept (the answers must differ under both):
- "both-orders" (the default): the same answer is preferred (probability > 0.5) whichever position it
  is shown in; that answer is "chosen". Disagreeing orders are the judge's position bias or
  indifference, not a preference, and are dropped and counted.
- "averaged": the judge's probability that an answer is better, averaged over its two positions (which
  cancels a bias toward one position), beyond 0.5 by more than `margin`. The paper uses the judge's
  normalised probabilities as soft labels (section 4.1); averaging the orders is the position debiasing
  of Zheng et al. 2023 (MT-Bench, section 3.4). A small judge that always prefers the answer shown first
  keeps nothing under "both-orders"; under "averaged" what is left of its preference decides.
The pairs are {prompt, chosen, rejected} for `llmkit dpo` (or `llmkit reward`).

Each principle, and each sampling seed, is drawn from a hash of (seed, step, prompt) (principles.py),
so a run is reproducible, and a prompt's output does not depend on the other prompts in the batch. That
is also what lets a run resume: prompts go in chunks, each chunk's results kept beside --out
(`.OUT.resume.jsonl`) until the run's folder is written, and the same command skips the kept prompts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from llmkit.atomic import staged_directory
from llmkit.errors import DataError, GenerationError
from llmkit.infer import SamplingParams
from llmkit.train.chat_data import encode_prompt, load_records
from llmkit.train.constitution_report import (label_report, label_summary, revision_report, revision_summary,
                                                similarity)
from llmkit.train.label import judge_probabilities, sample_reply_pairs
from llmkit.train.post_common import reply_text
from llmkit.train.principles import Constitution, stable_int

# The default prompts: HH-RLHF's harmless-base *train* split (Bai et al. 2022a), as the paper's SL-CAI
# revised answers to red-team prompts; the benchmarks hold out prompts of the *test* split.
HH_RLHF = ("Anthropic/hh-rlhf", "harmless-base/train.jsonl.gz")
# a label some models put before their rewrite ("Revision: ...", "Revised response:"): not part of the answer
REVISION_LABEL = re.compile(r"^\s*(?:\*\*)?(?:revised|revision|new|rewritten|improved)(?: (?:answer|response))?"
                            r"(?:\*\*)?\s*:\s*(?:\*\*)?\s*", re.IGNORECASE)


# --- prompts -------------------------------------------------------------------------------------------------
def read_prompts(source: str | Path, records: list | None = None, limit: int = 0, fetch=None) -> list[list[dict]]:
    """Prompts as conversations: a file in any post-training format (train/chat_data.py; a plain-text
    prompt becomes one user turn), or "hh-rlhf" (downloaded once from the Hugging Face Hub; `fetch(repo,
    filename, folder) -> Path` replaces the download in tests). limit: the first N only (0: all)."""
    if limit < 0:
        raise DataError(f"--limit must be >= 0, not {limit}")
    if str(source) == "hh-rlhf":
        from llmkit.data.corpus import cache_root, hub_fetch

        folder = cache_root() / "downloads" / "hh-rlhf"
        cached = folder / HH_RLHF[1]
        source = cached if cached.is_file() else (fetch or hub_fetch)(HH_RLHF[0], HH_RLHF[1], folder)
    prompts = [r.prompt for r in load_records(source, "prompt", records)]
    if limit:
        prompts = prompts[:limit]
    return [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]


# --- generation ----------------------------------------------------------------------------------------------
class Generator:
    """Many conversations answered in one batch through the model's engine, each request with its own
    seed. A conversation whose tokens leave no room for max_new_tokens in the context is not sent: its
    result is None (the caller drops that prompt and counts it)."""

    def __init__(self, llm, max_new_tokens: int, temperature: float, top_p: float):
        SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)  # checked up front
        if max_new_tokens < 1:
            raise GenerationError(f"--max-new-tokens must be >= 1, not {max_new_tokens}")
        self.llm, self.max_new_tokens, self.temperature, self.top_p = llm, max_new_tokens, temperature, top_p

    def __call__(self, conversations: list[list[dict]], seeds: list[int]) -> list[str | None]:
        tok, context = self.llm.tokenizer, self.llm.model.text_context
        ids = [tok.encode(tok.apply_chat_template(c, add_generation_prompt=True)) for c in conversations]
        fits = [i for i, x in enumerate(ids) if len(x) + self.max_new_tokens <= context]
        params = [SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                 top_p=self.top_p, seed=seeds[i]) for i in fits]
        completions = self.llm.engine.generate_batch([ids[i] for i in fits], params)
        out: list[str | None] = [None] * len(conversations)
        for i, completion in zip(fits, completions):
            if completion.finish_reason == "error":
                raise GenerationError(f"generation failed ({completion.error})")
            out[i] = reply_text(tok, completion.token_ids).strip()
        return out


def clean_revision(text: str) -> str:
    return REVISION_LABEL.sub("", text, count=1).strip()


# --- SL-CAI --------------------------------------------------------------------------------------------------
def critique_and_revise(llm, prompts: list[list[dict]], constitution: Constitution, rounds: int = 1,
                        max_new_tokens: int = 128, temperature: float = 0.7, top_p: float = 0.9,
                        seed: int = 0) -> list[dict]:
    """One trace per prompt: {prompt, initial, rounds: [{principle, critique, revision, changed,
    similarity}], final}; a prompt that outgrew the context has "dropped" set and no final answer."""
    if rounds < 1:
        raise DataError(f"--rounds must be >= 1, not {rounds}")
    generate = Generator(llm, max_new_tokens, temperature, top_p)
    answers = generate(prompts, [stable_int(seed, "answer", p) for p in prompts])
    traces = [{"prompt": p, "initial": a, "rounds": [], "final": a} for p, a in zip(prompts, answers)]
    for t in traces:
        if t["initial"] is None:
            t["dropped"] = "the prompt leaves no room for an answer in the model's context"
    for r in range(1, rounds + 1):
        live = [t for t in traces if "dropped" not in t]
        principles = [constitution.pick(seed, f"revise:{r}", t["prompt"]) for t in live]
        asked = [t["prompt"] + [{"role": "assistant", "content": t["final"]},
                                {"role": "user", "content": p.critique}] for t, p in zip(live, principles)]
        critiques = generate(asked, [stable_int(seed, f"critique:{r}", t["prompt"]) for t in live])
        asked = [c + [{"role": "assistant", "content": critique or ""}, {"role": "user", "content": p.revision}]
                 for c, critique, p in zip(asked, critiques, principles)]
        revisions = generate(asked, [stable_int(seed, f"revision:{r}", t["prompt"]) for t in live])
        for t, p, critique, revision in zip(live, principles, critiques, revisions):
            if critique is None or revision is None:
                t["dropped"] = f"round {r}: the critique request outgrew the model's context"
                continue
            revision = clean_revision(revision)
            previous = t["final"]
            kept = revision or previous  # an empty rewrite keeps the answer it was asked to rewrite
            t["rounds"].append({"principle": p.name, "critique": critique, "revision": revision,
                                "changed": kept.strip() != previous.strip(),
                                "similarity": round(similarity(previous, kept), 4)})
            t["final"] = kept
    for t in traces:
        if "dropped" in t:
            t["final"] = None
    return traces


def revise(llm, prompts: list[list[dict]], constitution: Constitution, out: str | Path, rounds: int = 1,
           max_new_tokens: int = 128, temperature: float = 0.7, top_p: float = 0.9, seed: int = 0,
           overwrite: bool = False, settings: dict | None = None) -> dict:
    """SL-CAI over `prompts`; writes out/sft.jsonl, out/critiques.jsonl, out/summary.json and
    out/report.md, all or nothing. Returns the summary."""
    with staged_directory(out, overwrite=overwrite, what="the constitution run") as folder:  # refused up front
        cache = _resume_cache(out, settings, constitution, [llm], "revise", rounds, max_new_tokens, temperature,
                              top_p, seed)
        traces = _resumable(cache, prompts, lambda chunk: critique_and_revise(
            llm, chunk, constitution, rounds, max_new_tokens, temperature, top_p, seed))
        kept = [t for t in traces if t["final"] is not None]
        if not kept:
            raise DataError(f"no prompt fits the model's context of {llm.model.text_context} tokens with "
                            f"--max-new-tokens {max_new_tokens} for its answer, critique and revision; lower "
                            "--max-new-tokens or use shorter prompts")
        summary = revision_summary(traces, rounds)
        summary["settings"] = {**(settings or {}), "rounds": rounds, "max_new_tokens": max_new_tokens,
                               "temperature": temperature, "top_p": top_p, "seed": seed,
                               "principles": constitution.source}
        write_jsonl(folder / "sft.jsonl", [{"prompt": t["prompt"], "completion": [{"role": "assistant",
                                            "content": t["final"]}]} for t in kept])
        write_jsonl(folder / "critiques.jsonl", traces)
        (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (folder / "report.md").write_text(revision_report(traces, summary))
    if cache is not None:
        cache.remove()
    return summary


# --- RL-CAI --------------------------------------------------------------------------------------------------
def judge_by_principles(judge, policy_llm, prompts: list[list[dict]], constitution: Constitution,
                        max_new_tokens: int = 128, temperature: float = 1.0, seed: int = 0,
                        rule: str = "both-orders", margin: float = 0.0) -> list[dict]:
    """Two sampled answers per prompt (one batch through the policy's engine), judged by `verdicts`."""
    seeds = [stable_int(seed, f"sample:{k}", p) for p in prompts for k in (0, 1)]
    first, second = sample_reply_pairs(policy_llm, prompts, max_new_tokens, temperature, seeds)
    return verdicts(judge, prompts, first, second, constitution, seed, rule, margin)


RULES = ("both-orders", "averaged")


def decide(p_a_first: float, p_a_second: float, rule: str = "both-orders", margin: float = 0.0) -> str:
    """"a", "b" or (where the rule keeps neither) "inconsistent" ("both-orders") / "undecided" ("averaged")."""
    if rule == "both-orders":
        if p_a_first > 0.5 and p_a_second > 0.5:
            return "a"
        if p_a_first < 0.5 and p_a_second < 0.5:
            return "b"
        return "inconsistent"
    if rule != "averaged":
        raise ValueError(f"rule must be one of {', '.join(RULES)}, not {rule!r}")
    lean = (p_a_first + p_a_second) / 2 - 0.5
    return "a" if lean > margin else "b" if lean < -margin else "undecided"


def verdicts(judge, prompts: list, first: list[str], second: list[str], constitution: Constitution,
             seed: int = 0, rule: str = "both-orders", margin: float = 0.0) -> list[dict]:
    """The judge's verdict on each pair of answers (a = first, b = second) in both orders, asked by the
    principle drawn for the prompt: one row per prompt, {prompt, principle, a, b, p_a_first, p_a_second,
    verdict}; verdict "identical" where the answers are the same, else `decide`'s under `rule`."""
    if not 0 <= margin < 0.5:
        raise ValueError(f"margin must be in [0, 0.5), not {margin}")
    decide(0.5, 0.5, rule, margin)  # an unknown rule is refused before the judge runs
    principles = [constitution.pick(seed, "label", p) for p in prompts]
    questions = [p.compare for p in principles]
    forward = judge_probabilities(judge, prompts, first, second, questions)  # P(a preferred), a shown first
    backward = judge_probabilities(judge, prompts, second, first, questions)  # P(b preferred), b shown first
    rows = []
    for prompt, principle, a, b, p_ab, p_ba in zip(prompts, principles, first, second, forward, backward):
        p_a_second = 1 - p_ba  # P(a preferred) with a shown second
        verdict = "identical" if a.strip() == b.strip() else decide(p_ab, p_a_second, rule, margin)
        rows.append({"prompt": prompt, "principle": principle.name, "a": a, "b": b, "p_a_first": round(p_ab, 4),
                     "p_a_second": round(p_a_second, 4), "verdict": verdict})
    return rows


def label(judge, policy_llm, prompts: list[list[dict]], constitution: Constitution, out: str | Path,
          max_new_tokens: int = 128, temperature: float = 1.0, seed: int = 0, overwrite: bool = False,
          settings: dict | None = None, rule: str = "both-orders", margin: float = 0.0) -> dict:
    """RL-CAI labels; writes out/pairs.jsonl ({prompt, chosen, rejected, principle, judge_probability}
    for `llmkit dpo`), out/judgements.jsonl (every prompt's two answers and both verdicts),
    out/summary.json and out/report.md. judge: a loaded `llmkit.LLM` or a `RemoteBackend`
    (label.load_judge); None: the policy judges its own answers. rule/margin: which pairs are kept (the
    module's docstring). A prompt that leaves no room for max_new_tokens in the policy's context is
    dropped and counted."""
    context = policy_llm.model.text_context
    fits = [p for p in prompts if len(encode_prompt(policy_llm.tokenizer, p)) + max_new_tokens <= context]
    if not fits:
        raise DataError(f"no prompt fits the model's context of {context} tokens with --max-new-tokens "
                        f"{max_new_tokens}; lower --max-new-tokens or use shorter prompts")
    with staged_directory(out, overwrite=overwrite, what="the constitution run") as folder:  # refused up front
        cache = _resume_cache(out, settings, constitution, [policy_llm, judge or policy_llm], "label", max_new_tokens,
                              temperature, seed, rule, margin)
        rows = _resumable(cache, fits, lambda chunk: judge_by_principles(
            judge or policy_llm, policy_llm, chunk, constitution, max_new_tokens, temperature, seed, rule, margin))
        pairs = []
        for row in rows:
            if row["verdict"] not in ("a", "b"):
                continue
            chosen, rejected = (row["a"], row["b"]) if row["verdict"] == "a" else (row["b"], row["a"])
            p = (row["p_a_first"] + row["p_a_second"]) / 2
            pairs.append({"prompt": row["prompt"], "chosen": [{"role": "assistant", "content": chosen}],
                          "rejected": [{"role": "assistant", "content": rejected}], "principle": row["principle"],
                          "judge_probability": round(max(p, 1 - p), 4)})
        summary = label_summary(rows, len(pairs), dropped=len(prompts) - len(fits))
        summary["settings"] = {**(settings or {}), "max_new_tokens": max_new_tokens, "temperature": temperature,
                               "seed": seed, "principles": constitution.source, "rule": rule, "margin": margin}
        write_jsonl(folder / "pairs.jsonl", pairs)
        write_jsonl(folder / "judgements.jsonl", rows)
        (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (folder / "report.md").write_text(label_report(rows, summary))
    if cache is not None:
        cache.remove()
    return summary


# --- resuming ------------------------------------------------------------------------------------------------
def _resume_cache(out: str | Path, settings: dict | None, constitution: Constitution, models: list, *how):
    """Where a run keeps each prompt's finished work (`.OUT.resume.jsonl` beside --out) so that the same
    command resumes after a Ctrl-C or a kill: hours of CPU for a few hundred prompts are not redone. Only
    runs whose models are named (`settings`, as the CLI passes them) keep anything: a loaded model
    cannot be told apart from another. The key holds everything that decides a prompt's output but which
    other prompts run (--limit, --records): the models' identities (judge.model_identity: their files,
    dtype and device, a server's served model), the principles and `how`; a prompt's output does not
    depend on the other prompts (module docstring)."""
    from llmkit.eval.judge import ReplyCache, model_identity, model_settings

    if not settings or "model" not in settings:
        return None
    named = {k: v for k, v in settings.items() if k not in ("limit", "records", "prompts")}
    names = [settings["model"], settings.get("judge", settings["model"])]
    cache = ReplyCache.beside(out)
    cache.identity = [named, [model_identity(str(n), model_settings(m)) for n, m in zip(names, models)],
                      [vars(p) for p in constitution.principles], *how]
    return cache


def _resumable(cache, prompts: list, work) -> list[dict]:
    """work(prompts) -> one JSON-able result per prompt, run in chunks of prompts, each chunk kept in
    `cache` as soon as it is done; prompts in the cache are not run again."""
    from llmkit.eval.judge import ReplyCache, cached_map

    keys = [ReplyCache.key(cache.identity if cache else None, p) for p in prompts]
    return cached_map(cache, keys, lambda indices: work([prompts[i] for i in indices]))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

