"""Canonical rows (``jirl.data.conversations``) to token examples, with the model's own tokenizer
and chat template.

Settings are a ``ChatTokenization(max_len, max_prompt_len=None, chat_template="auto")``; each
function returns a ``Tokenized(example, prompt_truncated, response_truncated, prompt_tokens)`` or
raises ``DataError`` naming the row's ``where``:

- ``tokenize_preference_row``: the preference example of ``jirl.data.preferences`` (``chosen``,
  ``rejected`` ``[max_len]`` int32, ``prompt_len``, ``chosen_len``, ``rejected_len`` int32,
  ``margin`` float32);
- ``tokenize_sft_row``: ``tokens`` ``[max_len]`` int32, ``prompt_len``, ``response_len`` (see
  ``jirl.data.examples``) and ``loss_mask`` ``[max_len]`` int32, 1 exactly on the tokens of
  assistant replies (each reply's content and its end-of-turn token);
- ``tokenize_unpaired_row``: ``tokens``, ``prompt_len``, ``response_len`` and ``label`` int32 (1
  desirable, 0 undesirable);
- ``tokenize_prompt_row``: ``tokens`` (the prompt only), ``prompt_len``, ``response_len`` = 0.

Buffers are left-aligned (prompt, then response) and padded with the EOS id.

Rendering, with a chat template (``chat_template="auto"`` and a tokenizer that has one, or a
jinja template given as ``chat_template``):

- prompt text = the template applied to the prompt turns with ``add_generation_prompt=True``;
  full text = the template applied to prompt + reply turns without it. The full text must start
  with the prompt text (else ``DataError``: the template does not render incrementally). The
  reply text is the rest, cut right after the first occurrence of the tokenizer's EOS text
  (``<|im_end|>`` for ChatML; what the template writes after it, such as ``"\\n"``, is not part
  of the reply); a reply whose text holds no EOS text gets the EOS id appended. So every reply
  ends with EOS.
- Prompt and reply texts are encoded separately and their ids concatenated (as TRL does), so
  chosen and rejected hold the very same prompt ids.
- Multi-turn SFT renders incrementally (``messages[:i]`` with the generation prompt before each
  assistant turn ``i``, ``messages[:i+1]`` after it) to cut the full rendering into context and
  assistant segments, encoded separately; the assistant segments (each ending at its EOS) are
  the ones the loss mask covers. The text after the last assistant reply is left out.
- ``"auto"`` applies the template to standard rows (``conversational=False``) too, so the same
  data written in TRL's standard and conversational forms gives identical tokens. This is a
  deliberate difference from TRL, which applies templates only to conversational rows.

Plain text (``chat_template="none"``, or ``"auto"`` with a tokenizer without a template): the
prompt must be one user turn and each reply one assistant turn; prompt = the user text, reply =
the assistant text + the EOS id (as ``jirl.data.preferences.fit_preference`` writes pairs). A
row with more turns is a ``DataError``.

Truncation (``fit_prompt_and_responses``, shared with ``fit_preference``): the prompt keeps its
end and the responses their start. With ``max_prompt_len`` (TRL's order), the prompt keeps its
last ``max_prompt_len`` tokens and each response is cut to the ``max_len - prompt`` tokens left,
losing its EOS when cut. Without it, the responses have priority: the prompt keeps its last
``max(1, max_len - longest response)`` tokens (the same ones for every response). Either way the
prompt keeps at most ``max_len - 1`` tokens, so every response keeps at least one. An SFT loss
mask is cut with its tokens. An empty prompt (no tokens) is a ``DataError``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from jirl.config import JirlError
from jirl.data.conversations import Message, PreferenceRow, PromptRow, SftRow, UnpairedRow
from jirl.data.errors import DataError
from jirl.data.examples import Example, _encode

AUTO = "auto"  # the tokenizer's chat template if it has one, else plain text
NONE = "none"  # plain text always


@dataclasses.dataclass(frozen=True)
class ChatTokenization:
    """How rows become tokens: the buffer width, the prompt's budget and the chat template."""

    max_len: int  # buffer width: prompt + response (+ EOS) tokens
    max_prompt_len: int | None = None  # longer prompts keep their last max_prompt_len tokens
    chat_template: str = AUTO  # "auto", "none", or a jinja chat template used instead of the tokenizer's

    def __post_init__(self):
        if isinstance(self.max_len, bool) or not isinstance(self.max_len, int) or self.max_len < 2:
            raise DataError(
                f"max_len must be an integer of at least 2 (one prompt token and EOS), got {self.max_len!r}"
            )
        if self.max_prompt_len is not None and (
            isinstance(self.max_prompt_len, bool) or not isinstance(self.max_prompt_len, int) or self.max_prompt_len < 1
        ):
            raise DataError(
                f"max_prompt_len must be a positive integer or None (only max_len limits), got {self.max_prompt_len!r}"
            )
        if not isinstance(self.chat_template, str) or (
            self.chat_template not in (AUTO, NONE) and "{{" not in self.chat_template and "{%" not in self.chat_template
        ):
            raise DataError(
                f"chat_template must be 'auto' (the tokenizer's template), 'none' (plain text) or a jinja "
                f"chat template, got {self.chat_template!r}"
            )


