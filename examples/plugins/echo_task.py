"""A jirl plugin: the ``echo`` task, a new token MDP with a known (gold) reward.

The prompt is one letter; the response should repeat it. The reward is sparse: at the last
response step it pays (letters equal to the prompt letter) - (other letters), so the best
response is the prompt letter ``horizon`` times and the policy must also learn not to stop
early. EOS pays nothing by itself.

    jirl --plugin examples/plugins/echo_task.py run rl_oracle --set task.name=echo
"""

import dataclasses

import jax.numpy as jnp

from jirl.mdp.tasks import LetterTask, register_task


@register_task("echo")
@dataclasses.dataclass(frozen=True, eq=False)
class EchoTask(LetterTask):
    """Repeat the prompt letter: sparse reward #matches - #other letters at the last step.
    Fields (from ``LetterTask``): ``num_chars`` letters, ``horizon`` response tokens, ``seed``."""

    mismatch_penalty: float = 1.0

    def step_reward(self, tokens, prompt_lens, t, terminal):
        """``[batch]``: 0 before the last step; at it, the score of the response so far. Reads
        only slots up to ``prompt_lens + t`` (the rule every task's reward must follow)."""
        t = jnp.broadcast_to(t, prompt_lens.shape)
        slots = jnp.arange(tokens.shape[1])[None, :]
        in_response = (slots >= prompt_lens[:, None]) & (slots <= (prompt_lens + t)[:, None])
        letter = tokens[jnp.arange(tokens.shape[0]), prompt_lens - 1]  # the prompt's (last) letter
        is_letter = in_response & (tokens != self.eos_id)
        matches = jnp.sum(is_letter & (tokens == letter[:, None]), axis=1)
        others = jnp.sum(is_letter & (tokens != letter[:, None]), axis=1)
        score = matches - self.mismatch_penalty * others
        return jnp.where(terminal, score, 0.0).astype(jnp.float32)
