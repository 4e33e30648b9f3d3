"""Byte-level BPE tokenizer, special tokens and the chat template.

The BPE itself (training, encoding) is the `tokenizers` library's; this module decides how llmkit
uses it: GPT-4-style pre-tokenization with every digit its own token (so "327" is "3" "2" "7", which
makes arithmetic learnable: Liu & Low 2023; Llama 1 also splits digits), byte-level so that any
Unicode string round-trips, and a Jinja chat template stored beside `tokenizer.json` in
`tokenizer_config.json` — the Hugging Face layout, so their tokenizer files load as they are.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as BackendTokenizer

from llmkit.atomic import atomic_write_text
from llmkit.errors import TokenizerError

# GPT-4's (cl100k) split pattern with `\p{N}{1,3}` narrowed to `\p{N}`: one digit per pre-token.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)

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


class Tokenizer:
    """A `tokenizers.Tokenizer` plus what a model needs around it: BOS/EOS, stop tokens, chat template."""

    def __init__(self, backend: BackendTokenizer, *, bos_token: str | None = None, eos_token: str | None = None,
                 pad_token: str | None = None, chat_template: str | None = None,
                 extra_stop_tokens: Iterable[str] = ()):
        self.backend = backend
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.chat_template = chat_template
        self.extra_stop_tokens = [t for t in extra_stop_tokens if backend.token_to_id(t) is not None]
        self.bos_id = self._id_of(bos_token)
        self.eos_id = self._id_of(eos_token)
        self.pad_id = self._id_of(pad_token)

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

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        # add_special_tokens=False: Hugging Face post-processors would add their own BOS; we decide.
        ids = self.backend.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if add_bos and self.bos_id is not None else ids

    def encode_batch(self, texts: list[str], add_bos: bool = False) -> list[list[int]]:
        encodings = self.backend.encode_batch(texts, add_special_tokens=False)
        prefix = [self.bos_id] if add_bos and self.bos_id is not None else []
        return [prefix + e.ids for e in encodings]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

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

    @property
    def stop_token_ids(self) -> list[int]:
        """Tokens that end an assistant turn: EOS and the template's end-of-turn marker."""
        ids = [self.eos_id] if self.eos_id is not None else []
        ids += [self.backend.token_to_id(t) for t in self.extra_stop_tokens]
        return sorted(set(ids))

    # -- chat
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Render a conversation ([{"role": ..., "content": ...}, ...]) with the checkpoint's template."""
        if not self.chat_template:
            raise TokenizerError("this tokenizer has no chat template; use a chat model or `generate` instead")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise TokenizerError(f"message {i} must be an object with 'role' and 'content' fields")
        return render_chat_template(self.chat_template, messages, add_generation_prompt,
                                    bos_token=self.bos_token or "", eos_token=self.eos_token or "")

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
        config = {}
        config_file = file.parent / "tokenizer_config.json"
        if config_file.exists():
            try:
                config = json.loads(config_file.read_text())
            except json.JSONDecodeError as e:
                raise TokenizerError(f"{config_file}: line {e.lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(config, dict):
                raise TokenizerError(f"{config_file}: expected a JSON object, found {type(config).__name__}")
        template = config.get("chat_template")
        if isinstance(template, list):  # HF allows named templates: [{"name": "default", "template": ...}]
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if template is None and (file.parent / "chat_template.jinja").exists():
            template = (file.parent / "chat_template.jinja").read_text()
        return cls(backend, bos_token=_token_text(config.get("bos_token")),
                   eos_token=_token_text(config.get("eos_token")), pad_token=_token_text(config.get("pad_token")),
                   chat_template=template, extra_stop_tokens=config.get("llmkit_stop_tokens", []))

    # -- training
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> "Tokenizer":
        """Train a byte-level BPE on an iterable of documents, with llmkit's special tokens and template."""
        if vocab_size < 256 + len(SPECIAL_TOKENS):
            raise TokenizerError(f"vocab size {vocab_size} is too small: a byte-level BPE needs at least "
                                 f"{256 + len(SPECIAL_TOKENS)} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)")
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
        backend.train_from_iterator(texts, trainer=trainer)
        return cls(backend, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                   chat_template=DEFAULT_CHAT_TEMPLATE, extra_stop_tokens=[END])


def read_text_files(paths: Iterable[str | Path], chunk_chars: int = 1 << 20) -> Iterator[str]:
    """Yield the text of each file in pieces of about chunk_chars, split at line ends (flat memory)."""
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"{path}: no such file")
        with open(path, encoding="utf-8", errors="strict") as f:
            buf: list[str] = []
            size = 0
            try:
                for line in f:
                    buf.append(line)
                    size += len(line)
                    if size >= chunk_chars:
                        yield "".join(buf)
                        buf, size = [], 0
            except UnicodeDecodeError as e:
                raise TokenizerError(f"{path}: byte {e.start} is not valid UTF-8; convert the file to UTF-8") from None
            if buf:
                yield "".join(buf)


def render_chat_template(template: str, messages: list[dict], add_generation_prompt: bool, **extra) -> str:
    """Render a Hugging Face-style Jinja chat template in a sandbox (as transformers does:
    trim_blocks and lstrip_blocks on, `raise_exception` available)."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TokenizerError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                 **extra)
    except jinja2.TemplateError as e:
        raise TokenizerError(f"chat template could not be rendered: {e}") from None


def _token_text(token) -> str | None:
    if isinstance(token, dict):  # HF AddedToken serialisation
        return token.get("content")
    return token


def _bytes_label(raw: str) -> str:
    # Invert the GPT-2 byte-to-unicode map to show the raw bytes of a partial UTF-8 token.
    table = {v: k for k, v in _byte_to_unicode().items()}
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