class Tokenized(NamedTuple):
    """An example and what had to be cut to fit, for builders' reports."""

    example: Example
    prompt_truncated: bool  # the prompt lost tokens at its start
    response_truncated: bool  # a response lost its end (and its EOS)
    prompt_tokens: int  # the whole prompt's token count, before any cut


class FittedIds(NamedTuple):
    """The prompt and response ids kept by ``fit_prompt_and_responses``."""

    prompt: list[int]
    responses: list[list[int]]
    prompt_truncated: bool
    response_truncated: bool


# --------------------------------------------------------------------------- truncation


def fit_prompt_and_responses(
    prompt_ids: Sequence[int],
    response_ids_list: Sequence[Sequence[int]],
    max_len: int,
    max_prompt_len: int | None = None,
    where: str = "row",
) -> FittedIds:
    """Cut ``prompt_ids`` and each of ``response_ids_list`` so that the prompt followed by any one
    response fits ``max_len`` (the policy of the module docstring).

    The prompt keeps its end, the responses their start. The prompt's budget is
    ``max_prompt_len`` when given (TRL's order: the prompt is cut to its budget first, then the
    responses to the room left), else ``max(1, max_len - longest response)`` (the responses have
    priority); either way at most ``max_len - 1``, so every response keeps at least one token.
    ``DataError`` (prefixed by ``where``) for an empty prompt.
    """
    if not prompt_ids:
        raise DataError(f"{where}: the prompt is empty; every example needs at least one prompt token")
    longest_response = max((len(ids) for ids in response_ids_list), default=0)
    budget = max_prompt_len if max_prompt_len is not None else max(1, max_len - longest_response)
    prompt_len = min(len(prompt_ids), budget, max_len - 1)
    prompt = list(prompt_ids[len(prompt_ids) - prompt_len :])
    response_room = max_len - prompt_len
    return FittedIds(
        prompt=prompt,
        responses=[list(ids[:response_room]) for ids in response_ids_list],
        prompt_truncated=prompt_len < len(prompt_ids),
        response_truncated=longest_response > response_room,
    )


# --------------------------------------------------------------------------- rendering


def template_tokenizer(tokenizer: Any, settings: ChatTokenization) -> Any | None:
    """The tokenizer to render chat templates with (``tokenizer``, or a copy holding the template
    of ``settings``), or None when rows are written as plain text."""
    if settings.chat_template == NONE:
        return None
    if settings.chat_template == AUTO:
        return tokenizer if getattr(tokenizer, "chat_template", None) else None
    if not hasattr(tokenizer, "apply_chat_template"):
        raise DataError(
            f"tokenizer {tokenizer!r} cannot render chat templates; use a jirl.models.tokenizers.Tokenizer "
            "or chat_template='none'"
        )
    templated = copy.copy(tokenizer)  # the caller's tokenizer keeps its own template
    templated.chat_template = settings.chat_template
    return templated


