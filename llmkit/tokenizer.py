"""Byte-level BPE tokenizer, special tokens and the chat template.

The BPE itself (training, encoding) is the `tokenizers` library's; this module decides how llmkit
uses it: GPT-4-style pre-tokenization with every digit its own token (so "327" is "3" "2" "7", which
makes arithmetic learnable: Liu & Low 2023; Llama 1 also splits digits), byte-level so that any
Unicode string round-trips, and a Jinja chat template stored beside `tokenizer.json` in
`tokenizer_config.json` — the Hugging Face layout, so their tokenizer files load as they are.
"""

from __future__ import annotations

import codecs
import functools
import json
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as BackendTokenizer

from llmkit.atomic import atomic_write_text
from llmkit.errors import TokenizerError
from llmkit.yaml_config import load_json

# GPT-4's (cl100k) split pattern with `\p{N}{1,3}` narrowed to `\p{N}`: one digit per pre-token.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)

MAX_VOCAB_SIZE = 1 << 21  # a larger request is a typo (1e9 made the `tokenizers` trainer abort the process)
BOS, EOS, PAD, END = "<|bos|>", "<|eos|>", "<|pad|>", "<|end|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
SPECIAL_TOKENS = [BOS, EOS, PAD, END, *ROLE_TOKENS.values()]

# Each turn: role marker, content, <|end|>. Generation stops at <|end|> (or <|eos|>).
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' ~ message['role'] ~ '; use system, user or assistant') }}"
    "{% endif %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _encode(backend: BackendTokenizer, text: str) -> list[int]:
    # add_special_tokens=False: Hugging Face post-processors would add their own BOS; Tokenizer decides.
    # A long text through encode_batch: the same ids, but `tokenizers` releases the GIL there and not in
    # encode, so a server's event loop keeps running while a worker thread tokenizes megabytes.
    if len(text) > 65536:
        return backend.encode_batch([text], add_special_tokens=False)[0].ids
    return backend.encode(text, add_special_tokens=False).ids


