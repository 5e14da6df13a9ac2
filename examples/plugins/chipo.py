"""A jirl plugin: chi-squared preference optimisation (chiPO) as a paired preference loss.

Huang, Zhan, Xie, Lee, Sun, Sridharan, Foster 2024, "Correcting the mythos of KL-regularization:
direct alignment without overoptimization via chi-squared preference optimization". chiPO is DPO
with the link phi(z) = z + log z in place of log z, applied to the sequence ratio
z = pi(y|x) / pi_ref(y|x), and the margin clipped to [-2 R_max, 2 R_max]:

    h = clip(beta phi(z+) - beta phi(z-), -2 R_max, 2 R_max),    l = -log sigma(h) = softplus(-h).

Its population optimum regularises with chi^2 + KL instead of KL alone:
beta phi(pi(y|x) / pi_ref(y|x)) = R(x, y) + c(x).

Registering it once is enough: the loss is then also the objective "chipo" in
``jirl.train.losses.OBJECTIVES``, which experiments such as ``dpo_oracle`` build from. Use it
from the command line (the file is imported before the command runs):

    jirl --plugin examples/plugins/chipo.py list
    JIRL_PLUGINS=examples/plugins/chipo.py jirl run dpo_oracle --set losses=dpo,chipo
"""

import jax
import jax.numpy as jnp

from jirl.preference.losses import PREFERENCE_LOSSES

MAX_LOG_RATIO = 30.0  # exp(30) ~ 1e13: far past any clip, and no float32 overflow


def chi_link(log_ratio):
    """phi(z) = z + log z of z = exp(log_ratio), computed from the log-ratio."""
    return jnp.exp(jnp.minimum(log_ratio, MAX_LOG_RATIO)) + log_ratio


@PREFERENCE_LOSSES.register("chipo")
def chipo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta, r_max=5.0):
    """chiPO: the Bradley-Terry NLL of the clipped margin beta (phi(z+) - phi(z-)). Arguments
    are ``[B]`` sums of response log-probs; ``r_max`` bounds the reward (the clip is 2 r_max),
    an option (``preference_loss(graphdef, "chipo", r_max=...)``)."""
    margin = beta * (chi_link(policy_chosen - ref_chosen) - chi_link(policy_rejected - ref_rejected))
    return jax.nn.softplus(-jnp.clip(margin, -2.0 * r_max, 2.0 * r_max))
