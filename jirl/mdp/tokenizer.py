"""A character tokenizer for synthetic tasks: id 0 is EOS (also used as padding)."""

from __future__ import annotations

import numpy as np

EOS_ID = 0


class CharTokenizer:
    """Maps each character of ``alphabet`` to ids ``1..len(alphabet)``; ``0`` is EOS/pad."""

    eos_id = EOS_ID
    pad_id = EOS_ID

    def __init__(self, alphabet: str):
        if len(set(alphabet)) != len(alphabet) or not alphabet:
            raise ValueError(f"alphabet must be non-empty with distinct characters, got {alphabet!r}")
        self.alphabet = alphabet
        self._ids = {c: i + 1 for i, c in enumerate(alphabet)}

    @property
    def vocab_size(self) -> int:
        """``len(alphabet) + 1`` (EOS included)."""
        return len(self.alphabet) + 1

    def encode(self, text: str) -> list[int]:
        """The ids of the characters of ``text``; ValueError naming any character outside the
        alphabet."""
        unknown = sorted(set(text) - set(self._ids))
        if unknown:
            raise ValueError(f"characters {unknown} are not in the tokenizer alphabet {self.alphabet!r}")
        return [self._ids[c] for c in text]

    def decode(self, ids, stop_at_eos: bool = True) -> str:
        """The text of ``ids``: stops at the first EOS, or with ``stop_at_eos=False`` writes each
        EOS as ``$``. ValueError for an id outside the vocabulary."""
        out = []
        for i in np.asarray(ids).tolist():
            if i == EOS_ID:
                if stop_at_eos:
                    break
                out.append("$")
                continue
            if not 0 < i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
            out.append(self.alphabet[i - 1])
        return "".join(out)

    def encode_batch(self, texts: list[str], width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Left-aligned ``[batch, width]`` ids padded with EOS, and the ``[batch]`` lengths."""
        encoded = [self.encode(t) for t in texts]
        lens = np.array([len(e) for e in encoded], np.int32)
        width = width or int(lens.max(initial=1))
        if lens.max(initial=0) > width:
            raise ValueError(f"a text of {lens.max()} tokens does not fit the width {width}")
        tokens = np.full((len(texts), width), EOS_ID, np.int32)
        for row, ids in enumerate(encoded):
            tokens[row, : len(ids)] = ids
        return tokens, lens


class ByteTokenizer:
    """UTF-8 bytes: byte ``b`` is id ``b + 1``; ``0`` is EOS/pad. Any text can be encoded."""

    eos_id = EOS_ID
    pad_id = EOS_ID
    vocab_size = 257

    def encode(self, text: str) -> list[int]:
        """The UTF-8 bytes of ``text``, each shifted by one (byte ``b`` -> id ``b + 1``)."""
        return [b + 1 for b in text.encode("utf-8")]

    def decode(self, ids, stop_at_eos: bool = True) -> str:
        """The text of ``ids`` decoded as UTF-8 (invalid sequences replaced): stops at the first
        EOS, or with ``stop_at_eos=False`` skips every EOS. ValueError for an id outside the
        vocabulary."""
        out = bytearray()
        for i in np.asarray(ids).tolist():
            if i == EOS_ID:
                if stop_at_eos:
                    break
                continue
            if not 0 < i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
            out.append(i - 1)
        return out.decode("utf-8", errors="replace")
