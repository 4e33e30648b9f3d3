"""AI feedback and judging under the conditions of long real runs: a judge server that starts failing
(HTTP 500), a run cut short and run again (it resumes: finished judge replies, labelled prompts and
revised prompts are not asked again, and the result equals an uninterrupted run), and user files with bad
fields (one clear error naming file, line and field, never a traceback or silently wrong ratings)."""

import json

import httpx
import llmkit
import pytest

import llmkit.eval.judge as judge_module
from conftest import TEST_DATA, cli_in_process
from llmkit.errors import ConfigError, DataError
from llmkit.eval.answers import read_answers
from llmkit.eval.judge import Judge
from llmkit.eval.remote import RemoteBackend
from llmkit.train.principles import load_constitution
from posttrain_fixtures import tiny_base  # noqa: F401 (fixtures)

FIXTURES = TEST_DATA / "eval"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def answer_files(tmp_path):
    qs = [{"question_id": k, "category": "writing", "turns": [f"Question {k}?", f"And then {k}?"]} for k in range(3)]
    return [write_jsonl(tmp_path / f"{name}.jsonl", [{**q, "model": name, "answers": [f"{name} says {q['question_id']}",
                                                                                      "more" * (1 + len(name))]}
                                                     for q in qs]) for name in ("ab", "cdef")]


class Server:
    """An OpenAI-compatible chat server as an httpx transport: grades by the prompt's length, and returns
    HTTP 500 for every request after `fail_after` (a server that went down mid-run)."""

    def __init__(self, fail_after=None):
        self.fail_after, self.asked = fail_after, 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "judge"}]})
        if self.fail_after is not None and self.asked >= self.fail_after:
            return httpx.Response(500, json={"error": {"message": "internal error"}})
        self.asked += 1
        text = json.loads(request.content)["messages"][-1]["content"]
        return httpx.Response(200, json={"choices": [{"message": {"content": f"Rating: [[{1 + len(text) % 10}]]"},
                                                      "finish_reason": "stop"}]})


def judge_cli(monkeypatch, server, files, out):
    monkeypatch.setattr(Judge, "load", classmethod(lambda cls, model, **kw: cls(
        RemoteBackend(model, chat=True, retries=0, concurrency=1, transport=httpx.MockTransport(server)), model,
        kw["max_new_tokens"], kw["verdict"])))
    return cli_in_process("judge", "--judge", "http://judge.test/v1", "--answers", *files, "--task-dir", FIXTURES,
                          "--out", out)


def test_a_judge_run_cut_short_by_a_failing_server_resumes_without_asking_again(tmp_path, monkeypatch):
    monkeypatch.setattr(judge_module, "CHUNK", 2)  # replies are kept every 2
    files = answer_files(tmp_path)  # 2 models x 3 questions x 2 turns = 12 judge replies
    whole = Server()
    assert judge_cli(monkeypatch, whole, files, tmp_path / "whole").returncode == 0 and whole.asked == 12

    failing = Server(fail_after=5)  # two chunks answered, the third fails half way
    result = judge_cli(monkeypatch, failing, files, tmp_path / "cut")
    assert result.returncode == 2 and "HTTP 500: internal error" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "cut" / "results.json").exists()

    rest = Server()
    result = judge_cli(monkeypatch, rest, files, tmp_path / "cut")
    assert result.returncode == 0 and "resuming: 4 judge replies" in result.stdout
    assert rest.asked == 8  # the 4 kept replies are not asked again
    for name in ("results.json", "judgements.jsonl"):
        assert (tmp_path / "cut" / name).read_text() == (tmp_path / "whole" / name).read_text()
    assert not (tmp_path / "cut" / "replies.partial.jsonl").exists()  # a complete run keeps no cache


def test_a_cache_line_torn_by_a_kill_is_asked_again(tmp_path):
    cache = judge_module.ReplyCache(tmp_path / "c.jsonl")
    cache.add([("k1", ["a\u2028b [[5]]", "stop", 0]), ("k2", ["[[6]]", "stop", 0])])  # U+2028 is no line end
    text = (tmp_path / "c.jsonl").read_text(encoding="utf-8")
    (tmp_path / "c.jsonl").write_text(text[:-10], encoding="utf-8")  # killed while writing the second line
    assert judge_module.ReplyCache(tmp_path / "c.jsonl").entries == {"k1": ["a\u2028b [[5]]", "stop", 0]}