class Tokenizer:
    """A `tokenizers.Tokenizer` plus what a model needs around it: BOS/EOS, stop tokens, chat template."""

    def __init__(self, backend: BackendTokenizer, *, bos_token: str | None = None, eos_token: str | None = None,
                 pad_token: str | None = None, chat_template: str | None = None,
                 extra_stop_tokens: Iterable[str] = (), mask_token: str | None = None):
        self.backend = backend
        self.mask_token = mask_token
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.chat_template = chat_template
        self.extra_stop_tokens = [t for t in extra_stop_tokens if backend.token_to_id(t) is not None]
        self.bos_id = self._id_of(bos_token)
        self.eos_id = self._id_of(eos_token)
        self.pad_id = self._id_of(pad_token)
        self.mask_id = self._id_of(mask_token)  # BERT's [MASK]: what `llmkit fill` predicts
        self._literal_backend: BackendTokenizer | None = None  # a copy that reads special-token text as text
        self._special_ids: dict[bool, frozenset[int]] = {}

    def _id_of(self, token: str | None) -> int | None:
        if token is None:
            return None
        token_id = self.backend.token_to_id(token)
        if token_id is None:
            raise TokenizerError(f"special token {token!r} is not in the vocabulary")
        return token_id

    # -- encoding
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool = False, literal: bool = False) -> list[int]:
        """The ids of `text`. Special-token text in it (`<|end|>`) becomes that control token, as a prompt
        written with a template's markup needs; with `literal`, it is read as the characters it is, as a
        document's or a message's text must be (a web page quoting `<|endoftext|>` ends no document)."""
        ids = _encode(self._literal() if literal else self.backend, text)
        return [self.bos_id, *ids] if add_bos and self.bos_id is not None else ids

    def _literal(self) -> BackendTokenizer:
        """The backend's twin with special-token matching off (`encode_special_tokens`), for message contents.
        A second object rather than a switch flipped on the shared one: a server tokenizes on several threads
        at once, and a flipped switch is seen by all of them (another request's markup read as text, or a
        user's `<|system|>` as the control token)."""
        if self._literal_backend is None:
            literal = BackendTokenizer.from_str(self.backend.to_str())
            literal.encode_special_tokens = True
            self._literal_backend = literal
        return self._literal_backend

    def encode_batch(self, texts: list[str], add_bos: bool = False, literal: bool = False) -> list[list[int]]:
        """`encode` of each text, spread over all cores by `tokenizers` (`literal` as there: the documents
        of a corpus are encoded with it, so their special-token text never becomes a control token)."""
        encodings = (self._literal() if literal else self.backend).encode_batch(texts, add_special_tokens=False)
        prefix = [self.bos_id] if add_bos and self.bos_id is not None else []
        return [prefix + e.ids for e in encodings]

    def encode_with_special_tokens(self, texts: list[str], max_len: int) -> list[list[int]]:
        """Each text as an encoder was trained to read it: wrapped by the tokenizer's own post-processor
        ([CLS] text [SEP] for BERT; nothing for llmkit's BPE), the text cut so the whole fits max_len."""
        room = max(max_len - self.backend.num_special_tokens_to_add(False), 0)
        out = []
        for encoding in self.backend.encode_batch(texts, add_special_tokens=False):
            if len(encoding.ids) > room:
                encoding.truncate(room)
            out.append(self.backend.post_process(encoding).ids)
        return out

    def encode_long(self, pieces: Iterable[str], add_bos: bool = False, window: int = 2048,
                    literal: bool = False) -> Iterator[list[int]]:
        """The ids of one long document given as consecutive pieces (`read_text_pieces`), in bounded
        memory: `encode` holds ~190 bytes per input byte, too much for a 100 MB document (`literal` as
        in `encode`).

        A piece after the first is encoded behind its predecessor's last character, whose ids are then
        dropped: a tokenizer that prefixes a text with a space marker (SentencePiece's Metaspace, Llama 2's
        normalizer) adds it to that anchor, not to the piece. Each cut is checked on a window around it
        (ids of the window == ids of its left part + ids of its right part); where a tokenizer would join
        across the cut, the piece is held back and joined to the next one, so the ids always equal
        `encode` of the whole text."""
        pending, anchor = None, None  # text not yet encoded; the character before it (None: the document's start)
        for piece in pieces:
            if not piece:
                continue
            if pending is None:
                pending = piece
            elif self._cut_is_exact(pending, piece, window, literal):
                yield self._encode_piece(pending, anchor, add_bos, literal)
                anchor, pending = pending[-1], piece
            else:
                pending += piece
        yield self._encode_piece(pending or "", anchor, add_bos, literal)

    def _encode_piece(self, text: str, anchor: str | None, add_bos: bool, literal: bool = False) -> list[int]:
        if anchor is None:
            return self.encode(text, add_bos=add_bos, literal=literal)
        ids = self._encode_continuation(anchor, text, literal)
        if ids is None:
            raise TokenizerError("this tokenizer changes the ids of a text's last character depending on what "
                                 "follows; it cannot encode a long document in pieces")
        return ids

    def _encode_continuation(self, anchor: str, text: str, literal: bool = False) -> list[int] | None:
        """ids of `text` as it continues after `anchor` (None if the anchor's own ids change)."""
        head = self.encode(anchor, literal=literal)
        ids = self.encode(anchor + text, literal=literal)
        return ids[len(head):] if ids[:len(head)] == head else None

    def _cut_is_exact(self, left: str, right: str, window: int, literal: bool = False) -> bool:
        """Does encoding `right` after `left`'s last character give the ids it has in `left + right`?
        Checked on the text around the cut (from a cut point in left's last `window` characters to one
        in right's first `window`), never fewer characters a side than the vocabulary's longest token: a
        narrower check could not see a token that spans the cut (hypothesis found "king| king" with a
        window of 1 or 2 and Llama 2's normaliser, which has no pre-tokenizer to stop merges at spaces)."""
        window = max(window, self._longest_token)
        start = (split_point(left, len(left) - window, len(left)) or len(left) - window) if len(left) > window else 0
        left_part = left[start:]
        stop = (split_point(right, 1, window) or window) if len(right) > window else len(right)
        right_part = right[:stop]
        continuation = self._encode_continuation(left_part[-1], right_part, literal)
        return continuation is not None and (self.encode(left_part + right_part, literal=literal)
                                             == self.encode(left_part, literal=literal) + continuation)

    @functools.cached_property
    def _longest_token(self) -> int:
        """Characters in the vocabulary's longest token string (bytes, for a byte-level one)."""
        return max(map(len, self.backend.get_vocab()), default=1)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def decode_reply(self, ids: Iterable[int]) -> str:
        """A generated reply's text: special tokens left out as the server's default leaves them (special_ids:
        tool-call tags and span sentinels stay)."""
        skipped = self.special_ids()
        return self.decode(t for t in ids if t not in skipped)

    def special_ids(self, keep_tool_tags: bool = True) -> frozenset[int]:
        """The tokens a reply's text leaves out (the server's `skip_special_tokens`, `LLM.generate`): those
        `tokenizers` marks special, what its own decode(skip_special_tokens=True) skips. keep_tool_tags: not
        the tool-call tags where a tokenizer has them as special tokens (Hermes-style ones may): calls are
        read from the text, so the tags must be in it (vLLM turns skipping off for its tool parsers). T5's
        span sentinels (<extra_id_N>) are always kept: a span model's reply is written in them."""
        if keep_tool_tags not in self._special_ids:
            from llmkit.tool_calls import CLOSE, OPEN

            kept = {OPEN, CLOSE} if keep_tool_tags else set()
            self._special_ids[keep_tool_tags] = frozenset(
                i for i, t in self.backend.get_added_tokens_decoder().items()
                if t.special and t.content not in kept and not re.fullmatch(r"<extra_id_\d+>", t.content))
        return self._special_ids[keep_tool_tags]

    def pieces(self, text: str) -> list[tuple[int, str]]:
        """(id, text of that token) for each token of `text`; a token holding part of a multi-byte
        character shows as its bytes, e.g. <0xE2 0x82>."""
        out = []
        for token_id in self.encode(text):
            piece = self.decode([token_id])
            if "\ufffd" in piece:
                raw = self.backend.id_to_token(token_id)
                piece = _bytes_label(raw)
            out.append((token_id, piece))
        return out

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes of one token: for a byte-level BPE, from its vocabulary entry (so half of a
        UTF-8 character shows as that byte, where decoding it alone gives U+FFFD); otherwise the UTF-8
        of its text."""
        raw = self.backend.id_to_token(token_id)
        table = _unicode_to_byte()
        if raw and all(ch in table for ch in raw):
            return bytes(table[ch] for ch in raw)
        return self.decode([token_id]).encode("utf-8")

    @property
    def stop_token_ids(self) -> list[int]:
        """Tokens that end an assistant turn: EOS and the template's end-of-turn marker."""
        ids = [self.eos_id] if self.eos_id is not None else []
        ids += [self.backend.token_to_id(t) for t in self.extra_stop_tokens]
        return sorted(set(ids))

    # -- chat
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            tools: list[dict] | None = None) -> str:
        """Render a conversation ([{"role": ..., "content": ...}, ...]) with the checkpoint's template;
        `tools` (OpenAI's [{"type": "function", "function": {...}}]) go to a template that has a tools branch."""
        if not self.chat_template:
            raise TokenizerError("this tokenizer has no chat template; use a chat model or `generate` instead")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise TokenizerError(f"message {i} must be an object with 'role' and 'content' fields")
        extra = {"tools": tools} if tools else {}
        return render_chat_template(self.chat_template, messages, add_generation_prompt,
                                    bos_token=self.bos_token or "", eos_token=self.eos_token or "", **extra)

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True,
                    tools: list[dict] | None = None) -> list[int]:
        """The token ids of a rendered conversation, where what the messages say is always text: a user
        who types `<|end|><|system|>` gets those characters, not the control tokens (a prompt injection
        otherwise). Only the template's own markup becomes special tokens.

        A message whose content holds no special-token text is tokenized inline with the template, as
        Hugging Face's `apply_chat_template(tokenize=True)` does, so ordinary conversations get exactly
        their usual ids. A content that does is marked with a sentinel while rendering and encoded on
        its own with special-token matching off (`tokenizers`' `encode_special_tokens`)."""
        specials = [t.content for t in self.backend.get_added_tokens_decoder().values() if t.special]
        risky = {i for i, m in enumerate(messages)
                 if isinstance(m, dict) and isinstance(m.get("content"), str) and any(t in m["content"] for t in specials)}
        if not risky:
            return self.encode(self.apply_chat_template(messages, add_generation_prompt, tools))
        # Private-use characters no template writes itself, and that survive filters such as `trim`.
        sentinel = {i: f"\ue000{i}\ue001" for i in risky}
        marked = [{**m, "content": sentinel[i]} if i in risky else m for i, m in enumerate(messages)]
        rendered = self.apply_chat_template(marked, add_generation_prompt, tools)
        pieces = re.split("(\ue000\\d+\ue001)", rendered)
        if sorted(p for p in pieces[1::2]) != sorted(sentinel.values()):
            raise TokenizerError("the chat template transforms message contents in a way llmkit cannot separate "
                                 "from its markup; remove special-token text (such as <|end|>) from the messages")
        ids = []
        for k, piece in enumerate(pieces):
            if k % 2 == 0:
                ids += self.encode(piece) if piece else []
                continue
            ids += self.encode(messages[int(piece[1:-1])]["content"], literal=True)
        return ids

    # -- persistence
    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token, "eos_token": self.eos_token, "pad_token": self.pad_token,
            "chat_template": self.chat_template,
            "llmkit_stop_tokens": self.extra_stop_tokens,
        }
        if self.mask_token is not None:
            config["mask_token"] = self.mask_token
        atomic_write_text(directory / "tokenizer.json", self.backend.to_str(pretty=False))
        atomic_write_text(directory / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        """Load `tokenizer.json` (+ `tokenizer_config.json`) from a directory, ours or Hugging Face's, or
        the `tokenizer.json` file itself. (A `.gguf` file's tokenizer is the converter's to read:
        `llmkit.convert.read_tokenizer`.)"""
        path = Path(path)
        if path.suffix == ".gguf":
            raise TokenizerError(f"{path}: a GGUF file, not a tokenizer.json; convert the model with "
                                 f"`llmkit convert {path} --out DIR` and use DIR, which holds its tokenizer")
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.exists():
            raise TokenizerError(f"{file}: no such file; train one with `llmkit tokenizer train` "
                                 "or point at a model directory that has tokenizer.json")
        try:
            backend = BackendTokenizer.from_file(str(file))
        except Exception as e:  # the library raises plain Exception subclasses with parser messages
            raise TokenizerError(f"{file}: not a valid tokenizer.json ({e})") from None
        # A file's padding/truncation settings (BERT's pads every text to 128) are its trainer's; llmkit
        # decides lengths itself, so `encode` returns the text's tokens and nothing else.
        backend.no_padding()
        backend.no_truncation()
        config = {}
        config_file = file.parent / "tokenizer_config.json"
        if config_file.exists():
            config = load_json(config_file, TokenizerError)
            _check_tokenizer_config(config, config_file)
        template = config.get("chat_template")
        if isinstance(template, list):  # HF allows named templates: [{"name": "default", "template": ...}]
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if template is None and (file.parent / "chat_template.jinja").exists():
            template = (file.parent / "chat_template.jinja").read_text()
        return cls(backend, bos_token=_token_text(config.get("bos_token")),
                   eos_token=_token_text(config.get("eos_token")), pad_token=_token_text(config.get("pad_token")),
                   chat_template=template, extra_stop_tokens=config.get("llmkit_stop_tokens", []),
                   mask_token=_token_text(config.get("mask_token")))

    # -- training
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> "Tokenizer":
        """Train a byte-level BPE on an iterable of documents, with llmkit's special tokens and template."""
        if vocab_size < 256 + len(SPECIAL_TOKENS):
            raise TokenizerError(f"vocab size {vocab_size} is too small: a byte-level BPE needs at least "
                                 f"{256 + len(SPECIAL_TOKENS)} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)")
        if vocab_size > MAX_VOCAB_SIZE:
            raise TokenizerError(f"vocab size {vocab_size:,} is too large: at most {MAX_VOCAB_SIZE:,} (the largest "
                                 "open models use ~256k)")
        if not 0 <= min_frequency < 2**32:
            raise TokenizerError(f"min frequency {min_frequency} must be between 0 and 2^32 - 1 (2 is usual)")
        backend = BackendTokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
            special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        seen = [0]

        def counted(texts):
            for text in texts:
                seen[0] += len(text)
                yield text

        backend.train_from_iterator(counted(texts), trainer=trainer)
        if seen[0] == 0:  # a BPE of nothing is the 256 bytes and the special tokens: not what was asked for
            raise TokenizerError("no text to train the tokenizer on (the inputs are empty)")
        return cls(backend, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                   chat_template=DEFAULT_CHAT_TEMPLATE, extra_stop_tokens=[END])


def read_text_files(paths: Iterable[str | Path], chunk_chars: int = 1 << 20) -> Iterator[str]:
    """Yield the text of each file in pieces of about chunk_chars, cut at whitespace (flat memory, even
    for a file that is one long line)."""
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"{path}: no such file")
        yield from read_text_pieces(path, chunk_chars, TokenizerError)


