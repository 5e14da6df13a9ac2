"""Eager input checks with messages that name the problem and the fix.

They run on concrete (host or device) arrays before anything is traced, since errors cannot be
raised from inside ``jax.jit``.
"""

from __future__ import annotations

import numpy as np


def is_concrete(x) -> bool:
    """False for tracers (inside jit/vmap/grad), where values cannot be inspected."""
    import jax

    return not isinstance(x, jax.core.Tracer)


def check_token_ids(tokens, vocab_size: int, what: str = "tokens") -> None:
    """Raise ValueError if any id in ``tokens`` is outside ``[0, vocab_size)``."""
    if not is_concrete(tokens):
        return
    arr = np.asarray(tokens)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{what} must be integer token ids, got dtype {arr.dtype}")
    bad = (arr < 0) | (arr >= vocab_size)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{what} contain token id {int(arr[where])} at index {where}, outside the vocabulary "
            f"[0, {vocab_size}); check that the tokenizer matches the model (vocab_size={vocab_size})"
        )


def check_lengths(lengths, width: int, what: str = "prompt_lens") -> None:
    """Raise ValueError unless every length is in ``[1, width]``."""
    if not is_concrete(lengths):
        return
    arr = np.asarray(lengths)
    bad = (arr < 1) | (arr > width)
    if bad.any():
        i = int(np.argwhere(bad)[0][0])
        raise ValueError(f"{what}[{i}] = {int(arr[i])} must be between 1 and the buffer width {width}")