@pytest.mark.parametrize("records, error", [
    ([{"question_id": 1, "turns": ["q"], "answers": ["a"], "model": "x"},
      {"question_id": 2, "turns": ["q"], "answers": ["a"], "model": "y"}], r"a\.jsonl:2: model 'y', but the file's first"),
    ([{"question_id": 1, "turns": ["q", "r", "s"], "answers": ["a", "b", "c"]}], r"a\.jsonl:1: 3 turns"),
    ([{"question_id": 1, "turns": ["q"], "answers": ["a"], "model": 5}], r"a\.jsonl:1: field 'model' must be"),
    ([{"question_id": 1, "turns": ["q"], "answers": ["a"], "category": ["math"]}], r"a\.jsonl:1: field 'category'"),
    ([{"question_id": 1, "turns": ["q"], "answers": ["a"], "category": "math", "reference": 5}],
     r"a\.jsonl:1: field 'reference' must be a list of strings"),
    ([{"question_id": 1, "turns": ["q"]}, {"question_id": 2, "turns": ["q"], "answers": [3]}],
     r"a\.jsonl:1: expected \"answers\""),
])
def test_answer_files_with_bad_fields_are_one_clear_error(tmp_path, records, error):
    with pytest.raises(DataError, match=error):
        read_answers(write_jsonl(tmp_path / "a.jsonl", records))


def test_a_bad_answers_file_stops_the_judge_with_one_line(tmp_path):
    bad = write_jsonl(tmp_path / "a.jsonl", [{"question_id": 1, "turns": ["q"], "answers": ["a"], "category": "math",
                                              "reference": 5}])
    for path, message in [(bad, "a.jsonl:1: field 'reference'"),
                          (tmp_path / "missing.jsonl", "missing.jsonl: no such answers file; write one with `llmkit answer")]:
        result = cli_in_process("judge", "--judge", "unused", "--answers", path, "--task-dir", FIXTURES, "--out",
                                tmp_path / "out")
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_a_principles_file_that_is_not_utf8_is_a_config_error(tmp_path):
    (tmp_path / "mine.yaml").write_bytes(b"\xff\xfeprinciples: []\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: not UTF-8 text \(byte 0\)"):
        load_constitution(tmp_path / "mine.yaml")


def test_label_judged_by_a_server_sends_the_api_key(monkeypatch):
    from llmkit.train.label import load_judge

    seen = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"data": [{"id": "judge"}]})

    real = RemoteBackend.__init__
    monkeypatch.setattr(RemoteBackend, "__init__", lambda self, url, **kw: real(
        self, url, **kw, transport=httpx.MockTransport(server)))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    load_judge("http://judge.test/v1", "policy", None)
    assert seen == ["Bearer sk-test"]


class Interrupt(Exception):
    pass


def fail_on_call(monkeypatch, module, name, call):
    """module.name raises Interrupt on its `call`-th call, once (a Ctrl-C or a kill mid-run); counts calls."""
    real, calls, raised = getattr(module, name), [], []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == call and not raised:
            raised.append(1)
            raise Interrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return calls


def test_label_cut_short_resumes_and_writes_what_an_uninterrupted_run_writes(tmp_path, tiny_base, monkeypatch):
    import llmkit.train.label as label_module

    monkeypatch.setattr(judge_module, "CHUNK", 2)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"ROMEO. Speak {i}."} for i in range(5)])
    args = dict(max_new_tokens=6, temperature=1.0, seed=3, min_margin=0.0)
    label_module.label_preferences(tiny_base, tiny_base, prompts, tmp_path / "whole.jsonl", **args)

    calls = fail_on_call(monkeypatch, label_module, "sample_reply_pairs", 2)  # the second chunk is cut short
    with pytest.raises(Interrupt):
        label_module.label_preferences(tiny_base, tiny_base, prompts, tmp_path / "cut.jsonl", **args)
    assert not (tmp_path / "cut.jsonl").exists() and (tmp_path / ".cut.jsonl.resume.jsonl").is_file()
    calls.clear()
    label_module.label_preferences(tiny_base, tiny_base, prompts, tmp_path / "cut.jsonl", **args)
    assert len(calls) == 2  # chunks 2 and 3 only (prompts 3-5); chunk 1 was kept
    assert (tmp_path / "cut.jsonl").read_text() == (tmp_path / "whole.jsonl").read_text()
    assert not (tmp_path / ".cut.jsonl.resume.jsonl").exists()