def read_text_pieces(path: str | Path, chunk_chars: int = 1 << 18, error=TokenizerError) -> Iterator[str]:
    """One text file (UTF-8, universal newlines: CRLF and CR read as LF) as consecutive pieces of about
    `chunk_chars` characters, each cut where a pre-token cannot continue (`split_point`), read a block
    at a time: "".join(pieces) is the whole text, and memory stays flat however long the file is."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    buffer, offset = "", 0
    with open(path, "rb") as f:
        while block := f.read(chunk_chars):
            try:
                buffer += decoder.decode(block)
            except UnicodeDecodeError as e:
                pending = len(decoder.getstate()[0])
                raise error(f"{path}: byte {offset - pending + e.start}: the file is not UTF-8; "
                            "convert it (iconv -t UTF-8)") from None
            offset += len(block)
            held = buffer.endswith("\r")  # a CRLF may straddle two blocks
            text = (buffer[:-1] if held else buffer).replace("\r\n", "\n").replace("\r", "\n")
            pieces = list(text_pieces(text, chunk_chars, keep_last=True))
            yield from pieces[:-1]
            buffer = pieces[-1] + ("\r" if held else "") if pieces else ("\r" if held else "")
        try:
            buffer += decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise error(f"{path}: the file ends inside a UTF-8 character; convert it (iconv -t UTF-8)") from None
    yield from text_pieces(buffer.replace("\r\n", "\n").replace("\r", "\n"), chunk_chars)


def text_pieces(text: str, chunk_chars: int = 1 << 18, keep_last: bool = False) -> Iterator[str]:
    """`text` as consecutive pieces of about `chunk_chars` characters, cut at `split_point`s. With
    keep_last, the last piece is always yielded, however short (the caller appends more text to it)."""
    while len(text) > 2 * chunk_chars:
        cut = split_point(text, chunk_chars // 2, 2 * chunk_chars)
        if cut is None:  # no whitespace near: look further (a run without whitespace is one pre-token anyway)
            cut = split_point(text, 2 * chunk_chars, len(text) - 1)
            if cut is None:
                break
        yield text[:cut]
        text = text[cut:]
    if text or keep_last:
        yield text


def split_point(text: str, start: int, end: int) -> int | None:
    """The last place in [start, end) where text may be cut without changing its tokens: after a
    newline that a non-space follows, else before a space that stands between two non-spaces. GPT-2-,
    GPT-4- and Llama-3-style pre-tokenizers never join characters across such a place (a newline ends
    a whitespace run; a space begins the next word), and BPE merges only inside a pre-token; `encode_long`
    checks every cut anyway."""
    start, end = max(start, 1), min(end, len(text) - 1)
    i = text.rfind("\n", start - 1, end)
    while i != -1:
        if not text[i + 1].isspace():
            return i + 1
        i = text.rfind("\n", start - 1, i)
    i = text.rfind(" ", start, end)
    while i != -1:
        if not text[i - 1].isspace() and not text[i + 1].isspace():
            return i
        i = text.rfind(" ", start, i)
    return None


# A chat template is code from a model file: it runs sandboxed and bounded (a template that loops or
# builds a huge string stops with an error instead of taking the machine).
TEMPLATE_MAX_CHARS = 16 << 20  # 16M characters of rendered prompt: far beyond any model's context
TEMPLATE_MAX_SECONDS = 10.0


@functools.lru_cache(maxsize=16)
def _compiled_chat_template(template: str):
    """The template compiled once in its sandbox: compiling costs milliseconds, far more than rendering, and
    a server or a batch job renders the same template for every request."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TokenizerError(f"chat template: {message}")

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**"])

        def call_binop(self, context, operator, left, right):
            # 'a' * 10**10 and 10**10**10 would allocate before any output could be measured
            if operator == "**" and isinstance(right, int) and abs(right) > 1000:
                raise TokenizerError(f"chat template computes an exponent of {right}; refusing it")
            if operator == "*" and isinstance(left, int) and isinstance(right, (str, list, tuple)):
                left, right = right, left
            if operator == "*" and isinstance(left, (str, list, tuple)) and isinstance(right, int) \
                    and len(left) * right > TEMPLATE_MAX_CHARS:
                raise TokenizerError(f"chat template builds a value of {len(left) * right:,} items; "
                                     f"the limit is {TEMPLATE_MAX_CHARS:,}")
            return super().call_binop(context, operator, left, right)

    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def render_chat_template(template: str, messages: list[dict], add_generation_prompt: bool, **extra) -> str:
    """Render a Hugging Face-style Jinja chat template in a sandbox (as transformers does:
    trim_blocks and lstrip_blocks on, `raise_exception` available), bounded in output size and time."""
    import jinja2

    try:
        chunks, size, start = [], 0, time.monotonic()
        for chunk in _compiled_chat_template(template).generate(
                messages=messages, add_generation_prompt=add_generation_prompt, **extra):
            chunks.append(chunk)
            size += len(chunk)
            if size > TEMPLATE_MAX_CHARS:
                raise TokenizerError(f"chat template output passed {TEMPLATE_MAX_CHARS:,} characters; "
                                     "the template or the messages are broken")
            if time.monotonic() - start > TEMPLATE_MAX_SECONDS:
                raise TokenizerError(f"chat template took more than {TEMPLATE_MAX_SECONDS:.0f} s to render; "
                                     "the template or the messages are broken")
        return "".join(chunks)
    except jinja2.TemplateError as e:
        raise TokenizerError(f"chat template could not be rendered: {e}") from None
    except (MemoryError, RecursionError, OverflowError) as e:
        raise TokenizerError(f"chat template could not be rendered: {type(e).__name__}") from None


