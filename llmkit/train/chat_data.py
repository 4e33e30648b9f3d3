"""Post-training data in TRL's formats, so that users' datasets load as they are.

One JSON object per line (`.jsonl`, `.jsonl.gz`) or a JSON array (`.json`):

    {"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}  conversational
    {"prompt": ..., "completion": ...}                                                  prompt-completion
    {"prompt": ..., "chosen": ..., "rejected": ...}                             preference, explicit prompt
    {"chosen": ..., "rejected": ...}                  preference, implicit prompt (their common beginning)

Each of prompt / completion / chosen / rejected is either a string ("standard": plain text, no chat
template, an EOS after the completion) or a list of messages ("conversational": rendered with the
tokenizer's chat template). Anthropic HH-RLHF transcripts ("\\n\\nHuman: ...\\n\\nAssistant: ...") are
read as conversations. The chat template lives with the tokenizer; a conversation is rendered turn by
turn, and the loss covers what the assistant says (its content and end-of-turn marker) and nothing
else. A malformed record raises DataError naming the file, the line and the field.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from llmkit.errors import DataError, TokenizerError
from llmkit.tool_calls import chat_messages

ROLES = ("system", "user", "assistant", "tool")
Text = str | list  # a string, or a list of {"role", "content"} messages


@dataclass
class Record:
    """One parsed example; `where` is "file:line" for error messages."""

    where: str
    messages: list | None = None  # conversational SFT
    prompt: Text | None = None
    completion: Text | None = None
    chosen: Text | None = None
    rejected: Text | None = None
    extra: dict = field(default_factory=dict)  # the record's other fields (e.g. the built-in task's "kind")

    @property
    def conversational(self) -> bool:
        return self.messages is not None or isinstance(self.prompt, list) or isinstance(self.chosen, list)


# --- reading ------------------------------------------------------------------------------------------------
_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of a byte that is not UTF-8


def _utf8(path: Path, text: str, first_line: int) -> str:
    """`text` (one line of a file, or the whole file from line 1, read with errors="surrogateescape") as it
    is, or, where a byte was not UTF-8, one line naming its line (it was "unreadable (... position 59)", a
    position in the whole file). Read as text, not bytes: the file's lines are Python's universal newlines
    (a file with CR line ends, as old Mac editors write, reads line by line as it always did)."""
    bad = _NOT_UTF8.search(text)
    if bad:
        line = first_line + text[:bad.start()].count("\n")
        byte = ord(bad.group()) - 0xdc00
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte 0x{byte:02x}); save the file as UTF-8")
    return text


def read_json_records(path: str | Path, records: list | None = None) -> list[tuple[str, dict]]:
    """[(where, object)] of a .jsonl / .jsonl.gz / .json file; `records` = [start, stop] keeps a slice
    (by record number, as Python slices: [0, 1600] is the first 1,600)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {'a directory; give a .jsonl or .json file' if path.is_dir() else 'no such file'}")
    opener = gzip.open if path.suffix == ".gz" else open
    out: list[tuple[str, dict]] = []
    try:
        # utf-8-sig: a byte-order mark at the start is dropped; a byte that is not UTF-8 is kept (as a lone
        # surrogate) until _utf8 names its line
        with opener(path, "rt", encoding="utf-8-sig", errors="surrogateescape") as f:
            if path.name.endswith((".json", ".json.gz")):
                text = _utf8(path, f.read(), 1)
                try:
                    data = json.loads(text)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
                if not isinstance(data, list):
                    raise DataError(f"{path}: expected a JSON array of records (or use .jsonl, one per line)")
                out = [(f"{path}:record {i}", obj) for i, obj in enumerate(data)]
            else:
                for lineno, line in enumerate(f, 1):
                    line = _utf8(path, line, lineno)
                    if not line.strip():
                        continue
                    try:
                        out.append((f"{path}:{lineno}", json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    if records is not None:
        if len(records) != 2 or not all(isinstance(i, int) for i in records):
            raise DataError(f"{path}: a record slice is [start, stop], not {records!r}")
        out = out[records[0]:records[1]]
    for where, obj in out:
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, found {type(obj).__name__}")
    if not out:
        raise DataError(f"{path}: no records" + (f" in slice {records}" if records else ""))
    return out


KNOWN_FIELDS = {"messages", "prompt", "completion", "chosen", "rejected"}


def parse_record(where: str, obj: dict) -> Record:
    """Check one object's fields and types; HH-RLHF transcripts become message lists."""
    record = _parse_fields(where, obj)
    record.extra = {k: v for k, v in obj.items() if k not in KNOWN_FIELDS}
    return record


def _parse_fields(where: str, obj: dict) -> Record:
    keys = set(obj)
    if "messages" in keys:
        return Record(where, messages=_messages(where, "messages", obj["messages"]))
    if {"chosen", "rejected"} <= keys:
        chosen, rejected = (_text(where, k, obj[k]) for k in ("chosen", "rejected"))
        prompt = _text(where, "prompt", obj["prompt"]) if "prompt" in keys else None
        if prompt is None:
            prompt, chosen, rejected = split_implicit_prompt(where, chosen, rejected)
        if isinstance(prompt, list) != isinstance(chosen, list) or isinstance(chosen, list) != isinstance(rejected, list):
            raise DataError(f"{where}: field 'prompt', 'chosen' and 'rejected' must all be strings or all be "
                            "message lists")
        return Record(where, prompt=prompt, chosen=chosen, rejected=rejected)
    if {"prompt", "completion"} <= keys:
        prompt, completion = _text(where, "prompt", obj["prompt"]), _text(where, "completion", obj["completion"])
        if isinstance(prompt, list) != isinstance(completion, list):
            raise DataError(f"{where}: field 'completion' must be a {'message list' if isinstance(prompt, list) else 'string'}"
                            " like 'prompt'")
        return Record(where, prompt=prompt, completion=completion)
    if "prompt" in keys:
        return Record(where, prompt=_text(where, "prompt", obj["prompt"]))
    raise DataError(f"{where}: no known fields; a record needs 'messages', 'prompt' and 'completion', or "
                    f"'chosen' and 'rejected' (found: {', '.join(sorted(keys)) or 'none'})")


def load_records(path: str | Path, kind: str, records: list | None = None) -> list[Record]:
    """Records of a file for a stage: kind "sft" (messages or prompt-completion), "preference"
    (chosen/rejected), or "prompt" (anything with a prompt: RL prompts)."""
    out = []
    for where, obj in read_json_records(path, records):
        record = parse_record(where, obj)
        if kind == "sft" and record.chosen is not None:  # SFT on the preferred replies of preference data
            record = Record(where, prompt=record.prompt, completion=record.chosen, extra=record.extra)
        if kind == "sft" and record.messages is None and record.completion is None:
            raise DataError(f"{where}: field 'messages' or 'completion' is needed for supervised fine-tuning")
        if kind == "preference" and record.chosen is None:
            raise DataError(f"{where}: field 'chosen' and 'rejected' are needed for preference training")
        if kind == "prompt":
            record = Record(where, prompt=prompt_of(record), extra=record.extra)
        out.append(record)
    return out


def prompt_of(record: Record) -> Text:
    """The prompt of any record: a conversation up to (not including) its last assistant turn."""
    if record.prompt is not None:
        return record.prompt
    messages = record.messages
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    if last == 0:
        raise DataError(f"{record.where}: field 'messages': no turn before the first assistant reply to use as a prompt")
    return messages[:last]


HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def parse_hh_transcript(where: str, field: str, text: str) -> list[dict]:
    """"\\n\\nHuman: hi\\n\\nAssistant: hello" -> [{"role": "user", ...}, {"role": "assistant", ...}]."""
    parts = HH_TURN.split(text)
    if parts[0].strip():
        raise DataError(f"{where}: field {field!r}: text before the first 'Human:' turn")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts) - 1, 2)]


