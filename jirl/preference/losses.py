"""Direct preference optimisation (DPO) losses: learning from preferences without a separate
reward model is still inverse RL, with the reward parameterised by the policy itself.

The KL-regularised RL optimum pi*(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x) inverts to

    r(x, y) = beta log pi(y|x) / pi_ref(y|x) + beta log Z(x),

and the prompt-only term beta log Z(x) cancels in every pairwise comparison (Rafailov et al.
2023). Fitting this implicit reward to preference pairs therefore trains the policy directly.

Paired losses share one signature; every array has shape ``[B]``, one entry per preference pair,
and log-probabilities are SUMS over the response tokens of the sequence:

    fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
       *, beta, chosen_len, rejected_len, **options) -> per-pair loss [B]

Every paired loss accepts all of these keywords (and ignores extra ones through ``**unused``),
so a caller can pass one uniform set; reference-free losses ignore the ``ref_*`` inputs and
length-normalised ones divide the sums by ``max(len, 1)``. Options are Python hyperparameters.

``kto`` is UNPAIRED and has its own signature (see ``kto_loss``); ``UNPAIRED_LOSS_NAMES`` lists
such entries. Registered by name in ``PREFERENCE_LOSSES``: ``dpo``, ``cdpo``, ``robust_dpo``,
``ipo``, ``hinge``, ``slic``, ``simpo``, ``orpo``, ``spin``, ``kto``.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jirl.registry import Registry

PreferenceLoss = Callable[..., jax.Array]
PREFERENCE_LOSSES: Registry[PreferenceLoss] = Registry("preference loss")

# Registered losses that do not follow the paired signature.
UNPAIRED_LOSS_NAMES: frozenset[str] = frozenset({"kto"})


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
def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta,
             chosen_len=None, rejected_len=None, **unused):
    """Sigmoid DPO (Rafailov, Sharma, Mitchell, Ermon, Manning, Finn 2023, "Direct preference
    optimization: your language model is secretly a reward model"): the Bradley-Terry NLL of the
    implicit reward,

        h = beta * ((pc - rc) - (pr - rr)),    l = -log sigma(h) = softplus(-h).
    """
    h = _dpo_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    return jax.nn.softplus(-h)


@PREFERENCE_LOSSES.register("cdpo")
def cdpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta,
              chosen_len=None, rejected_len=None, label_smoothing=0.1, **unused):
    """Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences & relationship to
    IPO"): DPO with the label flipped with probability eps (label smoothing),

        l = (1 - eps) softplus(-h) + eps softplus(h),    h = beta * logratio_difference.

    With eps = 0 this is ``dpo``.
    """
    h = _dpo_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    eps = label_smoothing
    return (1.0 - eps) * jax.nn.softplus(-h) + eps * jax.nn.softplus(h)


@PREFERENCE_LOSSES.register("robust_dpo")
def robust_dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta,
                    chosen_len=None, rejected_len=None, label_smoothing=0.1, **unused):
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
def ipo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta,
             chosen_len=None, rejected_len=None, **unused):
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
def hinge_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta,
               chosen_len=None, rejected_len=None, **unused):
    """Hinge loss on the DPO margin: SLiC-HF (Zhao, Joshi, Liu, Khalman, Saleh, Liu 2023, "SLiC-HF:
    sequence likelihood calibration with human feedback") in the reference-ratio form of RSO (Liu
    et al. 2024, "Statistical rejection sampling improves preference optimization"),

        l = max(0, 1 - h),    h = beta * logratio_difference.
    """
    h = _dpo_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    return jax.nn.relu(1.0 - h)


@PREFERENCE_LOSSES.register("slic")
def slic_loss(policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, *, beta=None,
              chosen_len=None, rejected_len=None, delta=1.0, **unused):
    """Original SLiC calibration loss (Zhao et al. 2023, "SLiC-HF: sequence likelihood
    calibration with human feedback"), reference-free:

        l = max(0, delta - (pc - pr)).

    The SFT (cross-entropy) regulariser of SLiC is added by the objective, not here; ``beta`` and
    the reference log-probs are ignored.
    """
    return jax.nn.relu(delta - (policy_chosen - policy_rejected))


@PREFERENCE_LOSSES.register("simpo")
def simpo_loss(policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, *, beta,
               chosen_len, rejected_len, gamma=0.5, **unused):
    """SimPO (Meng, Xia, Chen 2024, "SimPO: simple preference optimization with a reference-free
    reward"): the length-normalised log-likelihood is the reward, with target margin gamma,

        l = softplus(-(beta pc / |y+| - beta pr / |y-| - gamma)).

    ``gamma`` is absolute (as in the paper), not gamma / beta. Reference-free: ``ref_*`` ignored.
    """
    margin = beta * _per_token(policy_chosen, chosen_len) - beta * _per_token(policy_rejected, rejected_len)
    return jax.nn.softplus(-(margin - gamma))


def _log_odds(mean_logp):
    """log(p / (1 - p)) = l - log(1 - exp(l)) for l = log p < 0, with l clamped to <= -1e-7."""
    mean_logp = jnp.minimum(mean_logp, -1e-7)
    return mean_logp - jnp.log(-jnp.expm1(mean_logp))


@PREFERENCE_LOSSES.register("orpo")
def orpo_loss(policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, *, beta=None,
              chosen_len, rejected_len, lam=0.1, chosen_nll_per_token=None, **unused):
    """ORPO odds-ratio term (Hong, Lee, Thorne 2024, "ORPO: monolithic preference optimization
    without reference model"). With length-normalised log-probs lc = pc / |y+|, lr = pr / |y-|
    and log odds(l) = l - log(1 - exp(l)),

        l_OR = -log sigma(log odds(lc) - log odds(lr)),    l = nll + lam * l_OR,

    where nll is ``chosen_nll_per_token`` (the mean per-token NLL of the chosen response, the
    paper's SFT term) if given, else 0 so that the objective can add it. Reference-free: ``ref_*``
    and ``beta`` are ignored.
    """
    log_odds_ratio = _log_odds(_per_token(policy_chosen, chosen_len)) - _log_odds(
        _per_token(policy_rejected, rejected_len))
    loss = lam * jax.nn.softplus(-log_odds_ratio)
    if chosen_nll_per_token is not None:
        loss = loss + chosen_nll_per_token
    return loss


@PREFERENCE_LOSSES.register("spin")
def spin_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta,
              chosen_len=None, rejected_len=None, **unused):
    """SPIN (Chen, Deng, Yuan, Ji, Gu 2024, "Self-play fine-tuning converts weak language models
    to strong language models") with the logistic loss:

        l = softplus(-h),    h = beta * ((pc - rc) - (pr - rr)).

    Numerically this is ``dpo``; what differs is the data: "chosen" is the human demonstration,
    "rejected" is a sample from the previous iteration's policy, and the reference is that
    previous iteration's policy. The entry exists so that SPIN runs are named as such.
    """
    h = _dpo_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    return jax.nn.softplus(-h)


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
    theoretic optimization"). UNPAIRED signature: one response per entry, all arrays ``[B]``.

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
