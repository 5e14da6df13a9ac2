"""Credit schemes (jirl/credit/schemes.py) against plain-loop references, the returns each
scheme promises, the exact oracle (shaping invariance) and clear errors on bad input."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jirl.config import ConfigError, JirlError
from jirl.credit import schemes
from jirl.credit.models import prefix_potentials
from jirl.credit.schemes import CREDIT_SCHEMES, credit_correlation, credit_fn, with_credit
from jirl.mdp import oracle
from jirl.mdp.tasks import make_task
from jirl.models.heads import SequenceRewardModel
from jirl.models.transformer import llama_tiny
from jirl.rl.policy_losses import POLICY_LOSSES

B, T = 6, 5


def random_inputs(seed):
    rng = np.random.default_rng(seed)
    lengths = np.array([5, 1, 3, 4, 2, 5])
    mask = np.arange(T)[None, :] < lengths[:, None]
    rewards = np.where(mask, rng.standard_normal((B, T)), np.nan)  # padding may hold NaN
    return dict(
        rewards=rewards.astype(np.float32),
        mask=mask,
        lengths=lengths,
        potentials=rng.standard_normal((B, T + 1)).astype(np.float32),
        attention=np.where(mask, rng.uniform(0.1, 1.0, (B, T)), 0.0).astype(np.float32),
        process=rng.standard_normal((B, T)).astype(np.float32),
        implicit=(3 * rng.standard_normal((B, T))).astype(np.float32),
        predicted=rng.standard_normal((B, T)).astype(np.float32),
    )


def loop_reference(name, d, **options):
    """Each scheme written as a loop over rows and steps from its paper's equation."""
    out = np.zeros((B, T))
    for b in range(B):
        n = d["lengths"][b]
        ret = sum(d["rewards"][b, :n])
        for t in range(n):
            last = t == n - 1
            if name == "terminal":
                out[b, t] = ret if last else 0.0
            elif name == "uniform":
                out[b, t] = ret / n
            elif name == "none":
                out[b, t] = d["rewards"][b, t]
            elif name == "shaping":
                following = 0.0 if last else d["potentials"][b, t + 1]
                out[b, t] = d["rewards"][b, t] + following - d["potentials"][b, t]
            elif name == "abc":
                w = options["abc_weight"]
                a = d["attention"][b, t] / sum(d["attention"][b, :n])
                out[b, t] = (1 - w) * (ret if last else 0.0) + w * ret * a
            elif name == "decomposition":
                residual = ret - sum(d["predicted"][b, :n])
                out[b, t] = d["predicted"][b, t] + residual / n
            elif name == "prime":
                out[b, t] = (ret if last else 0.0) + options["process_coef"] * d["process"][b, t]
            elif name == "rto":
                clipped = min(max(d["implicit"][b, t], -options["rto_clip"]), options["rto_clip"])
                out[b, t] = (ret if last else 0.0) + options["rto_coef"] * clipped
    return out


OPTIONS = {"abc": {"abc_weight": 0.3}, "prime": {"process_coef": 0.7}, "rto": {"rto_coef": 0.5, "rto_clip": 1.5}}


def call(name, d, **options):
    """The scheme through its adapter, given every input: it passes each scheme only its own."""
    return np.asarray(
        credit_fn(name, options)(
            jnp.asarray(d["rewards"]), jnp.asarray(d["mask"]), potentials=jnp.asarray(d["potentials"]),
            attention=jnp.asarray(d["attention"]), process_rewards=jnp.asarray(d["process"]),
            implicit_rewards=jnp.asarray(d["implicit"]), predicted_rewards=jnp.asarray(d["predicted"]),
        )
    )


@pytest.mark.parametrize("name", CREDIT_SCHEMES.names())
def test_scheme_matches_loop_reference(name):
    d = random_inputs(0)
    got = call(name, d, **OPTIONS.get(name, {}))
    np.testing.assert_allclose(got, loop_reference(name, d, **OPTIONS.get(name, {})), atol=1e-5)
    assert np.all(got[~d["mask"]] == 0)


