"""Direct preference optimisation (DPO) losses: learning from preferences without a separate
reward model is still inverse RL, with the reward parameterised by the policy itself.

The KL-regularised RL optimum pi*(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x) inverts to

    r(x, y) = beta log pi(y|x) / pi_ref(y|x) + beta log Z(x),

and the prompt-only term beta log Z(x) cancels in every pairwise comparison (Rafailov et al.
2023). Fitting this implicit reward to preference pairs therefore trains the policy directly.

Every array has shape ``[B]``, one entry per preference pair, and log-probabilities are SUMS
over the response tokens of the sequence. A paired loss takes the pair's policy log-probs and
then exactly what its equation needs (rlax style): the reference sums, ``beta``, the response
lengths, the chosen response's per-token NLL, and its options as keyword-only parameters::

    dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta)
    simpo_loss(policy_chosen, policy_rejected, *, beta, chosen_len, rejected_len, gamma=0.5)

Its signature is its declaration: a loss that takes ``ref_chosen``/``ref_rejected`` needs a
reference model (``needs_reference``), one that takes ``chosen_nll_per_token`` gets the SFT
term (ORPO), one that takes ``chosen_len``/``rejected_len`` gets the lengths. The adapter
``preference_loss_fn(name, options)`` owns the shared call,

    f(policy_chosen, policy_rejected, *, ref_chosen=None, ref_rejected=None, beta=None,
      chosen_len=None, rejected_len=None, chosen_nll_per_token=None) -> per-pair loss [B],

passes each loss only what it declares and refuses an unknown option with a ``ConfigError``
naming the valid ones. Options are Python hyperparameters. A loss registered here, by jirl or
by a plugin, is also a training objective in ``jirl.train.losses.OBJECTIVES`` (registered by
``jirl.preference.objective``), so every experiment can use it.

``kto`` is UNPAIRED (one response per entry, see ``kto_loss``); ``is_paired`` tells the two
kinds apart by the first parameters. Registered by name in ``PREFERENCE_LOSSES``: ``dpo``,
``cdpo``, ``robust_dpo``, ``ipo``, ``hinge``, ``slic``, ``simpo``, ``orpo``, ``spin``, ``kto``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from jirl.registry import Bound, Registry

PreferenceLoss = Callable[..., jax.Array]
PREFERENCE_LOSSES: Registry[PreferenceLoss] = Registry(
    "preference loss",
    inputs=("ref_chosen", "ref_rejected", "beta", "chosen_len", "rejected_len", "chosen_nll_per_token", "kl_reference"),
)
PAIRED_PARAMETERS = ("policy_chosen", "policy_rejected")  # how a paired loss's signature starts


# ------------------------------------------------------------------------------------- helpers


def logratio_difference(policy_chosen, policy_rejected, ref_chosen, ref_rejected):
    """(log pi(y+|x) - log pi_ref(y+|x)) - (log pi(y-|x) - log pi_ref(y-|x))."""
    return (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)


def implicit_reward(policy_logp, ref_logp, beta):
    """DPO's implicit sequence reward beta log pi(y|x) / pi_ref(y|x), i.e. r(x, y) up to the
    prompt-only constant beta log Z(x)."""
    return beta * (policy_logp - ref_logp)


def _per_token(logp, length):
    """Length-normalised log-probability; zero-length responses count as length one."""
    return logp / jnp.maximum(length, 1)


def _dpo_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    """h = beta * logratio_difference: the implicit reward margin r(x, y+) - r(x, y-)."""
    return beta * logratio_difference(policy_chosen, policy_rejected, ref_chosen, ref_rejected)


# --------------------------------------------------------------------------------- paired losses


@PREFERENCE_LOSSES.register("dpo")
def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta):
    """Sigmoid DPO (Rafailov, Sharma, Mitchell, Ermon, Manning, Finn 2023, "Direct preference
    optimization: your language model is secretly a reward model"): the Bradley-Terry NLL of the
    implicit reward,

        h = beta * ((pc - rc) - (pr - rr)),    l = -log sigma(h) = softplus(-h).
    """
    h = _dpo_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    return jax.nn.softplus(-h)


@PREFERENCE_LOSSES.register("cdpo")
def cdpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta, label_smoothing=0.1):
    """Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences & relationship to
    IPO"): DPO with the label flipped with probability eps (label smoothing),

        l = (1 - eps) softplus(-h) + eps softplus(h),    h = beta * logratio_difference.

    With eps = 0 this is ``dpo``.
    """
    h = _dpo_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    eps = label_smoothing
    return (1.0 - eps) * jax.nn.softplus(-h) + eps * jax.nn.softplus(h)


@PREFERENCE_LOSSES.register("robust_dpo")
def robust_dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta, label_smoothing=0.1):
    """Robust DPO (Chowdhury, Kini, Natarajan 2024, "Provably robust DPO: aligning language
    models with noisy feedback"): an unbiased estimate of the clean DPO loss when labels are
    flipped with known probability eps < 1/2,

        l = ((1 - eps) softplus(-h) - eps softplus(h)) / (1 - 2 eps),    h = beta * logratio_difference,

    so that (1 - eps) l(h) + eps l(-h) = softplus(-h). ``label_smoothing`` (eps) must be a Python
    number in [0, 0.5).
    """
    eps = float(label_smoothing)
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"robust_dpo needs 0 <= label_smoothing < 0.5 (the loss divides by 1 - 2 eps); got {eps}")
    h = _dpo_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    return ((1.0 - eps) * jax.nn.softplus(-h) - eps * jax.nn.softplus(h)) / (1.0 - 2.0 * eps)


@PREFERENCE_LOSSES.register("ipo")
def ipo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta):
    """IPO (Azar, Rowland, Piot, Guo, Calandriello, Valko, Munos 2023, "A general theoretical
    paradigm to understand learning from human preferences"): squared regression of the log-ratio
    difference onto a fixed target, with tau = beta,

        l = (((pc - rc) - (pr - rr)) - 1 / (2 tau))^2.

    The log-probs are sequence SUMS, as in the paper's population objective (TRL averages them per
    token instead, which changes the minimiser's meaning).
    """
    diff = logratio_difference(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return (diff - 1.0 / (2.0 * beta)) ** 2


@PREFERENCE_LOSSES.register("hinge")
def hinge_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta):
    """Hinge loss on the DPO margin: SLiC-HF (Zhao, Joshi, Liu, Khalman, Saleh, Liu 2023, "SLiC-HF:
    sequence likelihood calibration with human feedback") in the reference-ratio form of RSO (Liu
    et al. 2024, "Statistical rejection sampling improves preference optimization"),

        l = max(0, 1 - h),    h = beta * logratio_difference.
    """
    h = _dpo_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    return jax.nn.relu(1.0 - h)


@PREFERENCE_LOSSES.register("slic")
def slic_loss(policy_chosen, policy_rejected, *, delta=1.0):
    """Original SLiC calibration loss (Zhao et al. 2023, "SLiC-HF: sequence likelihood
    calibration with human feedback"), reference-free:

        l = max(0, delta - (pc - pr)).

    The SFT (cross-entropy) regulariser of SLiC is added by the objective, not here
    (``sft_weight``). Needs neither ``beta`` nor a reference.
    """
    return jax.nn.relu(delta - (policy_chosen - policy_rejected))


@PREFERENCE_LOSSES.register("simpo")
def simpo_loss(policy_chosen, policy_rejected, *, beta, chosen_len, rejected_len, gamma=0.5):
    """SimPO (Meng, Xia, Chen 2024, "SimPO: simple preference optimization with a reference-free
    reward"): the length-normalised log-likelihood is the reward, with target margin gamma,

        l = softplus(-(beta pc / |y+| - beta pr / |y-| - gamma)).

    ``gamma`` is absolute (as in the paper), not gamma / beta. Reference-free.
    """
    margin = beta * _per_token(policy_chosen, chosen_len) - beta * _per_token(policy_rejected, rejected_len)
    return jax.nn.softplus(-(margin - gamma))


def _log_odds(mean_logp):
    """log(p / (1 - p)) = l - log(1 - exp(l)) for l = log p < 0, with l clamped to <= -1e-7."""
    mean_logp = jnp.minimum(mean_logp, -1e-7)
    return mean_logp - jnp.log(-jnp.expm1(mean_logp))


@PREFERENCE_LOSSES.register("orpo")
def orpo_loss(policy_chosen, policy_rejected, *, chosen_len, rejected_len, chosen_nll_per_token, lam=0.1):
    """ORPO odds-ratio term (Hong, Lee, Thorne 2024, "ORPO: monolithic preference optimization
    without reference model"). With length-normalised log-probs lc = pc / |y+|, lr = pr / |y-|
    and log odds(l) = l - log(1 - exp(l)),

        l_OR = -log sigma(log odds(lc) - log odds(lr)),    l = nll + lam * l_OR,

    where nll is ``chosen_nll_per_token``, the mean per-token NLL of the chosen response (the
    paper's SFT term; the objective computes it). Reference-free; no ``beta``.
    """
    log_odds_ratio = _log_odds(_per_token(policy_chosen, chosen_len)) - _log_odds(
        _per_token(policy_rejected, rejected_len))
    return chosen_nll_per_token + lam * jax.nn.softplus(-log_odds_ratio)


@PREFERENCE_LOSSES.register("spin")
def spin_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta):
    """SPIN (Chen, Deng, Yuan, Ji, Gu 2024, "Self-play fine-tuning converts weak language models
    to strong language models") with the logistic loss:

        l = softplus(-h),    h = beta * ((pc - rc) - (pr - rr)).

    Numerically this is ``dpo``; what differs is the data: "chosen" is the human demonstration,
    "rejected" is a sample from the previous iteration's policy, and the reference is that
    previous iteration's policy. The entry exists so that SPIN runs are named as such.
    """
    h = _dpo_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    return jax.nn.softplus(-h)


# ---------------------------------------------------------------------------------- the adapter


def is_paired(loss: PreferenceLoss) -> bool:
    """Whether a preference loss takes pairs: its first parameters are ``policy_chosen,
    policy_rejected`` (KTO's are ``policy_logp, ref_logp, desirable``)."""
    return tuple(inspect.signature(loss).parameters)[: len(PAIRED_PARAMETERS)] == PAIRED_PARAMETERS


def preference_loss_fn(name: str, options: Mapping[str, Any] | None = None) -> Bound:
    """The paired loss registered as ``name`` with its ``options`` (``label_smoothing``,
    ``gamma``, ``delta``, ``lam``, a plugin's own), under the one paired signature::

        f(policy_chosen, policy_rejected, *, ref_chosen=None, ref_rejected=None, beta=None,
          chosen_len=None, rejected_len=None, chosen_nll_per_token=None) -> [B]

    ``f`` passes the loss only the inputs it declares (``f.inputs``: a loss needs a reference
    iff ``"ref_chosen" in f.inputs``) and raises ``MissingInputError`` for one it needs and did
    not get. Options are checked now: an unknown one is a ``ConfigError`` naming the loss's
    options. An unpaired loss (``kto``) is a ``ValueError``: it has its own objective."""
    if not is_paired(PREFERENCE_LOSSES.get(name)):
        raise ValueError(
            f"preference loss {name!r} is unpaired (it does not take policy_chosen, policy_rejected); it has its own "
            "objective (kto_objective for kto)"
        )
    return PREFERENCE_LOSSES.bind(name, options)


def needs_reference(name: str) -> bool:
    """Whether the preference loss registered as ``name`` compares the policy with a reference
    (it takes ``ref_chosen``/``ref_rejected``, or ``ref_logp`` for an unpaired loss)."""
    parameters = inspect.signature(PREFERENCE_LOSSES.get(name)).parameters
    return bool({"ref_chosen", "ref_rejected", "ref_logp"} & set(parameters))


# -------------------------------------------------------------------------------- unpaired: KTO


def kto_kl_reference(policy_logp_mismatched, ref_logp_mismatched):
    """KTO's reference point z0: the batch estimate of KL(pi || pi_ref) from mismatched pairs
    (x, y') (Ethayarajh et al. 2024), z0 = max(0, mean(log pi(y'|x) - log pi_ref(y'|x))), treated
    as a constant (no gradient)."""
    kl = jnp.mean(policy_logp_mismatched - ref_logp_mismatched)
    return jax.lax.stop_gradient(jnp.maximum(kl, 0.0))


@PREFERENCE_LOSSES.register("kto")
def kto_loss(policy_logp, ref_logp, desirable, *, beta, kl_reference,
             desirable_weight=1.0, undesirable_weight=1.0):
    """KTO (Ethayarajh, Xu, Muennighoff, Jurafsky, Kiela 2024, "KTO: model alignment as prospect
    theoretic optimization"). UNPAIRED signature: one response per entry, all arrays ``[B]``;
    options ``desirable_weight`` and ``undesirable_weight`` (checked by
    ``PREFERENCE_LOSSES.bind("kto", options)``, as ``kto_objective`` does).

    With r = log pi(y|x) - log pi_ref(y|x) and reference point z0 = max(0, kl_reference) held
    constant (stop_gradient; see ``kto_kl_reference``),

        v = sigma(beta (r - z0))  if desirable,    v = sigma(beta (z0 - r))  otherwise,
        l = lambda_y (1 - v),     lambda_y = desirable_weight or undesirable_weight.

    ``desirable`` is a bool or 0/1 array; ``kl_reference`` a scalar or ``[B]``.
    """
    desirable = jnp.asarray(desirable).astype(bool)
    z0 = jnp.maximum(jax.lax.stop_gradient(kl_reference), 0.0)
    r = policy_logp - ref_logp
    value = jax.nn.sigmoid(beta * jnp.where(desirable, r - z0, z0 - r))
    weight = jnp.where(desirable, desirable_weight, undesirable_weight)
    return weight * (1.0 - value)
