"""Tokenizers for real models: Hugging Face ``tokenizer.json`` files and the ones described in GGUF files.

- ``load_tokenizer(path)``: a ``tokenizer.json`` (or a folder holding one), with the special tokens
  and chat template of a ``tokenizer_config.json`` beside it.
- ``tokenizer_from_gguf(gguf_file)``: the byte-level BPE (GPT-2 style) tokenizer a GGUF file
  describes in its ``tokenizer.ggml.*`` metadata, built the way llama.cpp tokenizes, with the
  file's own chat template.

Both return a ``Tokenizer``: a thin wrapper around ``tokenizers.Tokenizer`` with the special token
ids and ``apply_chat_template`` (the model's jinja2 template rendered in a sandbox, as transformers
renders it). A rendering may hold at most ``MAX_CHAT_TEMPLATE_CHARS`` characters (1,000,000); a
template that would write more is refused, before the text is built where the sandbox can tell.
"""

from __future__ import annotations

import functools
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from jirl.config import JirlError

# The most characters a chat template may render (and the longest string or list it may build on
# the way): a chat prompt is a few thousand tokens, so 1,000,000 characters is generous, while a
# hostile or broken template (``{{ 'a' * 200000000 }}``) is stopped before it eats the memory.
MAX_CHAT_TEMPLATE_CHARS = 1_000_000

# llama.cpp's token types (``tokenizer.ggml.token_type``).
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4

# Pre-tokenizer splits, as llama.cpp applies them for each ``tokenizer.ggml.pre`` name: each regex
# in turn cuts every piece left by the previous ones, keeping the matches as pieces of their own.
# BPE merges never cross a piece boundary, so the split must be the one the merges were learned on.
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
SINGLE_DIGIT_SPLIT = r"\p{N}"
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZER_SPLITS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("gpt2", "gpt-2", "mpt", "olmo", "jais"), (GPT2_SPLIT,)),
    # StarCoder's family (SmolLM among them): every digit on its own, then GPT-2's split.
    **dict.fromkeys(
        ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"),
        (SINGLE_DIGIT_SPLIT, GPT2_SPLIT),
    ),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "dbrx", "smaug-bpe", "falcon3"), (LLAMA3_SPLIT,)),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen"), (QWEN2_SPLIT,)),
}


class Tokenizer:
    """A text tokenizer with its special token ids and chat template.

    Wraps a ``tokenizers.Tokenizer`` (``.backend``); construct with ``load_tokenizer`` or
    ``tokenizer_from_gguf``.
    """

    def __init__(
        self,
        backend: Any,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        chat_template: str | None = None,
        source: str = "",
    ):
        self.backend = backend
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.pad_token = pad_token
        self.chat_template = chat_template
        self.source = source

    def __repr__(self) -> str:
        return f"Tokenizer({self.source!r}, vocab_size={self.vocab_size})"

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added (special) tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str | None) -> int | None:
        """Id of ``token``, or None when it is None or not in the vocabulary."""
        return None if token is None else self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary entry of ``token_id`` (in the tokenizer's own spelling), or None."""
        return self.backend.id_to_token(token_id)

    @property
    def bos_id(self) -> int | None:
        """Id of the beginning-of-sequence token, if the tokenizer has one."""
        return self.token_to_id(self.bos_token)

    @property
    def eos_id(self) -> int | None:
        """Id of the end-of-sequence token (for chat models: the end-of-turn token), if any."""
        return self.token_to_id(self.eos_token)

    @property
    def pad_id(self) -> int | None:
        """Id of the padding token, if any."""
        return self.token_to_id(self.pad_token)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``. Special tokens written in the text (``<|im_start|>``) always become
        their single id; ``add_special_tokens`` adds the ones the tokenizer puts around a sequence."""
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of token ``ids``, leaving special tokens out unless ``skip_special_tokens`` is False."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **variables: Any
    ) -> str:
        """Render ``messages`` (``[{"role": ..., "content": ...}, ...]``) with the model's chat template.

        ``add_generation_prompt`` appends the header of an assistant turn. Extra keyword arguments
        become template variables, as in transformers. A rendering longer than
        ``MAX_CHAT_TEMPLATE_CHARS`` characters is refused with a ``JirlError``: the text is
        produced piece by piece and dropped as soon as it passes the cap, and repeating,
        concatenating or padding a string or list past the cap inside the template is refused
        before it happens.
        """
        if self.chat_template is None:
            raise JirlError(f"Tokenizer {self.source!r} has no chat template.")
        check_messages(messages)
        context = {
            "bos_token": self.bos_token or "",
            "eos_token": self.eos_token or "",
            "pad_token": self.pad_token or "",
            **variables,
            "messages": [dict(message) for message in messages],
            "add_generation_prompt": add_generation_prompt,
        }
        try:
            template = compile_chat_template(self.chat_template)
            return render_capped(template, context)
        except ChatTemplateTooLong as err:
            raise JirlError(
                f"The chat template of {self.source!r} was refused: {err}. A chat prompt may be at most "
                f"MAX_CHAT_TEMPLATE_CHARS = {MAX_CHAT_TEMPLATE_CHARS:,} characters; check the template and the "
                "length of the messages"
            ) from None
        except ChatTemplateError as err:
            raise JirlError(f"The chat template of {self.source!r} refused the messages: {err}") from err
        except jinja2.TemplateError as err:  # includes the sandbox's SecurityError
            raise JirlError(f"The chat template of {self.source!r} failed: {type(err).__name__}: {err}") from err

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the chat-template rendering of ``messages``."""
        return self.encode(self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt))