def split_implicit_prompt(where: str, chosen: Text, rejected: Text) -> tuple[Text, Text, Text]:
    """(prompt, chosen, rejected) from two full conversations sharing a beginning (TRL's implicit
    prompt): the shared leading messages (or characters, for plain text) are the prompt."""
    if isinstance(chosen, list) and isinstance(rejected, list):
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        while n > 0 and chosen[n - 1]["role"] == "assistant":  # a reply starts with the assistant's turn
            n -= 1
        if n == 0 or n == len(chosen) or n == len(rejected):
            raise DataError(f"{where}: field 'chosen' and 'rejected' must share a prompt and differ after it")
        return chosen[:n], chosen[n:], rejected[n:]
    if isinstance(chosen, str) and isinstance(rejected, str):
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        if n == 0:
            raise DataError(f"{where}: field 'chosen' and 'rejected' share no beginning; give an explicit 'prompt'")
        return chosen[:n], chosen[n:], rejected[n:]
    raise DataError(f"{where}: field 'chosen' and 'rejected' must both be strings or both message lists")


def _text(where: str, field: str, value) -> Text:
    if isinstance(value, str):
        if value.startswith("\n\nHuman:"):
            return parse_hh_transcript(where, field, value)
        return value
    if isinstance(value, list):
        return _messages(where, field, value)
    raise DataError(f"{where}: field {field!r} must be a string or a list of messages, not {type(value).__name__}")


