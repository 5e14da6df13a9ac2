"""Synthetic generation tasks with known (gold) rewards, registered by name.

Every task has a finite prompt set (so the exact oracle can enumerate it), a character
tokenizer with EOS = 0, a ``horizon`` (max response tokens) and a pure, jittable
``step_reward(tokens, prompt_lens, t, terminal) -> [batch]``: the reward of the action at
buffer slot ``prompt_lens + t`` given the buffer up to that slot. It must not read slots after
``prompt_lens + t``; that is what lets the MDP, ``sequence_rewards`` and the oracle share it.

Tasks:
- ``bigram``: decomposable per-token reward from a hidden table ``score[previous, next]``;
  the true credit of every token is known.
- ``sort``: sparse verifiable reward, 1 only for the exactly sorted prompt followed by EOS.
- ``gold_rm``: a fixed, randomly initialised scoring transformer is the gold reward, paid at
  the end of the response (the set-up of Gao et al. 2022, "Scaling laws for reward model
  overoptimization").
"""

from __future__ import annotations

from typing import Annotated

import abc
import dataclasses
import itertools
import string
from functools import cached_property

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jirl.config import registered
from jirl.mdp.tokenizer import CharTokenizer
from jirl.registry import Registry

TASKS: Registry[type] = Registry("task")


def register_task(name: str):
    """Class decorator registering a ``Task`` subclass in ``TASKS`` as ``name`` (also set as its
    ``name`` attribute)."""
    def add(cls):
        cls.name = name
        return TASKS.register(name, cls)

    return add


@dataclasses.dataclass
class TaskConfig:
    """Which task to build: its registered name and size parameters as ``key=value`` strings
    (``--set task.name=sort --set task.args=num_digits=4,num_symbols=3``)."""

    name: Annotated[str, registered(TASKS)] = "bigram"
    args: tuple[str, ...] = ()

    def validate(self) -> None:
        """Build the task once, so a bad ``args`` entry is refused before any work."""
        from jirl.config import ConfigError

        try:
            build_task(self)
        except (ValueError, TypeError, KeyError) as error:
            raise ConfigError(f"args: {error}") from None


def build_task(config: TaskConfig) -> "Task":
    """The task named by ``config``, its ``args`` parsed by the task's field types (the task is
    built once, with all of them)."""
    from jirl.config import parse_override

    cls = TASKS.get(config.name)
    return cls(**dict(parse_override(cls, arg) for arg in config.args))