def test_constitution_revise_cut_short_resumes(tmp_path, tiny_base, monkeypatch):
    import llmkit.train.constitution as constitution

    monkeypatch.setattr(judge_module, "CHUNK", 1)
    llm = llmkit.load(tiny_base)
    prompts = [[{"role": "user", "content": f"Speak of the sea {i}."}] for i in range(3)]
    principles = load_constitution()
    args = dict(rounds=1, max_new_tokens=5, seed=1, settings={"model": str(tiny_base)})
    constitution.revise(llm, prompts, principles, tmp_path / "whole", **args)

    calls = fail_on_call(monkeypatch, constitution, "critique_and_revise", 3)
    with pytest.raises(Interrupt):
        constitution.revise(llm, prompts, principles, tmp_path / "cut", **args)
    calls.clear()
    constitution.revise(llm, prompts, principles, tmp_path / "cut", **args)
    assert len(calls) == 1  # only the third prompt is revised again
    for name in ("sft.jsonl", "critiques.jsonl"):
        assert (tmp_path / "cut" / name).read_text() == (tmp_path / "whole" / name).read_text()
    assert not (tmp_path / ".cut.resume.jsonl").exists()


def test_answer_cut_short_resumes_and_writes_what_an_uninterrupted_run_writes(tmp_path, tiny_base, monkeypatch):
    from llmkit.infer.engine import Engine

    monkeypatch.setattr(judge_module, "CHUNK", 1)  # every reply kept as it comes
    questions = write_jsonl(tmp_path / "q.jsonl", [{"question_id": k, "turns": [f"Speak {k}.", f"Again {k}."]}
                                                   for k in range(3)])
    args = ["answer", "--model", tiny_base, "--questions", questions, "--max-new-tokens", 4, "--device", "cpu"]
    assert cli_in_process(*args, "--out", tmp_path / "whole.jsonl").returncode == 0
    calls = fail_on_call(monkeypatch, Engine, "generate_batch", 5)  # turn 2 of the second question
    with pytest.raises(Interrupt):
        cli_in_process(*args, "--out", tmp_path / "cut.jsonl")
    calls.clear()
    result = cli_in_process(*args, "--out", tmp_path / "cut.jsonl")
    assert result.returncode == 0 and "resuming: 4 replies" in result.stdout
    assert len(calls) == 2  # the two replies not kept
    assert (tmp_path / "cut.jsonl").read_text() == (tmp_path / "whole.jsonl").read_text()
    assert not (tmp_path / ".cut.jsonl.resume.jsonl").exists()


def test_pairs_with_identical_replies_are_left_out_of_the_agreement(tmp_path):
    from llmkit.eval.judge import read_judge_prompts
    from llmkit.eval.judge_runs import agreement_with_humans

    class Ties:  # a judge that rightly calls two identical replies a tie
        def generate(self, prompts, max_new_tokens, stop, on_done=None):
            from llmkit.eval.backends import Generated
            return [Generated("[[C]]" if "same" in p[-1]["content"] else "[[A]]", "stop", 1) for p in prompts]

    pairs = [{"prompt": "q", "chosen": "the same", "rejected": "the same "},
             {"prompt": "q", "chosen": "good", "rejected": "bad"}]
    summary, records = agreement_with_humans(Judge(Ties(), "ties"), read_judge_prompts(FIXTURES / "mt_bench" /
                                                                                        "judge_prompts.jsonl"), pairs)
    # the identical pair's (right) tie is not counted as a miss against the human's arbitrary pick
    assert summary["identical_left_out"] == 1 and summary["pairs"] == 1 and len(records) == 1
    assert {records[0]["first"], records[0]["second"]} == {"good", "bad"}


