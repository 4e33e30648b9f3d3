"""Post-training data formats (TRL's): conversations, prompt-completion, preferences (explicit and
implicit prompt), HH-RLHF transcripts; loss masks from the chat template; errors with file, line, field."""

import gzip
import json

import pytest

from conftest import TEST_DATA
from llmkit.errors import DataError
from llmkit.train.chat_data import (EncodedPair, encode_conversation, encode_pair, encode_prompt, encode_sft,
                                    load_records, truncate_pair)
from llmkit.train.packing import lm_item

CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def learned_text(tok, enc):
    """The text of each run of learned tokens."""
    runs, current = [], []
    for t, m in zip(enc.ids, enc.mask):
        if m:
            current.append(t)
        elif current:
            runs.append(tok.decode(current))
            current = []
    if current:
        runs.append(tok.decode(current))
    return runs


CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who is Romeo?"},
                {"role": "assistant", "content": "A Montague."}, {"role": "user", "content": "And Juliet?"},
                {"role": "assistant", "content": "A Capulet."}]


def test_loss_covers_assistant_turns_only(shakespeare_tokenizer):
    tok = shakespeare_tokenizer
    enc = encode_conversation(tok, CONVERSATION)
    assert learned_text(tok, enc) == ["A Montague.<|end|>", "A Capulet.<|end|>"]
    # the whole conversation is the template's rendering, and a prompt tokenizes as at generation time
    assert tok.decode(enc.ids) == tok.apply_chat_template(CONVERSATION, add_generation_prompt=False)
    prompt = encode_prompt(tok, CONVERSATION[:3] + CONVERSATION[3:4])
    assert enc.ids[:len(prompt)] == prompt and not any(enc.mask[len(prompt) - 1:len(prompt)])
    last_only = encode_conversation(tok, CONVERSATION, train_on="last")
    assert learned_text(tok, last_only) == ["A Capulet.<|end|>"]


def test_chatml_template_with_injected_system_prompt(shakespeare_tokenizer):
    """SmolLM2's template adds a system prompt when there is none; masking still finds the replies."""
    from llmkit.tokenizer import Tokenizer

    tok = Tokenizer(shakespeare_tokenizer.backend, bos_token="<|bos|>", eos_token="<|eos|>", chat_template=CHATML)
    enc = encode_conversation(tok, CONVERSATION[1:])
    assert [t.replace("<|im_end|>", "|") for t in learned_text(tok, enc)] == ["A Montague.|\n", "A Capulet.|\n"]
    assert "You are a helpful AI assistant" in tok.decode(enc.ids)


def test_prompt_completion_and_text_format(tmp_path, shakespeare_tokenizer):
    tok = shakespeare_tokenizer
    path = write_jsonl(tmp_path / "pc.jsonl", [
        {"prompt": "To be, or not to be,", "completion": " that is the question."},
        {"prompt": [{"role": "user", "content": "Continue: To be"}],
         "completion": [{"role": "assistant", "content": "or not to be"}]}])
    text, chat = load_records(path, "sft")
    enc = encode_sft(tok, text)
    assert enc.ids[0] == tok.bos_id and enc.ids[-1] == tok.eos_id
    assert learned_text(tok, enc) == [" that is the question.<|eos|>"]
    assert learned_text(tok, encode_sft(tok, chat)) == ["or not to be<|end|>"]
    # a soft prompt's virtual tokens go first and are never learned
    prefixed = encode_sft(tok, chat, prefix_ids=[600, 601])
    assert prefixed.ids[:2] == [600, 601] and prefixed.mask[:2] == [False, False]
    # next-token items: target t is token t+1 where it is learned
    item = lm_item(enc.ids, enc.mask)
    assert len(item.inputs) == len(enc.ids) - 1
    assert [t for t in item.targets if t != -100] == [t for t, m in zip(enc.ids, enc.mask) if m]


def test_preference_formats_explicit_implicit_and_hh(tmp_path, shakespeare_tokenizer):
    user = {"role": "user", "content": "Name a tragedy."}
    good, bad = {"role": "assistant", "content": "Hamlet."}, {"role": "assistant", "content": "Twelfth Night."}
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": [user], "chosen": [good], "rejected": [bad]},
        {"chosen": [user, good], "rejected": [user, bad]},
        {"chosen": "\n\nHuman: Name a tragedy.\n\nAssistant: Hamlet.",
         "rejected": "\n\nHuman: Name a tragedy.\n\nAssistant: Twelfth Night."},
        {"prompt": "The king", "chosen": " is dead.", "rejected": " sings."},
        {"chosen": "The king is dead.", "rejected": "The king sings."}])
    records = load_records(path, "preference")
    for r in records[:3]:
        assert (r.prompt, r.chosen, r.rejected) == ([user], [good], [bad])
    assert (records[4].prompt, records[4].chosen, records[4].rejected) == ("The king ", "is dead.", "sings.")
    pair = encode_pair(shakespeare_tokenizer, records[0], max_len=128)
    assert pair.prompt == encode_prompt(shakespeare_tokenizer, [user])
    assert shakespeare_tokenizer.decode(pair.chosen) == "Hamlet.<|end|>"
    # SFT on preference data learns the chosen replies
    assert load_records(path, "sft")[0].completion == [good]


def test_hh_rlhf_file_loads_as_it_is():
    path = TEST_DATA / "hh-rlhf" / "harmless-base-test-300.jsonl.gz"
    records = load_records(path, "preference", [290, 300])
    assert len(records) == 10
    for r in records:
        assert r.prompt[0]["role"] == "user" and r.prompt[-1]["role"] == "user"
        assert [m["role"] for m in r.chosen] == ["assistant"] == [m["role"] for m in r.rejected]
        assert r.chosen != r.rejected
    with gzip.open(path, "rt") as f:
        first = json.loads(f.readline())
    assert load_records(path, "preference", [0, 1])[0].chosen[0]["content"] in first["chosen"]


def test_truncation_keeps_the_end_of_the_prompt():
    pair = truncate_pair(EncodedPair(list(range(100)), [1000, 1001, 1002], [2000]), max_len=20, keep_start=2)
    assert len(pair.prompt) + 3 == 20 and pair.prompt[:2] == [0, 1] and pair.prompt[-1] == 99
    assert pair.chosen == [1000, 1001, 1002] and pair.rejected == [2000]


@pytest.mark.parametrize("line, message", [
    ('{"messages": [{"role": "user", "content": "hi"}', "invalid JSON"),
    ('{"text": "hi"}', "no known fields"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]}',
     "field 'messages': message 1"),
    ('{"prompt": [{"role": "user", "content": "hi"}], "completion": "hello"}', "field 'completion'"),
    ('{"prompt": "hi", "completion": 3}', "field 'completion' must be a string or a list of messages"),
    ('[1, 2]', "expected a JSON object"),
])
def test_malformed_records_name_file_line_and_field(tmp_path, line, message):
    path = write_jsonl(tmp_path / "bad.jsonl", ['{"messages": [{"role": "user", "content": "ok"}, '
                                                '{"role": "assistant", "content": "fine"}]}', line])
    with pytest.raises(DataError) as err:
        load_records(path, "sft")
    assert f"{path}:2:" in str(err.value) and message in str(err.value)


def test_preference_stage_rejects_sft_records(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"messages": [{"role": "user", "content": "a"},
                                                              {"role": "assistant", "content": "b"}]}])
    with pytest.raises(DataError, match=r"sft.jsonl:1: field 'chosen' and 'rejected' are needed"):
        load_records(path, "preference")