def render(chat: Any, messages: Sequence[Message], add_generation_prompt: bool, where: str) -> str:
    """The chat template's text of ``messages``; a template that refuses them is a ``DataError``."""
    try:
        return chat.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    except JirlError as err:
        raise DataError(f"{where}: {err}; fix the row's turns or choose another chat_template") from None


def check_incremental(shorter: str, longer: str, where: str) -> None:
    """``DataError`` unless ``longer`` (a rendering with more turns) starts with ``shorter``."""
    if longer.startswith(shorter):
        return
    differ = next((i for i, (a, b) in enumerate(zip(shorter, longer)) if a != b), min(len(shorter), len(longer)))
    raise DataError(
        f"{where}: the chat template does not render conversations incrementally: the rendering of the "
        f"earlier turns reads {shorter[differ:differ + 40]!r} at character {differ} where the rendering with "
        f"the next turn reads {longer[differ:differ + 40]!r}. Replies are cut out of the full rendering, so "
        "the template must render each turn the same whatever follows it; give another chat_template or "
        "use chat_template='none'"
    )


def split_reply(remainder: str, eos_text: str | None) -> tuple[str, bool]:
    """The reply part of the text a template writes for an assistant turn: up to and including the
    first EOS text (what follows it, e.g. a newline, is not the reply), and whether it holds EOS."""
    cut = remainder.find(eos_text) if eos_text else -1
    if cut < 0:
        return remainder, False
    return remainder[: cut + len(eos_text)], True


def reply_ids(tokenizer: Any, reply_text: str, has_eos: bool, where: str, what: str) -> list[int]:
    """Ids of a reply's text, ending with EOS (the id is appended when the text has none)."""
    ids = _encode(tokenizer, reply_text, where, what)
    return ids if has_eos else ids + [tokenizer.eos_id]


def check_eos(tokenizer: Any) -> None:
    """``DataError`` unless ``tokenizer`` has an EOS id (it ends responses and pads buffers)."""
    if getattr(tokenizer, "eos_id", None) is None:
        raise DataError(
            f"tokenizer {tokenizer!r} has no EOS token; examples end responses with EOS and pad with it, "
            "so use a tokenizer that defines one"
        )


def roles(messages: Sequence[Message]) -> list[str]:
    """The roles of ``messages``, in order."""
    return [message["role"] for message in messages]


def check_plain_turns(prompt: Sequence[Message], replies: Sequence[Sequence[Message]], where: str,
                      settings: ChatTokenization) -> None:
    """``DataError`` unless the prompt is one user turn and each reply one assistant turn: all that
    plain text (no chat template) can hold."""
    if roles(prompt) == ["user"] and all(roles(reply) == ["assistant"] for reply in replies):
        return
    turns = roles(prompt) + [role for reply in replies[:1] for role in roles(reply)]
    why = (
        "chat_template='none' writes plain text" if settings.chat_template == NONE else "the model has no chat template"
    )
    raise DataError(
        f"{where}: {why}, which holds one user turn and one assistant reply, but this row has the turns "
        f"{turns}; give chat_template (or use a model with a template) or use single-turn standard rows"
    )


def check_single_reply(reply: Sequence[Message], where: str, what: str) -> None:
    """``DataError`` unless ``reply`` is one assistant message: a reply of several turns has no
    single end to cut at, and its user turns would be scored as the model's."""
    if roles(reply) != ["assistant"]:
        raise DataError(
            f"{where}: the {what} must be one assistant message, got the turns {roles(reply)}; move earlier turns "
            "into the prompt"
        )