def _messages(where: str, field: str, value) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field {field!r} must be a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        calls = m.get("tool_calls") if isinstance(m, dict) and m.get("role") == "assistant" else None
        content = m.get("content") if isinstance(m, dict) else None
        if calls is not None and content is None:
            content = ""  # an assistant turn that only calls tools
        if not isinstance(m, dict) or not isinstance(content, str) or m.get("role") not in ROLES:
            raise DataError(f"{where}: field {field!r}: message {i} must be {{\"role\": system|user|assistant|tool, "
                            f"\"content\": string}}, not {json.dumps(m)[:80]}")
        message = {"role": m["role"], "content": content}
        if calls is not None:
            message["tool_calls"] = _tool_calls(where, f"{field}[{i}].tool_calls", calls)
        if m["role"] == "tool":
            message.update({k: m[k] for k in ("name", "tool_call_id") if isinstance(m.get(k), str)})
        out.append(message)
    return out


def _tool_calls(where: str, field: str, calls) -> list[dict]:
    """Calls in the chat templates' convention: {"type": "function", "function": {"name", "arguments": object}}
    (arguments given as a JSON string, OpenAI's wire form, are parsed)."""
    out = []
    for call in calls if isinstance(calls, list) else [None]:
        function = call.get("function") if isinstance(call, dict) else None
        arguments = function.get("arguments", {}) if isinstance(function, dict) else None
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                arguments = None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not isinstance(arguments, dict):
            raise DataError(f"{where}: field {field!r}: each call is {{\"type\": \"function\", \"function\": "
                            f"{{\"name\": string, \"arguments\": object}}}}, not {json.dumps(call)[:80]}")
        out.append({**({"id": call["id"]} if isinstance(call.get("id"), str) else {}), "type": "function",
                    "function": {"name": function["name"], "arguments": arguments}})
    return out


# --- tokenizing ---------------------------------------------------------------------------------------------
@dataclass
class Encoded:
    ids: list[int]
    mask: list[bool]  # True where the token is the model's to learn (an assistant turn, a completion)


def _render(tokenizer, messages: list[dict], generation_prompt: bool, where: str, tools=None) -> str:
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tools=tools)
    except TokenizerError as e:
        raise DataError(f"{where}: {e}") from None


def encode_conversation(tokenizer, messages: list[dict], where: str = "conversation",
                        train_on: str = "assistant", tools: list[dict] | None = None) -> Encoded:
    """Tokens of a conversation rendered with the tokenizer's chat template, turn by turn: each
    assistant turn is the text its rendering adds after the generation prompt, so the loss mask is
    exact for any prefix-stable template (ours, ChatML/SmolLM2, Llama 3), and a prompt is tokenized
    exactly as it is at generation time. train_on="last" learns the last assistant turn only.

    Tools (OpenAI definitions, TRL's `tools` column) and `tool_calls`/`tool` turns are rendered as at
    generation time (llmkit/tool_calls.py: the template's tools branch, or the <tool_call> fallback):
    the assistant's calls are its text and are learned; a tool's output is a turn the model reads, not
    one it writes, so it is never learned (Toolformer, Schick et al. 2023, trains on calls, not results)."""
    messages, tools = _with_tools(tokenizer, messages, tools)
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    ids: list[int] = []
    mask: list[bool] = []
    done = ""
    for i, message in enumerate(messages):
        pieces = []
        if message["role"] == "assistant":
            pieces.append((_render(tokenizer, messages[:i], True, where, tools), False))
        learn = message["role"] == "assistant" and (train_on == "assistant" or i == last)
        pieces.append((_render(tokenizer, messages[:i + 1], False, where, tools), learn))
        for text, learn_piece in pieces:
            if not text.startswith(done):
                raise DataError(f"{where}: the tokenizer's chat template renders turn {i} differently in a longer "
                                "conversation (it is not prefix-stable); loss masking needs one that is")
            piece_ids = tokenizer.encode(text[len(done):])
            ids += piece_ids
            mask += [learn_piece] * len(piece_ids)
            done = text
    return Encoded(ids, mask)