def _check_tokenizer_config(config: dict, path: Path) -> None:
    """The tokenizer_config.json keys llmkit reads, each of the type it must have (a model file is data
    from anywhere: a number for a token would otherwise fail inside the Rust tokenizer)."""
    def is_token(value) -> bool:
        return value is None or isinstance(value, str) or (isinstance(value, dict) and isinstance(value.get("content"), str))

    problem = None
    for key in ("bos_token", "eos_token", "pad_token", "mask_token"):
        if not is_token(config.get(key)):
            problem = f"{key} must be a token's text, not {config[key]!r}"
    template = config.get("chat_template")
    if not (template is None or isinstance(template, str) or (isinstance(template, list) and all(
            isinstance(t, dict) and isinstance(t.get("template"), str) for t in template))):
        problem = f"chat_template must be a template string (or a list of {{name, template}}), not {template!r:.80}"
    stops = config.get("llmkit_stop_tokens", [])
    if not (isinstance(stops, list) and all(isinstance(t, str) for t in stops)):
        problem = f"llmkit_stop_tokens must be a list of token texts, not {stops!r}"
    if problem:
        raise TokenizerError(f"{path}: {problem}; fix or delete the file")


def _token_text(token) -> str | None:
    if isinstance(token, dict):  # HF AddedToken serialisation
        return token.get("content")
    return token


@functools.lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    return {v: k for k, v in _byte_to_unicode().items()}


def _bytes_label(raw: str) -> str:
    # Invert the GPT-2 byte-to-unicode map to show the raw bytes of a partial UTF-8 token.
    table = _unicode_to_byte()
    if all(ch in table for ch in raw):
        return "<" + " ".join(f"0x{table[ch]:02X}" for ch in raw) + ">"
    return raw


def _byte_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte -> printable character map (Radford et al. 2019, encoder.py).
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping
