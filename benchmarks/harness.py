"""What every benchmark shares: timing with warm-up apart, medians and spreads, machine facts,
and the measured peaks (matmul FLOP/s, memory bandwidth) that roofline fractions divide by.

A benchmark calls ``measure(fn, repeats, warmup)`` for each contender *in the same process*, so
the ratio between them is taken under the same machine state; absolute times on a shared
machine are noisy, ratios much less so.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


@dataclasses.dataclass
class Timing:
    """Seconds of ``repeats`` timed calls after ``warmup`` untimed ones (the first warm-up call,
    which compiles, is reported apart as ``first_call_s``)."""

    first_call_s: float
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> tuple[float, float]:
        """(min, max) of the timed calls."""
        return min(self.seconds), max(self.seconds)

    def summary(self, work: float = 1.0, unit: str = "per s") -> dict[str, Any]:
        """Median rate ``work / median`` and the rates at the fastest and slowest call."""
        fastest, slowest = self.spread
        return {
            "median_s": self.median, "min_s": fastest, "max_s": slowest, "first_call_s": self.first_call_s,
            "rate": work / self.median, "rate_min": work / slowest, "rate_max": work / fastest, "unit": unit,
            "repeats": len(self.seconds),
        }


def measure(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1, block: Callable[[Any], Any] = lambda x: x) -> Timing:
    """Time ``fn()`` (``block(result)`` waits for asynchronous work, e.g. ``jax.block_until_ready``)."""
    if repeats < 1 or warmup < 1:
        raise ValueError(f"need repeats >= 1 and warmup >= 1, got {repeats}, {warmup}")
    first = None
    for _ in range(warmup):
        start = time.perf_counter()
        block(fn())
        first = time.perf_counter() - start if first is None else first
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        block(fn())
        seconds.append(time.perf_counter() - start)
    return Timing(first, seconds)


def matmul_peak_flops(size: int = 1024, repeats: int = 5) -> float:
    """Measured float32 matmul FLOP/s of this machine through XLA (``jnp.dot`` of two
    ``size x size`` matrices): the peak a model-FLOPs utilisation is taken against."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    timing = measure(lambda: matmul(a), repeats=repeats, warmup=2, block=jax.block_until_ready)
    return 2 * size**3 / min(timing.seconds)


def memory_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Measured bytes/s of reading a large float32 array once (a reduction through XLA)."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((megabytes * 2**20 // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    timing = measure(lambda: total(x), repeats=repeats, warmup=2, block=jax.block_until_ready)
    return x.size * 4 / min(timing.seconds)


def forward_flops_per_token(config, context: float, head: bool = True) -> float:
    """Forward FLOPs of one token of a jirl ``TransformerConfig``: 2 x the matmul parameters
    (including the LM head unless ``head=False``) plus attention's 2 x 2 x layers x heads x
    head_dim x context (the scores and the weighted sum), PaLM's accounting (Chowdhery et al.
    2022, appendix B). A training token costs 3x this (forward and backward)."""
    d, layers, ff = config.d_model, config.num_layers, config.ff_dim
    q = config.num_heads * config.dims_per_head
    kv = config.kv_heads * config.dims_per_head
    mlp = (3 if config.family == "llama" else 2) * d * ff
    per_layer = d * q + 2 * d * kv + q * d + mlp
    return 2 * (layers * per_layer + (d * config.vocab_size if head else 0)) + 4 * layers * q * context


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import jax

    return {
        "date": datetime.date.today().isoformat(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_devices": [str(d) for d in jax.devices()],
    }


def write_results(path: str | os.PathLike, results: dict) -> Path:
    """``results`` plus ``machine()`` as JSON at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **results}, indent=2, default=_jsonable))
    return path


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")
