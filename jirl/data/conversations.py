"""The rows of user data files, once read and validated: conversations in one canonical form.

Readers (``jirl.data.formats``) turn every accepted layout into these rows; tokenizers
(``jirl.data.chat_tokenize``) turn the rows into token records. A message is
``{"role": "system" | "user" | "assistant", "content": str}``.

A source in TRL's *standard* form (plain strings: ``prompt``/``chosen``/``rejected``,
``prompt``/``completion``) becomes one user message and one assistant message per response,
with ``conversational=False``; the *conversational* forms (``messages``, lists of
``{role, content}``, ShareGPT ``conversations`` with ``from``/``value``) keep their turns, with
``conversational=True``. Whether a chat template is applied is the tokenizer's choice
(``chat_template="auto"`` applies the model's template to both forms, so the same data written
either way gives the same tokens), not the reader's.

Every row carries ``where``: ``"path:line"`` of its source (``"path:row N"`` for Parquet,
``"dataset[N]"`` for a ``datasets.Dataset``), used in every error and report about it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

Message = dict[str, str]  # {"role": ..., "content": ...}
ROLES = ("system", "user", "assistant")


@dataclasses.dataclass(frozen=True)
class PreferenceRow:
    """A prompt (its turns, ending with a user turn) and two alternative assistant replies
    (each a list of messages, normally one assistant message); ``chosen`` is preferred by
    ``margin`` (0 when the source gives none)."""

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    where: str
    conversational: bool
    margin: float = 0.0


@dataclasses.dataclass(frozen=True)
class SftRow:
    """A demonstration: a conversation whose assistant turns are trained on (assistant-only
    loss); the other turns are context."""

    messages: list[Message]
    where: str
    conversational: bool


@dataclasses.dataclass(frozen=True)
class UnpairedRow:
    """One reply to a prompt with a binary judgement (KTO): ``label`` True = desirable."""

    prompt: list[Message]
    completion: list[Message]
    label: bool
    where: str
    conversational: bool


@dataclasses.dataclass(frozen=True)
class PromptRow:
    """A prompt for RL (its turns, ending with a user turn), and the source's other fields
    (``extra``, e.g. a reference answer for a verifier)."""

    prompt: list[Message]
    where: str
    conversational: bool
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


ROW_KINDS = {"preference": PreferenceRow, "sft": SftRow, "unpaired": UnpairedRow, "prompt": PromptRow}
