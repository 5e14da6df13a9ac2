"""The exact oracle against an independent brute-force enumeration of complete responses.

The brute force never uses the oracle's recursion: it lists every response y (ending at EOS or
at length H) as a token tuple, reads pi(y|x) and R(x,y) off the trees as products and sums along
y, and computes pi*(y|x) = pi_ref(y|x) e^{R/beta} / Z(x) and all per-state quantities as sums over
the responses through a state.
"""

import collections
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jirl.mdp import oracle

# ----------------------------------------------------------------------------------------------
# Random instances (NumPy float64)


def np_logsumexp(x, axis=None):
    x = np.asarray(x, np.float64)
    top = np.max(x, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        total = np.log(np.sum(np.exp(x - top), axis=axis, keepdims=True)) + top
    return np.squeeze(total, axis=axis) if axis is not None else total.item()


def np_log_softmax(x):
    return x - np_logsumexp(x, axis=-1)[..., None]


def make_spec(rng, vocab, horizon, num_prompts, eos_id):
    """Ragged prompts of 1-3 non-EOS tokens, random prompt weights."""
    non_eos = [a for a in range(vocab) if a != eos_id]
    prompts = [list(rng.choice(non_eos, size=rng.integers(1, 4))) for _ in range(num_prompts)]
    return oracle.TreeSpec.from_prompts(vocab, eos_id, horizon, prompts, rng.dirichlet(np.ones(num_prompts)))


def random_policy(rng, spec, zero_probs=False, support_of=None, scale=1.5):
    """Tree of log-probs; zero_probs removes random actions (never a whole row); support_of copies
    another tree's zero pattern."""
    tree = []
    for t in range(spec.horizon):
        logits = scale * rng.normal(size=spec.tree_shape(t))
        if zero_probs:
            dropped = rng.random(logits.shape) < 0.3
            dropped[..., rng.integers(spec.vocab_size)] = False
            logits = np.where(dropped, -np.inf, logits)
        if support_of is not None:
            logits = np.where(np.isneginf(support_of[t]), -np.inf, logits)
        tree.append(np_log_softmax(logits))
    return tree


def random_rewards(rng, spec, sequence_level=False):
    """Per-token rewards, or sequence-level ones (non-zero only at terminal actions)."""
    tree = []
    for t in range(spec.horizon):
        r = rng.normal(size=spec.tree_shape(t))
        if sequence_level:
            r = np.where(oracle.terminal_mask(spec, t), 2.0 * r, 0.0)
        tree.append(r)
    return tree


def to_jax(tree):
    return [jnp.asarray(x) for x in tree]


def to_numpy(tree):
    return [np.asarray(x, np.float64) for x in tree]


# ----------------------------------------------------------------------------------------------
# Brute force over complete responses


def continuing_rank(spec, token):
    return sorted(set(range(spec.vocab_size)) - {spec.eos_id}).index(token)


def state_of(spec, prefix):
    """Tree index of the state whose response is ``prefix`` (base-C, most significant first)."""
    index = 0
    for token in prefix:
        index = index * (spec.vocab_size - 1) + continuing_rank(spec, token)
    return index


def complete_responses(spec):
    """Every response: continuing tokens then EOS, or H-1 continuing tokens then any token."""
    continuing = [a for a in range(spec.vocab_size) if a != spec.eos_id]
    responses = []
    for length in range(1, spec.horizon + 1):
        last_tokens = range(spec.vocab_size) if length == spec.horizon else [spec.eos_id]
        for body in itertools.product(continuing, repeat=length - 1):
            responses += [body + (last,) for last in last_tokens]
    return responses


def along(spec, tree, prompt, response):
    """[len(y)] values tree[t][x, state(y[:t]), y[t]] along a response."""
    return np.array([tree[t][prompt, state_of(spec, response[:t]), response[t]] for t in range(len(response))])


class BruteForce:
    """Sequence-level quantities for one spec, by listing all responses."""

    def __init__(self, spec):
        self.spec = spec
        self.responses = complete_responses(spec)
        self.weights = np.asarray(spec.prompt_weights, np.float64)

    def sequence_log_probs(self, log_probs):
        """[P, K] log pi(y|x)."""
        prompts = range(self.spec.num_prompts)
        return np.array([[along(self.spec, log_probs, p, y).sum() for y in self.responses] for p in prompts])

    def returns(self, rewards):
        """[P, K] R(x, y)."""
        return self.sequence_log_probs(rewards)

    def expected_reward(self, log_probs, rewards):
        return float(np.sum(self.weights[:, None] * np.exp(self.sequence_log_probs(log_probs)) * self.returns(rewards)))

    def kl(self, log_p, log_q):
        return self.sequence_kl(self.sequence_log_probs(log_p), self.sequence_log_probs(log_q))

    def sequence_kl(self, lp, lq):
        """sum_x rho(x) sum_y p(y|x) (log p(y|x) - log q(y|x)), with 0 log 0 = 0."""
        support = np.isfinite(lp)
        terms = np.exp(lp) * (np.where(support, lp, 0.0) - np.where(support, lq, 0.0))
        return float(np.sum(self.weights[:, None] * terms))

    def optimal_sequences(self, ref, rewards, beta):
        """[P, K] log pi*(y|x) and [P] log Z(x)."""
        scores = self.sequence_log_probs(ref) + self.returns(rewards) / beta
        log_z = np_logsumexp(scores, axis=1)
        return scores - log_z[:, None], log_z

    def optimal_tree(self, ref, rewards, beta):
        """Per-state V*, Q*, log pi* as sums over the responses through a state (or state-action).

        V*(s) = beta log sum_{y > s} pi_ref(y_{>=t}|s) e^{R_{>=t}(y)/beta}
        Q*(s,a) = beta log sum_{y > s,a} pi_ref(y_{>t}|s,a) e^{R_{>=t}(y)/beta}
        log pi*(a|s) = log sum_{y > s,a} pi_ref(y_{>=t}|s) e^{R_{>=t}(y)/beta} - V*(s)/beta
        """
        spec = self.spec
        through_state = collections.defaultdict(list)
        through_action = collections.defaultdict(list)
        through_action_ref = collections.defaultdict(list)
        for p in range(spec.num_prompts):
            for y in self.responses:
                ref_steps, reward_steps = along(spec, ref, p, y), along(spec, rewards, p, y)
                for t in range(len(y)):
                    key = (t, p, state_of(spec, y[:t]))
                    ref_from, ref_after = ref_steps[t:].sum(), ref_steps[t + 1 :].sum()
                    future = reward_steps[t:].sum() / beta
                    through_state[key].append(ref_from + future)
                    through_action[key + (y[t],)].append(ref_after + future)
                    through_action_ref[key + (y[t],)].append(ref_from + future)
        v = [np.full(spec.tree_shape(t)[:2], np.nan) for t in range(spec.horizon)]
        q = [np.full(spec.tree_shape(t), np.nan) for t in range(spec.horizon)]
        log_pi = [np.full(spec.tree_shape(t), np.nan) for t in range(spec.horizon)]
        for (t, p, i), scores in through_state.items():
            v[t][p, i] = beta * np_logsumexp(scores)
        for (t, p, i, a), scores in through_action.items():
            q[t][p, i, a] = beta * np_logsumexp(scores)
            log_pi[t][p, i, a] = np_logsumexp(through_action_ref[(t, p, i, a)]) - v[t][p, i] / beta
        for tree in (v, q, log_pi):
            assert not any(np.isnan(x).any() for x in tree), "brute force missed a state"
        return v, q, log_pi

    def occupancy(self, log_probs):
        """rho(s) = rho(x) * sum of pi(y|x) over responses passing through s."""
        spec = self.spec
        occ = [np.zeros(spec.tree_shape(t)[:2]) for t in range(spec.horizon)]
        probs = np.exp(self.sequence_log_probs(log_probs))
        for p in range(spec.num_prompts):
            for k, y in enumerate(self.responses):
                for t in range(len(y)):
                    occ[t][p, state_of(spec, y[:t])] += self.weights[p] * probs[p, k]
        return occ


def assert_log_trees_close(actual, expected, rtol, atol):
    """Same -inf pattern, finite entries close."""
    for t, (a, e) in enumerate(zip(to_numpy(actual), expected)):
        assert not np.isnan(a).any(), f"NaN at depth {t}"
        np.testing.assert_array_equal(np.isneginf(a), np.isneginf(e), err_msg=f"-inf pattern at depth {t}")
        finite = np.isfinite(e)
        np.testing.assert_allclose(a[finite], e[finite], rtol=rtol, atol=atol, err_msg=f"depth {t}")


# (vocab, horizon, prompts, eos_id, zero-probability reference actions, sequence-level rewards)
INSTANCES = [
    (3, 1, 1, 0, False, False),
    (3, 2, 2, 2, True, False),
    (4, 3, 3, 1, False, True),
    (4, 4, 2, 0, True, True),
    (3, 4, 3, 1, False, False),
    (2, 3, 2, 1, True, True),
]


def build_instance(seed, vocab, horizon, num_prompts, eos_id, zero_probs, sequence_level):
    rng = np.random.default_rng(seed)
    spec = make_spec(rng, vocab, horizon, num_prompts, eos_id)
    ref = random_policy(rng, spec, zero_probs=zero_probs)
    rewards = random_rewards(rng, spec, sequence_level=sequence_level)
    policy = random_policy(rng, spec, support_of=ref)
    return spec, ref, rewards, policy


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


# ----------------------------------------------------------------------------------------------
# solve()


@pytest.mark.parametrize("seed,instance", list(enumerate(INSTANCES)))
@pytest.mark.parametrize("beta", [0.3, 1.0, 4.0])
def test_solve_matches_brute_force(x64, seed, instance, beta):
    spec, ref, rewards, _ = build_instance(seed, *instance)
    solution = oracle.solve(spec, to_jax(ref), to_jax(rewards), beta)
    assert solution.log_probs[0].dtype == jnp.float64

    brute = BruteForce(spec)
    v, q, log_pi = brute.optimal_tree(ref, rewards, beta)
    assert_log_trees_close(solution.log_probs, log_pi, rtol=1e-8, atol=1e-9)
    for t in range(spec.horizon):
        np.testing.assert_allclose(solution.q[t], q[t], rtol=1e-8, atol=1e-9)
        np.testing.assert_allclose(solution.v[t], v[t], rtol=1e-8, atol=1e-9)
    _, log_z = brute.optimal_sequences(ref, rewards, beta)
    np.testing.assert_allclose(solution.log_partition, log_z, rtol=1e-8, atol=1e-9)
    # pi* read off the tree is the sequence-level Gibbs distribution.
    log_opt_seq, _ = brute.optimal_sequences(ref, rewards, beta)
    np.testing.assert_allclose(brute.sequence_log_probs(to_numpy(solution.log_probs)), log_opt_seq, atol=1e-8)


def test_solve_float32_jit_and_static_spec():
    spec, ref, rewards, _ = build_instance(7, 4, 3, 2, 0, True, False)
    expected = oracle.solve(spec, to_jax(ref), to_jax(rewards), 0.5)
    assert expected.log_probs[1].dtype == jnp.float32
    closed = jax.jit(lambda r, w: oracle.solve(spec, r, w, 0.5))(to_jax(ref), to_jax(rewards))
    static = jax.jit(oracle.solve, static_argnums=0)(spec, to_jax(ref), to_jax(rewards), 0.5)
    _, _, log_pi = BruteForce(spec).optimal_tree(ref, rewards, 0.5)
    for solution in (expected, closed, static):
        assert_log_trees_close(solution.log_probs, log_pi, rtol=1e-4, atol=1e-5)


def test_optimal_rows_normalised_and_optimal(x64):
    spec, ref, rewards, _ = build_instance(3, 4, 4, 3, 2, True, False)
    beta = 0.7
    solution = oracle.solve(spec, to_jax(ref), to_jax(rewards), beta)
    for lp in solution.log_probs:
        np.testing.assert_allclose(jnp.exp(lp).sum(-1), 1.0, atol=1e-12)
    best = oracle.evaluate(spec, solution.log_probs, to_jax(ref), to_jax(rewards), beta)["objective"]
    np.testing.assert_allclose(best, np.dot(spec.prompt_weights, solution.v[0][:, 0]), rtol=1e-10)
    rng = np.random.default_rng(0)
    for _ in range(5):
        policy = to_jax(random_policy(rng, spec, support_of=ref, scale=rng.uniform(0.1, 3.0)))
        assert best >= oracle.evaluate(spec, policy, to_jax(ref), to_jax(rewards), beta)["objective"]
    # A policy putting mass where pi_ref has none has infinite KL, hence objective -inf.
    outside = to_jax(random_policy(rng, spec))
    assert oracle.evaluate(spec, outside, to_jax(ref), to_jax(rewards), beta)["objective"] == -np.inf


def test_small_beta_puts_all_mass_on_reward_argmax():
    """Distinct sequence rewards (gap 0.1): at beta = 1e-4 pi* is the argmax response."""
    rng = np.random.default_rng(11)
    spec = make_spec(rng, 4, 3, 2, 1)
    ref = random_policy(rng, spec)
    rewards = [np.zeros(spec.tree_shape(t)) for t in range(spec.horizon)]
    values = iter(0.1 * rng.permutation(spec.total_sequences))
    for t in range(spec.horizon):
        for p, i, a in np.ndindex(*spec.tree_shape(t)):
            if oracle.terminal_mask(spec, t)[a]:
                rewards[t][p, i, a] = next(values)
    solution = oracle.solve(spec, to_jax(ref), to_jax(rewards), 1e-4)  # float32
    brute = BruteForce(spec)
    returns = brute.returns(rewards)
    pi_star = np.exp(brute.sequence_log_probs(to_numpy(solution.log_probs)))
    best = returns.argmax(axis=1)
    assert np.all(pi_star[np.arange(spec.num_prompts), best] > 0.999)
    assert all(np.isfinite(lp).any() and not np.isnan(lp).any() for lp in to_numpy(solution.log_probs))
    np.testing.assert_allclose(solution.v[0][:, 0], returns.max(axis=1), atol=2e-3)


def test_large_beta_recovers_reference():
    spec, ref, rewards, _ = build_instance(5, 4, 3, 2, 3, True, False)
    beta = 1e4
    solution = oracle.solve(spec, to_jax(ref), to_jax(rewards), beta)  # float32
    for lp, r in zip(to_numpy(solution.log_probs), ref):
        np.testing.assert_array_equal(np.isneginf(lp), np.isneginf(r))
        np.testing.assert_allclose(np.exp(lp), np.exp(r), atol=1e-3)
    # V*(x) -> E_ref[R | x] as beta -> infinity.
    brute = BruteForce(spec)
    mean_return = np.sum(np.exp(brute.sequence_log_probs(ref)) * brute.returns(rewards), axis=1)
    np.testing.assert_allclose(solution.v[0][:, 0], mean_return, atol=1e-3)


@pytest.mark.parametrize("beta", [1e-4, 1e-2, 1.0, 1e2, 1e4])
def test_float32_matches_float64_at_extreme_betas(beta):
    """V* stays accurate to float32 rounding of Q*, not of beta * O(1), at any beta."""
    spec, ref, rewards, _ = build_instance(9, 4, 3, 2, 0, True, False)
    single = oracle.solve(spec, to_jax(ref), to_jax(rewards), beta)
    with jax.enable_x64(True):
        double = oracle.solve(spec, to_jax(ref), to_jax(rewards), beta)
    for t in range(spec.horizon):
        np.testing.assert_allclose(single.v[t], double.v[t], rtol=0, atol=2e-6)
        likely = np.asarray(double.log_probs[t]) > -30.0
        np.testing.assert_allclose(
            np.asarray(single.log_probs[t])[likely], np.asarray(double.log_probs[t])[likely], atol=1e-4
        )


def test_value_gradient_is_optimal_occupancy(x64):
    """dE_x[V*(x)]/dr(s,a) = rho(s) pi*(a|s): the soft-max envelope theorem."""
    spec, ref, rewards, _ = build_instance(13, 3, 3, 2, 0, True, False)

    def mean_value(r):
        return jnp.dot(jnp.asarray(spec.prompt_weights), oracle.solve(spec, to_jax(ref), r, 0.4).v[0][:, 0])

    grads = jax.grad(mean_value)(to_jax(rewards))
    optimal = oracle.solve(spec, to_jax(ref), to_jax(rewards), 0.4).log_probs
    for g, occ, lp in zip(grads, oracle.state_occupancy(spec, optimal), optimal):
        np.testing.assert_allclose(g, occ[..., None] * jnp.exp(lp), atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Evaluation


@pytest.mark.parametrize("seed,instance", list(enumerate(INSTANCES)))
def test_evaluate_matches_brute_force(x64, seed, instance):
    spec, ref, rewards, policy = build_instance(100 + seed, *instance)
    beta = 0.8
    solution = oracle.solve(spec, to_jax(ref), to_jax(rewards), beta)
    metrics = oracle.evaluate(spec, to_jax(policy), to_jax(ref), to_jax(rewards), beta, solution.log_probs)

    brute = BruteForce(spec)
    log_opt_seq, log_z = brute.optimal_sequences(ref, rewards, beta)
    reward = brute.expected_reward(policy, rewards)
    kl_ref = brute.kl(policy, ref)
    kl_opt = brute.sequence_kl(brute.sequence_log_probs(policy), log_opt_seq)
    np.testing.assert_allclose(metrics["expected_reward"], reward, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(metrics["kl_to_reference"], kl_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(metrics["objective"], reward - beta * kl_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(metrics["kl_to_optimal"], kl_opt, rtol=1e-9, atol=1e-12)
    # J(pi) = E_x[V*(x)] - beta KL(pi || pi*).
    best = beta * np.dot(spec.prompt_weights, log_z)
    np.testing.assert_allclose(metrics["objective"], best - beta * kl_opt, rtol=1e-9, atol=1e-12)


def test_kl_handles_zero_probabilities_and_gradients(x64):
    spec, ref, rewards, _ = build_instance(21, 4, 3, 2, 0, True, True)
    support = [np.isfinite(r) for r in ref]
    assert oracle.kl_divergence(spec, to_jax(ref), to_jax(ref)) == 0.0

    def objective(logits):
        masked = [jnp.where(s, lg, -jnp.inf) for s, lg in zip(support, logits)]
        log_probs = [jax.nn.log_softmax(m, axis=-1) for m in masked]
        return oracle.evaluate(spec, log_probs, to_jax(ref), to_jax(rewards), 0.5)["objective"]

    logits = to_jax(random_rewards(np.random.default_rng(1), spec))
    value, grads = jax.value_and_grad(objective)(logits)
    assert np.isfinite(value)
    assert all(np.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("seed,instance", [(0, INSTANCES[3]), (1, INSTANCES[4])])
def test_state_occupancy(x64, seed, instance):
    spec, _, _, policy = build_instance(seed, *instance)
    occupancy = to_numpy(oracle.state_occupancy(spec, to_jax(policy)))
    expected = BruteForce(spec).occupancy(policy)
    terminated = 0.0
    for t in range(spec.horizon):
        np.testing.assert_allclose(occupancy[t], expected[t], rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(occupancy[t].sum() + terminated, 1.0, atol=1e-12)
        terminated += np.sum(occupancy[t] * np.exp(policy[t][..., spec.eos_id]))
    np.testing.assert_allclose(occupancy[0][:, 0], spec.prompt_weights)


# ----------------------------------------------------------------------------------------------
# Sampling


def test_sample_frequencies_and_layout():
    rng = np.random.default_rng(4)
    spec = oracle.TreeSpec.from_prompts(3, 1, 3, [[0, 2, 2], [2]], [0.3, 0.7])
    ref, rewards = random_policy(rng, spec, scale=1.0), random_rewards(rng, spec)
    solution = oracle.solve(spec, to_jax(ref), to_jax(rewards), 1.0)
    num = 20_000
    samples = jax.jit(lambda key: oracle.sample(key, spec, solution.log_probs, num))(jax.random.key(0))

    brute = BruteForce(spec)
    log_opt_seq, _ = brute.optimal_sequences(ref, rewards, 1.0)
    expected = spec.prompt_weights[:, None] * np.exp(log_opt_seq)
    tokens, response = np.asarray(samples.tokens), np.asarray(samples.response_tokens)
    prompt_index, lens = np.asarray(samples.prompt_index), np.asarray(samples.response_lens)
    dense_q = np.asarray(oracle.step_values(spec, solution.q, samples))
    column = {y: k for k, y in enumerate(brute.responses)}
    counts = np.zeros_like(expected)
    for p, y, n in zip(prompt_index, response, lens):
        counts[p, column[tuple(int(a) for a in y[:n])]] += 1
    assert np.abs(counts / num - expected).max() < 0.02

    assert tokens.shape == (num, spec.prompt_width + spec.horizon) and tokens.dtype == np.int32
    assert response.shape == (num, spec.horizon)
    for row in range(200):
        p, n = prompt_index[row], lens[row]
        plen = spec.prompt_lens[p]
        assert samples.prompt_lens[row] == plen
        np.testing.assert_array_equal(tokens[row, :plen], spec.prompt_tokens[p, :plen])
        np.testing.assert_array_equal(tokens[row, plen : plen + n], response[row, :n])
        assert np.all(tokens[row, plen + n :] == spec.eos_id) and np.all(response[row, n:] == spec.eos_id)
        assert np.all(response[row, : n - 1] != spec.eos_id)
        assert n == spec.horizon or response[row, n - 1] == spec.eos_id
        y = tuple(int(a) for a in response[row, :n])
        log_prob = along(spec, to_numpy(solution.log_probs), p, y).sum()
        np.testing.assert_allclose(samples.response_log_probs[row], log_prob, rtol=1e-5)
        np.testing.assert_allclose(dense_q[row, :n], along(spec, to_numpy(solution.q), p, y), rtol=1e-5)
        assert np.all(dense_q[row, n:] == 0.0)


def test_sample_with_fixed_prompt():
    spec, ref, _, _ = build_instance(2, 3, 2, 3, 0, True, False)
    samples = oracle.sample(jax.random.key(1), spec, to_jax(ref), 64, prompt_index=2)
    assert np.all(np.asarray(samples.prompt_index) == 2)
    assert np.all(np.asarray(samples.prompt_lens) == spec.prompt_lens[2])
    # Zero-probability reference actions are never sampled.
    assert np.all(np.isfinite(np.asarray(samples.response_log_probs)))


# ----------------------------------------------------------------------------------------------
# Adapters from real functions


def ragged_spec(horizon=3):
    return oracle.TreeSpec.from_prompts(4, 2, horizon, [[0, 1, 3], [3], [1, 1]], [0.5, 0.25, 0.25])


def two_token_logits(table, tokens):
    """Causal logits at slot j = table[token j-1 (or V at j = 0), token j]."""
    tokens = np.asarray(tokens)
    before = np.concatenate([np.full((tokens.shape[0], 1), table.shape[0] - 1), tokens[:, :-1]], axis=1)
    return table[before, tokens]


@pytest.mark.parametrize("batch_size", [5, 4096])
def test_log_probs_from_logits_fn(batch_size):
    spec = ragged_spec()
    table = np.random.default_rng(0).normal(size=(spec.vocab_size + 1, spec.vocab_size, spec.vocab_size))
    widths = []

    def logits_fn(tokens):
        widths.append(tokens.shape)
        return two_token_logits(table, tokens).astype(np.float32)

    tree = oracle.log_probs_from_logits_fn(spec, logits_fn, batch_size=batch_size)
    assert len(set(widths)) == 1 and widths[0][1] == spec.prompt_width + spec.horizon
    continuing = [a for a in range(spec.vocab_size) if a != spec.eos_id]
    for t in range(spec.horizon):
        assert tree[t].shape == spec.tree_shape(t)
        for p in range(spec.num_prompts):
            prompt = list(spec.prompt_tokens[p, : spec.prompt_lens[p]])
            for i, body in enumerate(itertools.product(continuing, repeat=t)):
                seq = prompt + list(body)
                before = seq[-2] if len(seq) >= 2 else spec.vocab_size
                np.testing.assert_allclose(tree[t][p, i], np_log_softmax(table[before, seq[-1]]), atol=1e-5)


def test_log_probs_from_jitted_model_compiles_once():
    spec = ragged_spec(horizon=4)
    table = jnp.asarray(np.random.default_rng(1).normal(size=(spec.vocab_size + 1, spec.vocab_size, spec.vocab_size)))
    traces = []

    @jax.jit
    def logits_fn(tokens):
        traces.append(tokens.shape)
        before = jnp.concatenate([jnp.full((tokens.shape[0], 1), spec.vocab_size), tokens[:, :-1]], axis=1)
        return table[before, tokens]

    tree = oracle.log_probs_from_logits_fn(spec, logits_fn, batch_size=8)
    reference = oracle.log_probs_from_logits_fn(spec, lambda x: two_token_logits(np.asarray(table), x))
    assert len(traces) == 1
    for a, b in zip(tree, reference):
        np.testing.assert_allclose(a, b, atol=1e-6)


def prefix_code(tokens):
    """A reward that depends on every token and its slot: sum_j (j+1) * token_j."""
    return np.sum((np.arange(len(tokens)) + 1) * np.asarray(tokens))


@pytest.mark.parametrize("batch_size", [7, 4096])
def test_rewards_from_step_fn(batch_size):
    spec = ragged_spec()

    def step_reward_fn(tokens, prompt_lens, t, terminal):
        slots = np.arange(tokens.shape[1])[None, :]
        written = slots <= (prompt_lens + t)[:, None]
        assert np.all(tokens[~written] == spec.eos_id), "slots after the action must hold eos"
        codes = np.sum(np.where(written, (slots + 1) * tokens, 0), axis=1)
        return np.sin(codes) + 2.0 * terminal + 0.1 * t

    tree = oracle.rewards_from_step_fn(spec, step_reward_fn, batch_size=batch_size)
    continuing = [a for a in range(spec.vocab_size) if a != spec.eos_id]
    for t in range(spec.horizon):
        assert tree[t].shape == spec.tree_shape(t)
        for p in range(spec.num_prompts):
            prompt = list(spec.prompt_tokens[p, : spec.prompt_lens[p]])
            for i, body in enumerate(itertools.product(continuing, repeat=t)):
                for a in range(spec.vocab_size):
                    terminal = a == spec.eos_id or t == spec.horizon - 1
                    expected = np.sin(prefix_code(prompt + list(body) + [a])) + 2.0 * terminal + 0.1 * t
                    np.testing.assert_allclose(tree[t][p, i, a], expected, atol=1e-5)


def test_enumerate_state_tokens():
    spec = ragged_spec()
    tokens = oracle.enumerate_state_tokens(spec, 2)
    assert tokens.shape == (spec.num_prompts * 9, spec.prompt_width + spec.horizon)
    # prompt 1 is [3]; state 5 = digits (1, 2) -> continuing ids (1, 3).
    np.testing.assert_array_equal(tokens[9 + 5], [3, 1, 3, 2, 2, 2])


# ----------------------------------------------------------------------------------------------
# Spec


def test_spec_properties_and_hash():
    spec = ragged_spec()
    np.testing.assert_array_equal(spec.continuing_ids, [0, 1, 3])
    assert spec.num_prompts == 3 and spec.num_states(2) == 9
    assert spec.total_sequences == 3 * len(complete_responses(spec))
    assert spec.num_transitions == 3 * (1 + 3 + 9) * 4
    assert spec == ragged_spec() and hash(spec) == hash(ragged_spec())
    np.testing.assert_array_equal(spec.prompt_tokens[1], [3, 2, 2])  # padded with eos


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(eos_id=4), "eos_id=4 is out of range"),
        (dict(eos_id=-1), "out of range"),
        (dict(horizon=0), "horizon must be >= 1"),
        (dict(vocab_size=1, eos_id=0), "vocab_size must be >= 2"),
        (dict(prompt_weights=[0.5, 0.6]), "sum to 1"),
        (dict(prompt_lens=[2, 0]), "prompt_lens"),
        (dict(prompt_lens=[2, 2, 2]), "prompt_lens must have shape"),
        (dict(vocab_size=32, horizon=6), "too large to enumerate.*horizon"),
    ],
)
def test_spec_validation(kwargs, message):
    base = dict(vocab_size=4, eos_id=0, horizon=2, prompt_tokens=[[1, 2], [3, 0]], prompt_lens=[2, 1])
    with pytest.raises(ValueError, match=message):
        oracle.TreeSpec(**{**base, **kwargs})


def test_tree_shape_errors():
    spec = ragged_spec()
    good = oracle.uniform_log_probs(spec)
    with pytest.raises(ValueError, match=r"rewards\[1\] must have shape"):
        oracle.solve(spec, good, [good[0], good[0], good[2]], 1.0)
    with pytest.raises(ValueError, match="list of H=3"):
        oracle.expected_reward(spec, good, good[:2])


def test_tree_values_read_the_reward_tree_along_sampled_responses():
    from jirl.mdp.env import sequence_rewards
    from jirl.mdp.tasks import make_task

    task = make_task("bigram", num_chars=3, horizon=4, seed=3)
    spec = task.tree_spec()
    tree = oracle.rewards_from_step_fn(spec, task.step_reward)
    samples = oracle.sample(jax.random.key(0), spec, oracle.uniform_log_probs(spec), 256)
    got = oracle.tree_values(spec, tree, samples.tokens, samples.prompt_lens, samples.response_lens)
    expected = sequence_rewards(task, samples.tokens, samples.prompt_lens, samples.response_lens)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-6)
    assert np.asarray(samples.response_lens).min() < task.horizon  # ragged responses were covered