def _with_tools(tokenizer, messages: list[dict], tools) -> tuple[list[dict], list[dict] | None]:
    """The messages and the template's tools, with tool calls shown as at generation time."""
    if not tools and not any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
        return messages, None
    if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)):
        raise DataError("field 'tools' must be a list of OpenAI tool definitions")
    specs = [{"description": "", "parameters": {"type": "object"}, **t.get("function", t)} for t in tools or []]
    return chat_messages(messages, specs, "auto", tokenizer.chat_template)


def encode_prompt(tokenizer, prompt: Text, where: str = "prompt") -> list[int]:
    """The tokens a model continues from: a conversation + the generation prompt, or BOS + text."""
    if isinstance(prompt, list):
        return tokenizer.encode(_render(tokenizer, prompt, True, where))
    return tokenizer.encode(prompt, add_bos=True)


def encode_completion(tokenizer, prompt: Text, completion: Text, where: str = "completion") -> list[int]:
    """The tokens of a completion after `encode_prompt(prompt)`: assistant turn(s) with their end
    markers, or plain text followed by EOS."""
    if isinstance(prompt, list):
        if not completion or completion[0]["role"] != "assistant":
            raise DataError(f"{where}: a completion must start with an assistant message")
        full = encode_conversation(tokenizer, prompt + completion, where)
        start = len(encode_prompt(tokenizer, prompt, where))
        return full.ids[start:]
    ids = tokenizer.encode(completion)
    return ids + ([tokenizer.eos_id] if tokenizer.eos_id is not None else [])


def encode_sft(tokenizer, record: Record, prefix_ids: list[int] = ()) -> Encoded:
    """Tokens + loss mask of an SFT record; `prefix_ids` (a soft prompt's virtual tokens) go first."""
    if record.messages is not None:
        enc = encode_conversation(tokenizer, record.messages, record.where, tools=record.extra.get("tools"))
    else:
        prompt = encode_prompt(tokenizer, record.prompt, record.where)
        completion = encode_completion(tokenizer, record.prompt, record.completion, record.where)
        enc = Encoded(prompt + completion, [False] * len(prompt) + [True] * len(completion))
    if not any(enc.mask):
        raise DataError(f"{record.where}: nothing to learn: the record has no assistant turn or completion")
    return Encoded(list(prefix_ids) + enc.ids, [False] * len(prefix_ids) + enc.mask)


@dataclass
class EncodedPair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


def encode_pair(tokenizer, record: Record, max_len: int, prefix_ids: list[int] = ()) -> EncodedPair:
    """Prompt, chosen and rejected tokens, each full sequence at most max_len tokens: the prompt loses
    its beginning (the end of a conversation matters most for the reply), then replies are cut."""
    prompt = list(prefix_ids) + encode_prompt(tokenizer, record.prompt, record.where)
    chosen = encode_completion(tokenizer, record.prompt, record.chosen, record.where + " (chosen)")
    rejected = encode_completion(tokenizer, record.prompt, record.rejected, record.where + " (rejected)")
    return truncate_pair(EncodedPair(prompt, chosen, rejected), max_len, len(prefix_ids))


def truncate_pair(pair: EncodedPair, max_len: int, keep_start: int = 0, min_prompt: int = 8) -> EncodedPair:
    """Fit prompt + the longer reply into max_len: drop prompt tokens after the first keep_start (a soft
    prompt) from the front, down to min_prompt tokens; then cut both replies at the end."""
    prompt = pair.prompt
    excess = len(prompt) + max(len(pair.chosen), len(pair.rejected)) - max_len
    if excess > 0:
        keep = max(len(prompt) - excess, min(min_prompt, len(prompt)), keep_start)
        prompt = prompt[:keep_start] + prompt[len(prompt) - (keep - keep_start):]
    room = max_len - len(prompt)
    return EncodedPair(prompt, pair.chosen[:room], pair.rejected[:room])