# --------------------------------------------------------------------------- chat templates


class ChatTemplateError(Exception):
    """Raised from inside a template through its ``raise_exception`` helper."""


class ChatTemplateTooLong(SecurityError):
    """A chat template that renders (or builds on the way) more than ``MAX_CHAT_TEMPLATE_CHARS``."""


def check_template_size(length: int, what: str) -> None:
    """``ChatTemplateTooLong`` when ``length`` (of ``what``) passes ``MAX_CHAT_TEMPLATE_CHARS``."""
    if length > MAX_CHAT_TEMPLATE_CHARS:
        raise ChatTemplateTooLong(f"{what} would be {length:,} long, over the cap of {MAX_CHAT_TEMPLATE_CHARS:,}")


def render_capped(template: Any, context: Mapping[str, Any]) -> str:
    """``template.render(**context)``, piece by piece, stopping with ``ChatTemplateTooLong`` as
    soon as the text passes ``MAX_CHAT_TEMPLATE_CHARS`` characters."""
    pieces, length = [], 0
    for piece in template.generate(**context):
        length += len(piece)
        check_template_size(length, "the rendered chat prompt")
        pieces.append(piece)
    return "".join(pieces)


def _sized(value: Any) -> bool:
    return isinstance(value, (str, list, tuple))