def test_constitution_label_cut_short_resumes(tmp_path, tiny_base, monkeypatch):
    import llmkit.train.constitution as constitution

    monkeypatch.setattr(judge_module, "CHUNK", 1)
    llm = llmkit.load(tiny_base)
    prompts = [[{"role": "user", "content": f"Speak of Rome {i}."}] for i in range(3)]
    args = dict(max_new_tokens=5, seed=2, rule="averaged", settings={"model": str(tiny_base), "judge": str(tiny_base)})
    constitution.label(None, llm, prompts, load_constitution(), tmp_path / "whole", **args)

    calls = fail_on_call(monkeypatch, constitution, "judge_by_principles", 2)
    with pytest.raises(Interrupt):
        constitution.label(None, llm, prompts, load_constitution(), tmp_path / "cut", **args)
    calls.clear()
    constitution.label(None, llm, prompts, load_constitution(), tmp_path / "cut", **args)
    assert len(calls) == 2  # the first prompt's verdicts were kept
    for name in ("pairs.jsonl", "judgements.jsonl"):
        assert (tmp_path / "cut" / name).read_text() == (tmp_path / "whole" / name).read_text()


def test_label_into_a_folder_that_cannot_be_made_is_one_line_before_any_work(tmp_path, tiny_base, monkeypatch):
    import llmkit.train.label as label_module

    calls = fail_on_call(monkeypatch, label_module, "sample_reply_pairs", 0)  # counts: no sampling expected
    (tmp_path / "afile").write_text("")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "ROMEO. Speak."}])
    result = cli_in_process("label", "--judge", tiny_base, "--policy", tiny_base, "--input", prompts,
                            "--out", tmp_path / "afile" / "pairs.jsonl", "--max-new-tokens", 4)
    assert result.returncode == 2 and "afile/pairs.jsonl: cannot write there" in result.stderr
    assert "Traceback" not in result.stderr and not calls


def test_reply_cache_review_cases(tmp_path, saved_tiny_model):
    """Review: a damaged byte was reused as a reply ('caf\ufffd'); after a torn last line the next chunk's first
    reply merged into it and was lost; a conversation asked twice shifted a resumed run's chunks; a model
    retrained at the same path got the old model's kept replies."""
    import os

    from llmkit.eval.judge import ReplyCache, cached_map, model_identity

    path = tmp_path / "cache.jsonl"
    path.write_bytes(b'{"key": "k1", "value": "caf\xe9"}\n{"key": "k2", "value": "ok"}\n{"key": "k3", "val')
    cache = ReplyCache(path)
    assert cache.entries == {"k2": "ok"}  # the damaged line and the torn one are asked again
    cache.add([("k3", "three"), ("k4", "four")])
    assert ReplyCache(path).entries == {"k2": "ok", "k3": "three", "k4": "four"}
    # each key computed once, its value given to every index that asks it
    asked = []
    values = cached_map(None, ["a", "b", "a", "c"], lambda part: asked.append(part) or [f"v{i}" for i in part])
    assert asked == [[0, 1, 3]] and values == ["v0", "v1", "v0", "v3"]
    # the identity of a checkpoint changes when its weights are written again
    before = model_identity(str(saved_tiny_model), {"dtype": "float32"})
    weights = saved_tiny_model / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert model_identity(str(saved_tiny_model), {"dtype": "float32"}) != before
    assert model_identity(str(saved_tiny_model), {"dtype": "bfloat16"}) != before


def test_a_second_run_on_the_same_out_is_refused_while_the_first_runs(tmp_path):
    """Two judge/label/answer runs writing one --out at once appended to one resume file and each replaced
    the other's output; the second is now refused in one line, and the first's lock dies with its process."""
    import subprocess
    import sys

    from llmkit.errors import OutputError

    out = tmp_path / "labels.jsonl"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom llmkit.eval.judge import ReplyCache\n"
         f"ReplyCache.beside({str(out)!r})\nprint('held', flush=True)\nsys.stdin.readline()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match="another llmkit run is writing it now") as error:
            judge_module.ReplyCache.beside(out)
        assert str(out) in str(error.value)
    finally:
        holder.communicate("\n", timeout=30)
    assert holder.returncode == 0
    assert not (tmp_path / ".labels.jsonl.resume.jsonl").exists()  # it had nothing to keep: removed at exit
    cache = judge_module.ReplyCache.beside(out)  # free again, and twice in one process (a resumed Python caller)
    cache.add([("k", 1)])
    assert judge_module.ReplyCache.beside(out).entries == {"k": 1}
    cache.remove()