def prompt_and_reply_ids(
    tokenizer: Any,
    settings: ChatTokenization,
    prompt: Sequence[Message],
    replies: Sequence[tuple[str, Sequence[Message]]],
    where: str,
) -> tuple[list[int], list[list[int]]]:
    """The prompt's ids and each reply's ids (ending with EOS), rendered with the chat template or
    as plain text; ``replies`` are ``(name, messages)``, the name for error messages."""
    check_eos(tokenizer)
    for name, reply in replies:
        check_single_reply(reply, where, name)
    chat = template_tokenizer(tokenizer, settings)
    if chat is None:
        check_plain_turns(prompt, [reply for _, reply in replies], where, settings)
        prompt_ids = _encode(tokenizer, prompt[0]["content"], where, "prompt")
        return prompt_ids, [
            _encode(tokenizer, reply[0]["content"], where, name) + [tokenizer.eos_id] for name, reply in replies
        ]
    prompt_text = render(chat, prompt, True, where)
    replies_ids = []
    for name, reply in replies:
        full_text = render(chat, [*prompt, *reply], False, where)
        check_incremental(prompt_text, full_text, where)
        reply_text, has_eos = split_reply(full_text[len(prompt_text) :], getattr(chat, "eos_token", None))
        replies_ids.append(reply_ids(tokenizer, reply_text, has_eos, where, name))
    return _encode(tokenizer, prompt_text, where, "prompt"), replies_ids


class Segment(NamedTuple):
    """A piece of a conversation's token ids: context, or an assistant reply (trained on)."""

    ids: list[int]
    trained: bool


def conversation_segments(tokenizer: Any, settings: ChatTokenization, messages: Sequence[Message],
                          where: str) -> list[Segment]:
    """A conversation cut into alternating context and assistant segments, from the start up to
    the end of the last assistant reply; the first segment is the context before the first reply."""
    check_eos(tokenizer)
    assistant_turns = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
    if not assistant_turns:
        raise DataError(f"{where}: the conversation has no assistant turn to train on; add one or drop the row")
    chat = template_tokenizer(tokenizer, settings)
    if chat is None:
        check_plain_turns(messages[:1], [messages[1:]], where, settings)
        return [
            Segment(_encode(tokenizer, messages[0]["content"], where, "prompt"), False),
            Segment(_encode(tokenizer, messages[1]["content"], where, "assistant reply") + [tokenizer.eos_id], True),
        ]
    segments = []
    consumed = ""  # the rendered text already cut into segments
    previous = ""  # the rendering up to the previous assistant reply
    for turn in assistant_turns:
        before = render(chat, messages[:turn], True, where)
        after = render(chat, messages[: turn + 1], False, where)
        check_incremental(previous, before, where)
        check_incremental(before, after, where)
        reply_text, has_eos = split_reply(after[len(before) :], getattr(chat, "eos_token", None))
        # The text between the previous reply's EOS and this reply (newline, next turns, header).
        segments.append(Segment(_encode(tokenizer, before[len(consumed) :], where, "context"), False))
        segments.append(Segment(reply_ids(tokenizer, reply_text, has_eos, where, f"assistant turn {turn}"), True))
        consumed, previous = before + reply_text, after
    return segments


# --------------------------------------------------------------------------- examples


def left_aligned(ids: Sequence[int], width: int, pad_id: int) -> np.ndarray:
    """``ids`` in a ``[width]`` int32 buffer, padded with ``pad_id``."""
    buffer = np.full(width, pad_id, np.int32)
    buffer[: len(ids)] = ids
    return buffer


def tokenize_preference_row(row: PreferenceRow, tokenizer: Any, settings: ChatTokenization) -> Tokenized:
    """The preference example of ``row`` (see ``jirl.data.preferences``): chosen and rejected share
    the prompt's ids."""
    prompt_ids, (chosen_ids, rejected_ids) = prompt_and_reply_ids(
        tokenizer, settings, row.prompt, [("chosen response", row.chosen), ("rejected response", row.rejected)],
        row.where,
    )
    fitted = fit_prompt_and_responses(prompt_ids, [chosen_ids, rejected_ids], settings.max_len,
                                      settings.max_prompt_len, row.where)
    chosen, rejected = fitted.responses
    example = {
        "chosen": left_aligned(fitted.prompt + chosen, settings.max_len, tokenizer.eos_id),
        "rejected": left_aligned(fitted.prompt + rejected, settings.max_len, tokenizer.eos_id),
        "prompt_len": np.int32(len(fitted.prompt)),
        "chosen_len": np.int32(len(chosen)),
        "rejected_len": np.int32(len(rejected)),
        "margin": np.float32(row.margin),
    }
    return Tokenized(example, fitted.prompt_truncated, fitted.response_truncated, len(prompt_ids))