def _count(value: Any) -> int | None:
    """``value`` as a repeat count (an int, not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# Widths in printf-style (``%10s``) and str.format (``{:>10}``) format strings.
_PERCENT_WIDTH = re.compile(r"%[#0 +\-]*(\d+)")
_FORMAT_WIDTH = re.compile(r"\{[^{}]*:[^{}\d]*(\d+)")


def _check_format_widths(template: str, pattern: re.Pattern) -> None:
    widest = max((int(width) for width in pattern.findall(template)), default=0)
    check_template_size(widest, "a field width in a format string")


def _check_binop(op: str, left: Any, right: Any) -> None:
    """Refuse ``left <op> right`` (an operator the chat sandbox intercepts) when its result would
    pass the cap (for ``**``: have more digits than that), before it is computed."""
    if op == "*":
        times = _count(right) if _sized(left) else _count(left) if _sized(right) else None
        if times is not None:
            check_template_size(max(times, 0) * len(left if _sized(left) else right), "a repeated string or list")
    elif op == "+":
        if _sized(left) and _sized(right):
            check_template_size(len(left) + len(right), "a concatenated string or list")
    elif op == "%":
        if isinstance(left, str):
            _check_format_widths(left, _PERCENT_WIDTH)
            if "*" in left:  # widths taken from the arguments
                for value in right if isinstance(right, tuple) else (right,):
                    if _count(value) is not None:
                        check_template_size(abs(value), "a field width in a format string")
    elif op == "**":
        base, exponent = _count(left), _count(right)
        if base is not None and exponent is not None and exponent > 0 and abs(base) > 1:
            check_template_size(exponent * abs(base).bit_length() // 3, "the digits of a power")


def _replaced_length(text: str, args: tuple) -> int:
    """The length of ``text.replace(old, new)`` for ``args = (old, new, ...)``."""
    if len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        return len(text) + text.count(args[0]) * max(len(args[1]) - len(args[0]), 0)
    return len(text)


# String methods that can make a long string out of a short one, each with the length of the
# string it would make: f(the string, positional arguments) -> length (checked before the call).
_STRING_METHOD_SIZES = {
    "ljust": lambda s, args: max(len(s), _count(args[0]) or 0),
    "rjust": lambda s, args: max(len(s), _count(args[0]) or 0),
    "center": lambda s, args: max(len(s), _count(args[0]) or 0),
    "zfill": lambda s, args: max(len(s), _count(args[0]) or 0),
    "expandtabs": lambda s, args: len(s) + s.count("\t") * max(_count(args[0]) or 8, 0),
    "replace": _replaced_length,
    "join": lambda s, args: sum(len(x) if isinstance(x, str) else 0 for x in args[0]) + len(s) * len(args[0])
    if isinstance(args[0], (list, tuple)) else 0,
}


class ChatTemplateEnvironment(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox, with the size checks of ``MAX_CHAT_TEMPLATE_CHARS`` on the
    operators, string methods and filters that can make long text out of short."""

    # Intercepted operators are not folded at compile time either, so the checks always run.
    intercepted_binops = frozenset({"*", "+", "%", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """Refuse a ``*``, ``+``, ``%`` or ``**`` whose result would pass the output cap, before computing it."""
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        """Refuse string methods and filters whose result would pass the output cap, then call."""
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(owner, str) and args:
            size = _STRING_METHOD_SIZES.get(name)
            if size is not None:
                check_template_size(size(owner, args), f"the result of str.{name}")
        wrapped = getattr(getattr(__obj, "__wrapped__", None), "__self__", None)  # the sandbox's str.format
        if isinstance(wrapped, str) and name in ("format", "format_map"):
            _check_format_widths(wrapped, _FORMAT_WIDTH)
        return super().call(__context, __obj, *args, **kwargs)


def _bounded_filter(name: str, size: Any, filter_fn: Any) -> Any:
    """jinja2's filter ``filter_fn`` with a check of the length it would make, ``size(value,
    args)``, before it runs."""

    takes_context = getattr(filter_fn, "jinja_pass_arg", None) is not None  # e.g. replace: eval context first

    @functools.wraps(filter_fn)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        value, *rest = args[1:] if takes_context else args
        check_template_size(size(value, tuple(rest), kwargs), f"the result of the {name!r} filter")
        return filter_fn(*args, **kwargs)

    return bounded


def _indent_size(value: Any, args: tuple, kwargs: dict) -> int:
    width = args[0] if args else kwargs.get("width", 4)
    width = len(width) if isinstance(width, str) else max(_count(width) or 0, 0)
    return len(str(value)) + width * (str(value).count("\n") + 1)


def _center_size(value: Any, args: tuple, kwargs: dict) -> int:
    return max(len(str(value)), _count(args[0] if args else kwargs.get("width", 80)) or 0)


def _replace_size(value: Any, args: tuple, kwargs: dict) -> int:
    return _replaced_length(str(value), args)


def _format_filter_size(value: Any, args: tuple, kwargs: dict) -> int:
    if isinstance(value, str):
        _check_format_widths(value, _PERCENT_WIDTH)
    return len(str(value))


def raise_exception(message: str) -> None:
    """Template helper: templates call it to reject the conversation they were given."""
    raise ChatTemplateError(message)


def tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False) -> str:
    """Template filter: JSON as transformers renders it (non-ASCII kept, unlike jinja2's own filter).

    Written piece by piece, stopping once it passes ``MAX_CHAT_TEMPLATE_CHARS`` characters."""
    if isinstance(indent, int) and not isinstance(indent, bool):
        check_template_size(indent, "the indent of the 'tojson' filter")
    encoder = json.JSONEncoder(indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)
    pieces, length = [], 0
    for piece in encoder.iterencode(value):
        length += len(piece)
        check_template_size(length, "the result of the 'tojson' filter")
        pieces.append(piece)
    return "".join(pieces)


def strftime_now(format_string: str) -> str:
    """Template helper: the current local time formatted by ``format_string``."""
    return datetime.now().strftime(format_string)


@functools.lru_cache(maxsize=16)
def compile_chat_template(template: str) -> Any:
    """Compile a chat template in jinja2's immutable sandbox with transformers' settings and helpers."""
    # trim_blocks / lstrip_blocks: templates are written expecting the whitespace handling HF uses.
    environment = ChatTemplateEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    for name, size in (("center", _center_size), ("indent", _indent_size), ("replace", _replace_size),
                       ("format", _format_filter_size)):
        environment.filters[name] = _bounded_filter(name, size, environment.filters[name])
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = strftime_now
    try:
        return environment.from_string(template)
    except jinja2.TemplateSyntaxError as err:
        raise JirlError(f"The chat template does not parse: {err} (line {err.lineno}).") from err


def check_messages(messages: Sequence[Mapping[str, Any]]) -> None:
    """Reject anything but a list of ``{"role": str, "content": ...}`` mappings, naming the bad entry."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise JirlError(f"Chat messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}.")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str) or "content" not in message:
            raise JirlError(f"Chat message {index} needs a string 'role' and a 'content': {message!r}")


# --------------------------------------------------------------------------- tokenizer.json


def token_content(entry: Any) -> str | None:
    """A special token as ``tokenizer_config.json`` writes it: a string or ``{"content": ...}``."""
    if isinstance(entry, Mapping):
        return entry.get("content")
    return entry if isinstance(entry, str) else None


def pick_chat_template(entry: Any) -> str | None:
    """The default chat template of a config's ``chat_template``: a string or a list of named ones."""
    if isinstance(entry, str):
        return entry
    if isinstance(entry, list):
        named = {item.get("name"): item.get("template") for item in entry if isinstance(item, Mapping)}
        return named.get("default") or next(iter(named.values()), None)
    return None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or {} when the file does not exist."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise JirlError(f"{path} is not valid JSON: {err}") from err
    return data if isinstance(data, dict) else {}


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A ``Tokenizer`` from a Hugging Face ``tokenizer.json`` (or a folder holding one).

    Special tokens and the chat template come from ``tokenizer_config.json`` beside it (special
    tokens also from ``special_tokens_map.json``; a template also from ``chat_template.jinja``).
    Padding and truncation configured in the file are switched off.
    """
    from tokenizers import Tokenizer as Backend

    path = Path(path).expanduser()
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise JirlError(f"Tokenizer file not found: {file}")
    try:
        backend = Backend.from_file(str(file))
    except Exception as err:  # tokenizers raises a bare Exception for malformed files
        raise JirlError(f"{file} is not a readable tokenizer.json: {err}") from err
    # Some files switch on padding / truncation (all-MiniLM-L6-v2 pads every encoding to 128);
    # encode() returns the plain ids, as transformers does unless asked to pad or truncate.
    backend.no_padding()
    backend.no_truncation()
    config = {**read_json(file.parent / "special_tokens_map.json"), **read_json(file.parent / "tokenizer_config.json")}
    template = pick_chat_template(config.get("chat_template"))
    jinja_file = file.parent / "chat_template.jinja"
    if template is None and jinja_file.is_file():
        template = jinja_file.read_text(encoding="utf-8")
    return Tokenizer(
        backend,
        bos_token=token_content(config.get("bos_token")),
        eos_token=token_content(config.get("eos_token")),
        pad_token=token_content(config.get("pad_token")),
        chat_template=template,
        source=str(file),
    )


# --------------------------------------------------------------------------- GGUF


@functools.lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible spelling of bytes as printable characters (space -> 'Ġ', newline -> 'Ċ').

    Printable Latin-1 bytes stand for themselves; the other 68 bytes take the code points from 256
    on, in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    spelling = {byte: chr(byte) for byte in printable}
    shifted = (byte for byte in range(256) if byte not in spelling)
    spelling.update({byte: chr(256 + n) for n, byte in enumerate(shifted)})
    return spelling


def byte_level_spelling(token: str) -> str:
    """``token`` as a byte-level vocabulary spells it. llama.cpp stores most tokens that way already,
    but one whose bytes are not valid UTF-8 may come back raw, and the merges name the spelled form."""
    spelling = byte_to_unicode()
    alphabet = set(spelling.values())
    if set(token) <= alphabet:
        return token
    return "".join(spelling[byte] for byte in token.encode("utf-8"))


def byte_level_pre_tokenizer(pre: str | None) -> Any:
    """The pre-tokenizer llama.cpp uses for ``tokenizer.ggml.pre`` = ``pre`` (GPT-2's when absent)."""
    from tokenizers import Regex, pre_tokenizers

    splits = PRE_TOKENIZER_SPLITS.get(pre or "gpt2")
    if splits is None:
        raise JirlError(
            f"Unsupported GGUF pre-tokenizer {pre!r} (tokenizer.ggml.pre); supported: "
            f"{', '.join(sorted(PRE_TOKENIZER_SPLITS))}."
        )
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(split), behavior="isolated") for split in splits]
        # The regexes above did the splitting; ByteLevel only respells bytes.
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )


def bos_eos_processor(bos: tuple[str, int] | None, eos: tuple[str, int] | None) -> Any:
    """A post-processor putting ``bos`` before and ``eos`` after each sequence ((token, id) or None)."""
    from tokenizers import processors

    single = ([f"{bos[0]}:0"] if bos else []) + ["$A:0"] + ([f"{eos[0]}:0"] if eos else [])
    pair = single + ([f"{bos[0]}:1"] if bos else []) + ["$B:1"] + ([f"{eos[0]}:1"] if eos else [])
    return processors.TemplateProcessing(
        single=" ".join(single), pair=" ".join(pair), special_tokens=[t for t in (bos, eos) if t is not None]
    )


def metadata_token(metadata: Mapping[str, Any], tokens: Sequence[str], key: str) -> str | None:
    """The token whose id metadata ``key`` holds, or None when absent or out of range."""
    token_id = metadata.get(key)
    return tokens[token_id] if isinstance(token_id, int) and 0 <= token_id < len(tokens) else None


def byte_level_bpe_from_metadata(metadata: Mapping[str, Any]) -> Any:
    """The ``tokenizers.Tokenizer`` of a GGUF ``gpt2`` tokenizer: byte-level BPE, control tokens special."""
    from tokenizers import AddedToken, decoders
    from tokenizers import Tokenizer as Backend
    from tokenizers.models import BPE

    tokens = metadata["tokenizer.ggml.tokens"]
    token_types = metadata.get("tokenizer.ggml.token_type") or []
    spelled = [byte_level_spelling(token) for token in tokens]
    vocab = {token: index for index, token in enumerate(spelled)}
    if len(vocab) != len(tokens):
        raise JirlError(f"The GGUF vocabulary repeats tokens: {len(tokens)} entries, {len(vocab)} distinct.")
    merges = [tuple(merge.split(" ")) for merge in metadata.get("tokenizer.ggml.merges", [])]
    if bad := [" ".join(m) for m in merges if len(m) != 2][:3]:
        raise JirlError(f"GGUF merges must be two tokens separated by one space, got {bad}.")
    backend = Backend(BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = byte_level_pre_tokenizer(metadata.get("tokenizer.ggml.pre"))
    backend.decoder = decoders.ByteLevel()
    # A control token spelled outside the byte alphabet was respelled above: it is an ordinary
    # byte sequence that llama.cpp mislabelled, and making it special would take it out of the merges.
    special = [
        AddedToken(token, special=True, normalized=False)
        for token, original, kind in zip(spelled, tokens, token_types)
        if kind == TOKEN_TYPE_CONTROL and token == original
    ]
    user_defined = [
        AddedToken(token, special=False, normalized=False)
        for token, kind in zip(spelled, token_types)
        if kind == TOKEN_TYPE_USER_DEFINED
    ]
    backend.add_special_tokens(special)
    backend.add_tokens(user_defined)  # llama.cpp always matches these whole, like special tokens
    return backend


def tokenizer_from_gguf(gguf_file: Any) -> Tokenizer:
    """The tokenizer described by a GGUF file's metadata (a ``GGUFFile`` or a path to one).

    Supports ``tokenizer.ggml.model == "gpt2"`` (byte-level BPE, as SmolLM2, Llama 3 and Qwen2
    use) with the pre-tokenizers in ``PRE_TOKENIZER_SPLITS``. Control tokens (type 3) are special
    tokens, so ``<|im_start|>`` in text encodes to its one id; BOS/EOS are added by
    ``encode(..., add_special_tokens=True)`` only where the file's ``add_bos_token`` /
    ``add_eos_token`` say so.
    """
    from jirl.models.gguf import GGUFFile, read_gguf

    gguf_file = gguf_file if isinstance(gguf_file, GGUFFile) else read_gguf(gguf_file)
    metadata = gguf_file.metadata
    model = metadata.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise JirlError(
            f"{gguf_file.path.name}: tokenizer.ggml.model is {model!r}; jirl builds only 'gpt2' "
            "(byte-level BPE) tokenizers from GGUF files."
        )
    if "tokenizer.ggml.tokens" not in metadata:
        raise JirlError(f"{gguf_file.path.name} has no tokenizer.ggml.tokens.")
    backend = byte_level_bpe_from_metadata(metadata)
    tokens = metadata["tokenizer.ggml.tokens"]
    bos = metadata_token(metadata, tokens, "tokenizer.ggml.bos_token_id")
    eos = metadata_token(metadata, tokens, "tokenizer.ggml.eos_token_id")
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token")) and bos is not None
    add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token")) and eos is not None
    if add_bos or add_eos:
        backend.post_processor = bos_eos_processor(
            (bos, tokens.index(bos)) if add_bos else None, (eos, tokens.index(eos)) if add_eos else None
        )
    return Tokenizer(
        backend,
        bos_token=bos,
        eos_token=eos,
        pad_token=metadata_token(metadata, tokens, "tokenizer.ggml.padding_token_id"),
        chat_template=metadata.get("tokenizer.chat_template"),
        source=str(gguf_file.path),
    )


# --------------------------------------------------------------------------- checks


def check_vocab_matches(
    tokenizer: Tokenizer, model_vocab_size: int, *, allow_padding: bool = False, field: str = "vocab_size"
) -> None:
    """Raise ``JirlError`` unless ``tokenizer`` and the model (its config ``field``) agree on the vocabulary size.

    With ``allow_padding`` a model vocabulary larger than the tokenizer's (embedding rows padded to
    a round number) is accepted; a smaller one never is, since some token ids would have no row.
    """
    size = tokenizer.vocab_size
    if size == model_vocab_size or (allow_padding and size < model_vocab_size):
        return
    padded = not allow_padding and size < model_vocab_size
    hint = " (pass allow_padding=True if the model pads its vocabulary)" if padded else ""
    raise JirlError(
        f"Tokenizer {tokenizer.source!r} has {size} tokens but the model's {field} is {model_vocab_size}{hint}."
    )