@pytest.mark.parametrize("seed", range(3))
def test_each_scheme_keeps_the_return_it_promises(seed):
    d = random_inputs(seed)
    returns = np.nansum(np.where(d["mask"], d["rewards"], 0), axis=1)
    sums = {name: call(name, d, **OPTIONS.get(name, {})).sum(axis=1) for name in CREDIT_SCHEMES.names()}
    for name in ("terminal", "uniform", "abc", "decomposition", "none"):
        np.testing.assert_allclose(sums[name], returns, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(sums["shaping"], returns - d["potentials"][:, 0], atol=1e-5)
    process = np.where(d["mask"], d["process"], 0).sum(axis=1)
    np.testing.assert_allclose(sums["prime"], returns + 0.7 * process, atol=1e-5)
    clipped = np.where(d["mask"], np.clip(d["implicit"], -1.5, 1.5), 0).sum(axis=1)
    np.testing.assert_allclose(sums["rto"], returns + 0.5 * clipped, atol=1e-5)


def test_schemes_are_jittable_and_vmappable():
    d = random_inputs(1)
    uniform = jax.jit(jax.vmap(schemes.uniform, in_axes=(0, None)))
    stacked = jnp.stack([jnp.asarray(d["rewards"]), 2 * jnp.asarray(d["rewards"])])
    out = uniform(stacked, jnp.asarray(d["mask"]))
    np.testing.assert_allclose(out[1], 2 * out[0], atol=1e-5)


def test_wrong_shapes_and_missing_inputs_are_clear_errors():
    d = random_inputs(0)
    rewards, mask = jnp.asarray(d["rewards"]), jnp.asarray(d["mask"])
    with pytest.raises(JirlError, match=r"dense rewards must be \[batch, time\]"):
        schemes.check_dense_rewards(rewards[:, :-1], mask)
    with pytest.raises(JirlError, match="attention have shape"):
        schemes.attention_credit(rewards, mask, attention=jnp.ones((B, T + 1)))
    with pytest.raises(JirlError, match=r"potentials must have shape \(6, 6\)"):
        schemes.potential_shaping(rewards, mask, potentials=jnp.ones((B, T)))
    for name, needs in [("abc", "attention"), ("shaping", "potentials"), ("prime", "process_rewards"),
                        ("rto", "implicit_rewards"), ("decomposition", "predicted_rewards")]:
        with pytest.raises(JirlError, match=f"{name!r} needs {needs}=.*compute|train"):
            credit_fn(name)(rewards, mask)


def test_schemes_take_exactly_their_arguments_and_refuse_a_misspelt_option():
    for name in CREDIT_SCHEMES:
        params = inspect.signature(CREDIT_SCHEMES.get(name)).parameters.values()
        assert not any(p.kind is p.VAR_KEYWORD for p in params), f"{name} must not take **kwargs"
    assert CREDIT_SCHEMES.options("rto") == {"rto_coef": 1.0, "rto_clip": 1.0}
    with pytest.raises(ConfigError, match=r"credit scheme 'abc' has no option 'abc_wieght'\. Did you mean 'abc_weight'\? "
                                          r"Its options are: abc_weight"):
        credit_fn("abc", {"abc_wieght": 0.3})
    with pytest.raises(ConfigError, match="Did you mean 'rto_clip'"):
        with_credit(lambda *a: None, "rto", rto_clp=2.0)  # checked when the reward function is built


def test_an_option_changes_the_credit_as_computed_by_hand():
    """One row of two steps, return 3 on the last, attention (1, 3): abc_weight b gives
    ((b 3/4), (1 - b) 3 + b 9/4)."""
    rewards, mask = jnp.array([[0.0, 3.0]]), jnp.ones((1, 2), bool)
    attention = jnp.array([[1.0, 3.0]])
    np.testing.assert_allclose(credit_fn("abc")(rewards, mask, attention=attention), [[0.375, 2.625]], rtol=1e-6)
    np.testing.assert_allclose(credit_fn("abc", {"abc_weight": 1.0})(rewards, mask, attention=attention), [[0.75, 2.25]], rtol=1e-6)


def test_credit_correlation_matches_numpy_over_valid_tokens():
    d = random_inputs(2)
    truth = np.where(d["mask"], d["rewards"], 0)
    got = float(credit_correlation(jnp.asarray(d["process"]), jnp.asarray(truth), jnp.asarray(d["mask"])))
    np.testing.assert_allclose(got, np.corrcoef(d["process"][d["mask"]], truth[d["mask"]])[0, 1], atol=1e-5)
    assert float(credit_correlation(jnp.asarray(truth), jnp.asarray(truth), jnp.asarray(d["mask"]))) == pytest.approx(1.0)


def test_with_credit_wraps_a_reward_function():
    d = random_inputs(3)
    rewards = jnp.asarray(np.where(d["mask"], d["rewards"], 0))
    wrapped = with_credit(lambda tokens, p, r: rewards, "abc", lambda tokens, p, r: {"attention": jnp.asarray(d["attention"])}, abc_weight=0.3)
    got = wrapped(None, None, jnp.asarray(d["lengths"]))
    np.testing.assert_allclose(got, loop_reference("abc", d, abc_weight=0.3), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Shaping invariance against the exact oracle


def shaped_step_reward(task, potential_model):
    """The task's step reward shaped by ``schemes.potential_shaping`` with Phi = a reward model
    on prefixes, in the oracle's ``step_reward_fn`` form (action at slot p + t)."""
    graphdef, params = potential_model
    horizon = task.horizon

    def step_reward(tokens, prompt_lens, t, terminal):
        tokens, prompt_lens, t = jnp.asarray(tokens), jnp.asarray(prompt_lens), jnp.asarray(t)
        rewards = jnp.where(jnp.arange(horizon)[None, :] == t[:, None], task.step_reward(tokens, prompt_lens, t, terminal)[:, None], 0.0)
        # A non-terminal action continues: the state after it is not terminal.
        lengths = jnp.where(jnp.asarray(terminal), t + 1, t + 2)
        mask = jnp.arange(horizon)[None, :] < lengths[:, None]
        potentials = prefix_potentials(graphdef, params, tokens, prompt_lens, horizon)
        dense = schemes.potential_shaping(rewards, mask, potentials=potentials)
        return dense[jnp.arange(tokens.shape[0]), t]

    return step_reward


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_potential_shaping_leaves_the_exact_optimum_unchanged(seed):
    task = make_task("gold_rm", num_chars=3, horizon=3)  # sparse terminal reward
    spec = task.tree_spec()
    model = SequenceRewardModel(llama_tiny(task.vocab_size, max_len=8, d_model=32), rngs=nnx.Rngs(seed))
    model.head.proj.kernel[...] = model.head.proj.kernel[...] * 100.0  # potentials of order 1
    potential = nnx.split(model)
    rewards = oracle.rewards_from_step_fn(spec, task.step_reward)
    shaped = oracle.rewards_from_step_fn(spec, shaped_step_reward(task, potential))
    # The shaped reward is really different (dense, large) ...
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(rewards, shaped)) > 0.5
    ref = oracle.random_log_probs(jax.random.key(seed), spec)
    for beta in (0.3, 2.0):
        original = oracle.solve(spec, ref, rewards, beta)
        reshaped = oracle.solve(spec, ref, shaped, beta)
        # ... yet the KL-regularised optimum is the same policy.
        assert float(oracle.kl_divergence(spec, original.log_probs, reshaped.log_probs)) < 1e-6


# ---------------------------------------------------------------------------------------------
# Plugged into the RL loop


@pytest.mark.parametrize("policy_loss", POLICY_LOSSES.names())
def test_credited_rewards_drive_every_policy_loss_through_the_rl_loop(policy_loss):
    import optax

    from jirl.mdp.env import sequence_rewards
    from jirl.models.transformer import Transformer, gpt2_tiny
    from jirl.rl.loop import RLConfig, collect, make_rl_iteration
    from jirl.train.step import init_train_state

    task = make_task("bigram", num_chars=3, horizon=4)
    graphdef, params = nnx.split(Transformer(gpt2_tiny(task.vocab_size, max_len=8, d_model=16), rngs=nnx.Rngs(0)))
    gold = lambda tokens, p, r: sequence_rewards(task, tokens, p, r)  # noqa: E731
    reward_fn = with_credit(gold, "uniform")
    config = RLConfig(advantage="rloo_to_go", policy_loss=policy_loss, prompts_per_iteration=2, group_size=4, kl_coef=0.1)
    batch, _ = collect(jax.random.key(0), task, graphdef, params, params, config, reward_fn)
    lengths = jnp.sum(batch["mask"], axis=1)
    returns = jnp.sum(gold(batch["tokens"], batch["prompt_len"], lengths), axis=1)
    expected = jnp.where(batch["mask"], (returns / lengths)[:, None], 0.0)
    np.testing.assert_allclose(batch["rewards"], expected, atol=1e-6)
    optimizer = optax.adam(1e-2)
    state = init_train_state(params, optimizer, jax.random.key(1))
    new_state, metrics = make_rl_iteration(task, graphdef, optimizer, config, reward_fn=reward_fn)(state, params, jax.random.key(0))
    assert np.isfinite(metrics["update/loss"])
    moved = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))), new_state.full_params, params)
    assert max(jax.tree_util.tree_leaves(moved)) > 0