def prompt_response_example(fitted: FittedIds, settings: ChatTokenization, eos_id: int) -> Example:
    """``tokens``, ``prompt_len``, ``response_len`` of a prompt and its (single or no) response."""
    response = fitted.responses[0] if fitted.responses else []
    return {
        "tokens": left_aligned(fitted.prompt + response, settings.max_len, eos_id),
        "prompt_len": np.int32(len(fitted.prompt)),
        "response_len": np.int32(len(response)),
    }


def tokenize_sft_row(row: SftRow, tokenizer: Any, settings: ChatTokenization) -> Tokenized:
    """The SFT example of ``row``: the prompt is everything before the first assistant reply, the
    response everything after it up to the end of the last reply; ``loss_mask`` is 1 exactly on
    the assistant replies' tokens (their content and end-of-turn token)."""
    prompt, *rest = conversation_segments(tokenizer, settings, row.messages, row.where)
    response_ids = [token for segment in rest for token in segment.ids]
    response_mask = [int(segment.trained) for segment in rest for _ in segment.ids]
    fitted = fit_prompt_and_responses(prompt.ids, [response_ids], settings.max_len, settings.max_prompt_len,
                                      row.where)
    example = prompt_response_example(fitted, settings, tokenizer.eos_id)
    prompt_len, response_len = len(fitted.prompt), len(fitted.responses[0])
    loss_mask = np.zeros(settings.max_len, np.int32)
    loss_mask[prompt_len : prompt_len + response_len] = response_mask[:response_len]  # cut with the tokens
    example["loss_mask"] = loss_mask
    return Tokenized(example, fitted.prompt_truncated, fitted.response_truncated, len(prompt.ids))


def tokenize_unpaired_row(row: UnpairedRow, tokenizer: Any, settings: ChatTokenization) -> Tokenized:
    """The example of a judged reply (KTO): ``tokens``, ``prompt_len``, ``response_len`` and
    ``label`` (1 desirable, 0 undesirable)."""
    prompt_ids, (completion_ids,) = prompt_and_reply_ids(
        tokenizer, settings, row.prompt, [("completion", row.completion)], row.where
    )
    fitted = fit_prompt_and_responses(prompt_ids, [completion_ids], settings.max_len, settings.max_prompt_len,
                                      row.where)
    example = prompt_response_example(fitted, settings, tokenizer.eos_id)
    example["label"] = np.int32(1 if row.label else 0)
    return Tokenized(example, fitted.prompt_truncated, fitted.response_truncated, len(prompt_ids))


def tokenize_prompt_row(row: PromptRow, tokenizer: Any, settings: ChatTokenization) -> Tokenized:
    """The example of an RL prompt: ``tokens`` holding the prompt (with the assistant header when a
    chat template is in use), ``prompt_len``, ``response_len`` = 0."""
    prompt_ids, _ = prompt_and_reply_ids(tokenizer, settings, row.prompt, [], row.where)
    fitted = fit_prompt_and_responses(prompt_ids, [], settings.max_len, settings.max_prompt_len, row.where)
    example = prompt_response_example(fitted, settings, tokenizer.eos_id)
    return Tokenized(example, fitted.prompt_truncated, False, len(prompt_ids))


__all__ = [
    "ChatTokenization",
    "FittedIds",
    "Tokenized",
    "fit_prompt_and_responses",
    "tokenize_preference_row",
    "tokenize_prompt_row",
    "tokenize_sft_row",
    "tokenize_unpaired_row",
]