def make_task(name: str, **params) -> "Task":
    """Build the task registered as ``name`` with size parameters ``params``."""
    cls = TASKS.get(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ValueError(f"task {name!r} has no parameter(s) {unknown}; its parameters are {sorted(fields)}")
    return cls(**params)


@dataclasses.dataclass(frozen=True, eq=False)
class Task(abc.ABC):
    """Base class: subclasses provide ``tokenizer``, ``horizon`` (a field or property),
    ``prompt_texts`` and ``step_reward``."""

    name = "task"
    horizon = 0  # max response tokens; a field or property of each subclass

    @property
    @abc.abstractmethod
    def tokenizer(self) -> CharTokenizer:
        """The task's ``CharTokenizer`` (EOS = 0)."""

    @property
    def vocab_size(self) -> int:
        """V, the tokenizer's vocabulary size (EOS included)."""
        return self.tokenizer.vocab_size

    @property
    def eos_id(self) -> int:
        """The EOS (and padding) token id."""
        return self.tokenizer.eos_id

    @abc.abstractmethod
    def prompt_texts(self) -> list[str]:
        """The task's prompts as text (uniformly weighted)."""

    @abc.abstractmethod
    def step_reward(self, tokens, prompt_lens, t, terminal) -> jax.Array:
        """Reward ``[batch]`` of the action at slot ``prompt_lens + t`` (see module docstring)."""

    @cached_property
    def prompts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All prompts: ``tokens [P, width]``, ``lens [P]``, uniform ``weights [P]``."""
        texts = self.prompt_texts()
        tokens, lens = self.tokenizer.encode_batch(texts)
        return tokens, lens, np.full(len(texts), 1.0 / len(texts))

    @property
    def prompt_width(self) -> int:
        """Lp, the padded width of the prompt buffer (the longest prompt)."""
        return self.prompts[0].shape[1]

    def sample_prompts(self, key, batch_size: int) -> tuple[jax.Array, jax.Array]:
        """``batch_size`` prompts drawn from the task's prompt distribution."""
        tokens, lens, weights = self.prompts
        index = jax.random.choice(key, len(lens), (batch_size,), p=jnp.asarray(weights))
        return jnp.asarray(tokens)[index], jnp.asarray(lens)[index]

    def tree_spec(self):
        """The exact oracle's enumeration of this task (``jirl.mdp.oracle.TreeSpec``)."""
        from jirl.mdp.oracle import TreeSpec

        tokens, lens, weights = self.prompts
        return TreeSpec(
            vocab_size=self.vocab_size,
            eos_id=self.eos_id,
            horizon=self.horizon,
            prompt_tokens=tokens,
            prompt_lens=lens,
            prompt_weights=weights,
        )

    def decode(self, tokens, length) -> str:
        """The text of the first ``length`` ids of ``tokens``, EOS shown as ``$``."""
        return self.tokenizer.decode(np.asarray(tokens)[: int(length)], stop_at_eos=False)


def _previous_and_action(tokens, prompt_lens, t):
    rows = jnp.arange(tokens.shape[0])
    slot = prompt_lens + t
    return tokens[rows, slot - 1], tokens[rows, slot]


@dataclasses.dataclass(frozen=True, eq=False)
class LetterTask(Task):
    """Shared shape of tasks whose prompt is one letter of the first ``num_chars`` letters."""

    num_chars: int = 4
    horizon: int = 6
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.num_chars <= 26:
            raise ValueError(f"{self.name} num_chars must be in [1, 26], got {self.num_chars}")
        if self.horizon < 1:
            raise ValueError(f"{self.name} horizon must be >= 1, got {self.horizon}")

    @cached_property
    def tokenizer(self):
        """A ``CharTokenizer`` over the first ``num_chars`` lowercase letters."""
        return CharTokenizer(string.ascii_lowercase[: self.num_chars])

    def prompt_texts(self):
        """One prompt per letter of the alphabet."""
        return list(self.tokenizer.alphabet)


@register_task("bigram")
@dataclasses.dataclass(frozen=True, eq=False)
class BigramTask(LetterTask):
    """Reward ``r_t = score[y_{t-1}, y_t]`` from a hidden Gaussian table (per-token, decomposable).

    The prompt is one character; ``y_{-1}`` is the prompt's last token. EOS is an action with
    its own score, so the optimal policy must also learn when to stop.
    """

    scale: float = 1.0

    @cached_property
    def score_table(self) -> np.ndarray:
        """``[vocab, vocab]`` hidden per-token scores ``score[previous, next]``."""
        rng = np.random.default_rng(self.seed)
        return (self.scale * rng.standard_normal((self.vocab_size, self.vocab_size))).astype(np.float32)

    def step_reward(self, tokens, prompt_lens, t, terminal):
        """``score[previous token, action]`` for each row, ``[batch]`` (the previous token is the
        prompt's last one at t = 0)."""
        previous, action = _previous_and_action(tokens, prompt_lens, t)
        return jnp.asarray(self.score_table)[previous, action]

    def true_token_rewards(self, tokens, prompt_lens, response_lens):
        """The true per-token credit ``[batch, horizon]`` (0 past each response)."""
        from jirl.mdp.env import sequence_rewards

        return sequence_rewards(self, tokens, prompt_lens, response_lens)


@register_task("sort")
@dataclasses.dataclass(frozen=True, eq=False)
class SortTask(Task):
    """Sparse verifiable reward: 1 iff the response is the prompt's digits sorted, then EOS.

    Prompts are all ``num_symbols ** num_digits`` digit strings; ``horizon = num_digits + 1``.
    """

    num_digits: int = 3
    num_symbols: int = 4

    def __post_init__(self):
        if not 1 <= self.num_symbols <= 10:
            raise ValueError(f"sort num_symbols must be in [1, 10], got {self.num_symbols}")
        if self.num_digits < 1:
            raise ValueError(f"sort num_digits must be >= 1, got {self.num_digits}")

    @cached_property
    def tokenizer(self):
        """A ``CharTokenizer`` over the first ``num_symbols`` digits."""
        return CharTokenizer(string.digits[: self.num_symbols])

    @property
    def horizon(self):
        """``num_digits + 1``: the sorted digits, then EOS."""
        return self.num_digits + 1

    def prompt_texts(self):
        """Every string of ``num_digits`` digits from the alphabet (``num_symbols ** num_digits``
        prompts)."""
        digits = self.tokenizer.alphabet
        return ["".join(p) for p in itertools.product(digits, repeat=self.num_digits)]

    def step_reward(self, tokens, prompt_lens, t, terminal):
        """1.0 at the terminal action ``t == num_digits`` when it is EOS and the ``num_digits``
        answer tokens before it are the prompt sorted; 0 everywhere else. ``[batch]``."""
        n = self.num_digits
        prompt = tokens[:, :n]
        target = jnp.sort(prompt, axis=1)
        rows = jnp.arange(tokens.shape[0])[:, None]
        # Only slots <= prompt_len + t are read: when t == n they are the n answer digits.
        answer = tokens[rows, jnp.minimum(prompt_lens[:, None] + jnp.arange(n)[None, :], prompt_lens[:, None] + t[:, None])]
        ends_with_eos = tokens[rows[:, 0], prompt_lens + t] == self.eos_id
        correct = (t == n) & ends_with_eos & jnp.all(answer == target, axis=1)
        return (terminal & correct).astype(jnp.float32)


@register_task("gold_rm")
@dataclasses.dataclass(frozen=True, eq=False)
class GoldRewardModelTask(LetterTask):
    """Terminal reward from a fixed scoring transformer (seeded), standardised to mean 0, std 1
    over uniformly random sequences: ``r_T = (g(x, y) - mu) / sigma``, 0 before the end."""

    d_model: int = 32
    num_layers: int = 2

    def __post_init__(self):
        super().__post_init__()
        if self.d_model < 4 or self.d_model % 4 or self.num_layers < 1:
            raise ValueError(f"gold_rm needs d_model a multiple of 4 (its 4 heads) and num_layers >= 1, got d_model={self.d_model}, num_layers={self.num_layers}")
        self.gold_model  # build eagerly: the first use may be inside jit  # noqa: B018

    @cached_property
    def gold_model(self):
        """``(graphdef, params, mu, sigma)`` of the gold scorer."""
        from jirl.models.heads import SequenceRewardModel
        from jirl.models.transformer import TransformerConfig

        config = TransformerConfig(
            vocab_size=self.vocab_size,
            family="llama",
            d_model=self.d_model,
            num_layers=self.num_layers,
            num_heads=4,
            max_len=self.prompt_width + self.horizon,
        )
        model = SequenceRewardModel(config, rngs=nnx.Rngs(self.seed))
        # A random head has a tiny output scale; widen it so scores are not all ~0.
        model.head.proj.kernel[...] = model.head.proj.kernel[...] * 50.0
        graphdef, params = nnx.split(model)
        key = jax.random.key(self.seed + 1)
        width = self.prompt_width + self.horizon
        sample = jax.random.randint(key, (512, width), 1, self.vocab_size)
        lengths = jax.random.randint(jax.random.key(self.seed + 2), (512,), 2, width + 1)
        raw = nnx.merge(graphdef, params)(sample, lengths)
        return graphdef, params, float(raw.mean()), float(raw.std() + 1e-6)

    def gold_score(self, tokens, lengths):
        """Standardised gold score of left-aligned sequences of ``lengths`` tokens, ``[batch]``."""
        graphdef, params, mu, sigma = self.gold_model
        return (nnx.merge(graphdef, params)(tokens, lengths) - mu) / sigma

    def step_reward(self, tokens, prompt_lens, t, terminal):
        """The standardised gold score of prompt + response up to the action at terminal steps, 0
        before; ``[batch]``."""
        lengths = prompt_lens + t + 1
        return jnp.where(terminal, self.gold_score(tokens, lengths), 0.0)
