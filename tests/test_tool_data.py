"""Tool-use SFT data: generated arithmetic problems are right, and the loss covers the assistant's calls
and answers but not the tool's output."""

import json

from llmkit.rag.calculator import calculate
from llmkit.rag.tool_data import tool_examples
from llmkit.train.chat_data import encode_sft, parse_record


def test_problems_chain_two_to_four_operations_with_right_answers():
    examples = tool_examples(200, seed=3)
    assert examples == tool_examples(200, seed=3) and examples != tool_examples(200, seed=4)
    for example in examples:
        user, call, tool, answer = example["messages"]
        expression = call["tool_calls"][0]["function"]["arguments"]["expression"]
        assert 2 <= sum(expression.count(op) for op in "+-*/") <= 4
        assert tool["content"] == calculate(expression) and answer["content"] == f"The answer is {tool['content']}."
        assert all(100 <= int(n) <= 9999 for n in expression.replace("(", " ").replace(")", " ").split() if n.isdigit())


def test_loss_covers_calls_and_answers_not_tool_output(shakespeare_tokenizer):
    example = json.loads(json.dumps(tool_examples(1, seed=0)[0]))  # as read back from a JSONL file
    encoded = encode_sft(shakespeare_tokenizer, parse_record("data.jsonl:1", example))
    learned = shakespeare_tokenizer.decode([t for t, m in zip(encoded.ids, encoded.mask) if m])
    context = shakespeare_tokenizer.decode([t for t, m in zip(encoded.ids, encoded.mask) if not m])
    expression = example["messages"][1]["tool_calls"][0]["function"]["arguments"]["expression"]
    result = example["messages"][2]["content"]
    assert '<tool_call>{"name": "calculator", "arguments": {"expression": "' + expression + '"}}</tool_call>' in learned
    assert f"The answer is {result}." in learned
    assert "<tool_response>" not in learned and f"<tool_response>{result}</tool_response>" in context
    assert '"name": "calculator"' in context  # the tool's description is in the (unlearned) system turn
    assert "<tools>" not in learned and example["messages"][0]["content"] in context


# --- play questions solved with the search tool --------------------------------------------------------------
def _plays_index(tmp_path):
    from llmkit.rag.chat import Retriever, search_tool
    from llmkit.rag.chunking import ChunkingConfig
    from llmkit.rag.index import RagIndex

    docs = tmp_path / "docs"
    docs.mkdir()
    filler = "".join(f"CHORUS.\nThe {i}th watch of the night is cold and long.\n\n" for i in range(40))
    (docs / "comedy_of_errors_gut.txt").write_text(filler + "ANTIPHOLUS.\nI to the world am like a drop of water.\n\n"
                                                   + filler)
    (docs / "other_play_gut.txt").write_text(filler)
    index = RagIndex.build([docs], ChunkingConfig(size=300, overlap=50))
    return search_tool(Retriever(index, k=2, mode="bm25"))


def test_play_questions_become_search_calls_only_when_the_passages_hold_the_answer(tmp_path):
    from llmkit.data.assistant_task import Question
    from llmkit.rag.tool_data import search_example, search_examples, search_query

    search = _plays_index(tmp_path)
    line = "I to the world am like a drop of water."
    speaker = Question("speaker", f'In The Comedy of Errors, who says "{line}": Antipholus or Chorus?', "Antipholus",
                       "Chorus", line)
    play = Question("play", "In which play does Antipholus appear: The Comedy of Errors or Hamlet?",
                    "The Comedy of Errors", "Hamlet", "Antipholus")
    absent = Question("speaker", f'In The Comedy of Errors, who says "{line}": Dromio or Chorus?', "Dromio", "Chorus",
                      line)
    passage = Question("passage", 'A: hi\nB: "so"\n\nIn this passage, who says "so"?', "B", "A", "x:1")
    assert search_query(speaker) == line and search_query(play) == "Antipholus" and search_query(passage) is None

    example = json.loads(json.dumps(search_example(speaker, search, 7)))
    user, call, tool, answer = example["messages"]
    assert call["tool_calls"][0]["function"] == {"name": "search", "arguments": {"query": line}}
    assert "comedy_of_errors_gut.txt, line" in tool["content"] and line in tool["content"]
    assert answer == {"role": "assistant", "content": "Antipholus"} and example["tools"][0]["function"]["name"] == "search"
    # the title is found in the passage's citation (the file name); a name the passages lack is not taught
    assert search_example(play, search, 0)["messages"][-1]["content"] == "The Comedy of Errors"
    assert search_example(absent, search, 0) is None and search_example(passage, search, 0) is None
    found, skipped = search_examples([absent, speaker, passage, play], search, n=1)
    assert len(found) == 1 and skipped == 1 and found[0]["messages"][0]["content"] == speaker.prompt


def test_search_conversations_train_on_the_call_and_answer_not_the_passages(tmp_path, shakespeare_tokenizer):
    from llmkit.data.assistant_task import Question
    from llmkit.rag.tool_data import search_example

    line = "I to the world am like a drop of water."
    example = search_example(Question("speaker", f'Who says "{line}": Antipholus or Chorus?', "Antipholus", "Chorus",
                                      line), _plays_index(tmp_path), 0)
    encoded = encode_sft(shakespeare_tokenizer, parse_record("data.jsonl:1", json.loads(json.dumps(example))))
    learned = shakespeare_tokenizer.decode([t for t, m in zip(encoded.ids, encoded.mask) if m])
    assert '"arguments": {"query": "' + line + '"}' in learned and "Antipholus" in learned
    assert "comedy_of_errors_gut.txt" not in learned and "watch of the night" not in learned


def test_make_tool_data_mixes_calculator_problems_and_searched_play_questions(tmp_path):
    from conftest import SHAKESPEARE, cli_in_process

    assert cli_in_process("rag", "index", "--input", SHAKESPEARE / "train", "--out", tmp_path / "plays.idx",
                          "--chunk-chars", 300, "--overlap", 60).returncode == 0
    made = cli_in_process("rag", "make-tool-data", "--out", tmp_path / "mixed.jsonl", "--n", 20, "--index",
                          tmp_path / "plays.idx", "--questions", 30)
    assert made.returncode == 0, made.stderr
    rows = [json.loads(line) for line in (tmp_path / "mixed.jsonl").read_text().splitlines()]
    tools = [row["tools"][0]["function"]["name"] for row in rows]
    assert tools.count("calculator") == 20 and tools.count("search") == 30 and tools[:20] != ["calculator"] * 20
    for row in rows:
        if row["tools"][0]["function"]["name"] == "search":
            passages, answer = row["messages"][2]["content"], row["messages"][3]["content"]
            assert passages.startswith("[1] (") and "_gut.txt, line " in passages
            assert answer.lower().removeprefix("the ").split()[0].strip(",.'") in passages.lower().replace("_", " ")
    empty = cli_in_process("rag", "make-tool-data", "--out", tmp_path / "none.jsonl", "--n", 0)
    assert empty.returncode != 0 and "nothing to write" in empty.stderr and not (tmp_path / "none.jsonl").exists()
