"""Self-play fine-tuning, SPIN (Chen et al. 2024, "Self-play fine-tuning converts weak language
models to strong language models"): IRL from demonstrations by self-play.

Iteration k pairs every demonstration y (chosen) with a response y' of the current policy pi_k to
the same prompt (rejected) and trains pi_{k+1} with the SPIN loss (the logistic DPO form,
``jirl.preference.losses.spin_loss``) with pi_k as the reference:

    L(theta) = E[ softplus(-beta (log pi_theta(y|x)/pi_k(y|x) - log pi_theta(y'|x)/pi_k(y'|x))) ].

The implicit reward beta log pi_{k+1}/pi_k plays the discriminator: it separates the data from
the policy's own samples, and the iteration stops moving when pi_k = p_data.
"""

from __future__ import annotations

from typing import Annotated

import dataclasses

import jax
import numpy as np
import optax

from jirl.config import at_least, finite, positive
from jirl.irl.afd import discriminator_pairs
from jirl.mdp.demonstrations import from_policy
from jirl.preference.objective import POLICY_ONLY, preference_loss, with_reference
from jirl.train.loop import train_on_arrays
from jirl.train.step import init_train_state, make_update_step


@dataclasses.dataclass
class SPINConfig:
    """Settings of SPIN: the number of self-play ``iterations``, ``steps_per_iteration`` updates
    of ``batch_size`` pairs at ``learning_rate`` each, and the SPIN loss's ``beta``."""

    iterations: Annotated[int, at_least(1)] = 3
    steps_per_iteration: Annotated[int, at_least(1)] = 200
    batch_size: Annotated[int, at_least(1)] = 64
    learning_rate: Annotated[float, finite, positive] = 1e-3
    beta: Annotated[float, finite, positive] = 1.0  # measured on bigram: beta 0.1-0.5 overshoots and drifts away over iterations


def spin_update(graphdef, config: SPINConfig):
    """The optimiser and the compiled update step of the SPIN loss (reused across iterations)."""
    optimizer = optax.adam(config.learning_rate)
    return optimizer, make_update_step(preference_loss(graphdef, "spin", beta=config.beta), optimizer)


def spin_iteration(key, task, graphdef, params, demos, config: SPINConfig, update=None):
    """One SPIN iteration from ``params`` (pi_k, also the reference); returns pi_{k+1}.
    ``update`` is ``spin_update(graphdef, config)``, built once for all iterations."""
    sample_key, pair_key, order_key = jax.random.split(key, 3)
    own = from_policy(task, sample_key, int(np.asarray(demos.tokens).shape[0]), graphdef, params)
    pairs = discriminator_pairs(pair_key, demos, own)
    optimizer, step = update or spin_update(graphdef, config)
    state = init_train_state(with_reference(params, params), optimizer, order_key, trainable=POLICY_ONLY)
    seed = int(jax.random.randint(order_key, (), 0, 2**30))
    state, _ = train_on_arrays(state, step, pairs, config.steps_per_iteration, config.batch_size, seed)
    return state.full_params["policy"]


def spin(key, task, graphdef, params, demos, config: SPINConfig, on_iteration=None) -> tuple:
    """``config.iterations`` SPIN iterations from ``params``. Returns the final policy and the
    one before it (the last reference). ``on_iteration(k, params)`` is called after each."""
    previous, update = params, spin_update(graphdef, config)
    for k in range(config.iterations):
        previous, params = params, spin_iteration(jax.random.fold_in(key, k), task, graphdef, params, demos, config, update)
        if on_iteration is not None:
            on_iteration(k + 1, params)
    return params, previous
