import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jirl.mdp.sampler import SamplingConfig, filter_logits, generate
from jirl.models.scoring import response_log_probs
from jirl.models.transformer import Transformer, forward, gpt2_tiny, llama_tiny

VOCAB, EOS = 9, 0


def model(config, seed=0):
    return nnx.split(Transformer(config, rngs=nnx.Rngs(seed)))


def ragged_prompts(batch=5, width=5, seed=0):
    rng = np.random.default_rng(seed)
    lens = rng.integers(1, width + 1, batch).astype(np.int32)
    lens[0] = width
    tokens = rng.integers(1, VOCAB, (batch, width)).astype(np.int32)
    tokens[np.arange(width)[None, :] >= lens[:, None]] = EOS
    return jnp.asarray(tokens), jnp.asarray(lens)


@pytest.mark.parametrize("config", [llama_tiny(VOCAB), gpt2_tiny(VOCAB)], ids=["llama", "gpt2"])
@pytest.mark.parametrize(
    "sampling",
    [dict(temperature=1.0), dict(temperature=0.7, top_k=3), dict(temperature=1.3, top_p=0.8), dict(greedy=True)],
    ids=["plain", "top_k", "top_p", "greedy"],
)
def test_sampled_log_probs_equal_rescored_log_probs(config, sampling):
    graphdef, params = model(config)
    prompts, lens = ragged_prompts()
    cfg = SamplingConfig(max_new_tokens=8, eos_id=EOS, **sampling)
    out = generate(graphdef, params, prompts, lens, jax.random.key(0), cfg)
    rescored = response_log_probs(graphdef, params, out.tokens, out.prompt_lens, 8, cfg.temperature)
    np.testing.assert_allclose(np.where(out.response_mask, rescored, 0.0), out.log_probs, atol=1e-5)
    assert np.all(out.log_probs <= 0) and np.any(out.response_mask)


@pytest.mark.parametrize("config", [llama_tiny(VOCAB), gpt2_tiny(VOCAB)], ids=["llama", "gpt2"])
def test_greedy_generation_equals_a_loop_of_full_forward_passes(config):
    graphdef, params = model(config, seed=3)
    prompts, lens = ragged_prompts(batch=4, seed=1)
    horizon = 7
    out = generate(graphdef, params, prompts, lens, jax.random.key(0), SamplingConfig(horizon, EOS, greedy=True))
    # No cache, no batching: re-run the whole sequence every step. It sits in a fixed-width
    # buffer (one compile); causal attention makes the padding after it irrelevant.
    width = prompts.shape[1] + horizon
    last_logits = jax.jit(lambda seq, n: forward(graphdef, params, seq[None]).logits[0, n - 1])
    for row in range(4):
        seq = list(np.asarray(prompts[row, : lens[row]]))
        expected = []
        for _ in range(horizon):
            logits = last_logits(jnp.asarray(seq + [0] * (width - len(seq))), len(seq))
            token = int(jnp.argmax(logits))
            expected.append(token)
            seq.append(token)
            if token == EOS:
                break
        n = len(expected)
        assert out.response_lens[row] == n
        assert list(np.asarray(out.response_tokens[row, :n])) == expected
        assert bool(out.truncated[row]) == (expected[-1] != EOS)


def test_rows_stop_at_eos_and_buffers_are_laid_out_left_aligned():
    # A model biased towards EOS makes rows end at different steps.
    graphdef, params = model(llama_tiny(VOCAB), seed=1)
    params["embed"]["embedding"][...] = params["embed"]["embedding"][...].at[EOS].multiply(40.0)
    prompts, lens = ragged_prompts(batch=16, seed=2)
    out = generate(graphdef, params, prompts, lens, jax.random.key(4), SamplingConfig(10, EOS))
    resp, rl = np.asarray(out.response_tokens), np.asarray(out.response_lens)
    assert len(set(rl.tolist())) > 1, "want rows of different lengths"
    for row in range(16):
        n = rl[row]
        assert np.all(resp[row, : n - 1] != EOS)  # no EOS before the end
        assert np.all(resp[row, n:] == EOS)  # padding after
        assert (resp[row, n - 1] == EOS) != bool(out.truncated[row])
        p = lens[row]
        np.testing.assert_array_equal(out.tokens[row, :p], prompts[row, :p])
        np.testing.assert_array_equal(out.tokens[row, p : p + 10], resp[row])
        assert np.all(np.asarray(out.log_probs[row, n:]) == 0)


def test_first_token_frequencies_match_the_model_distribution():
    graphdef, params = model(gpt2_tiny(VOCAB), seed=5)
    n = 4000
    prompts = jnp.ones((n, 2), jnp.int32)
    lens = jnp.full((n,), 2, jnp.int32)
    out = generate(graphdef, params, prompts, lens, jax.random.key(1), SamplingConfig(1, EOS, temperature=0.5))
    probs = jax.nn.softmax(forward(graphdef, params, prompts[:1]).logits[0, -1] / 0.5)
    freq = np.bincount(np.asarray(out.response_tokens[:, 0]), minlength=VOCAB) / n
    np.testing.assert_allclose(freq, probs, atol=0.03)


def test_top_k_one_is_greedy_and_top_k_restricts_the_support():
    graphdef, params = model(llama_tiny(VOCAB), seed=2)
    prompts, lens = ragged_prompts(batch=6, seed=3)
    greedy = generate(graphdef, params, prompts, lens, jax.random.key(0), SamplingConfig(6, EOS, greedy=True))
    top1 = generate(graphdef, params, prompts, lens, jax.random.key(9), SamplingConfig(6, EOS, top_k=1))
    np.testing.assert_array_equal(greedy.response_tokens, top1.response_tokens)

    top3 = generate(graphdef, params, prompts, lens, jax.random.key(2), SamplingConfig(6, EOS, top_k=3))
    logits = forward(graphdef, params, top3.tokens).logits
    for row in range(6):
        for t in range(int(top3.response_lens[row])):
            slot = int(lens[row]) + t
            top = np.argsort(-np.asarray(logits[row, slot - 1]))[:3]
            assert int(top3.tokens[row, slot]) in top


def test_filter_logits_top_p_keeps_the_smallest_set_reaching_p():
    logits = jnp.log(jnp.array([[0.5, 0.05, 0.3, 0.15]]))
    kept = np.isfinite(np.asarray(filter_logits(logits, top_p=0.75)))[0]
    np.testing.assert_array_equal(kept, [True, False, True, False])  # 0.5 + 0.3 >= 0.75
    kept = np.isfinite(np.asarray(filter_logits(logits, top_p=0.85)))[0]
    np.testing.assert_array_equal(kept, [True, False, True, True])
    kept = np.isfinite(np.asarray(filter_logits(logits, top_k=2)))[0]
    np.testing.assert_array_equal(kept, [True, False, True, False])


def test_bad_inputs_get_clear_errors():
    graphdef, params = model(llama_tiny(VOCAB, max_len=16))
    prompts, lens = ragged_prompts(width=5)
    with pytest.raises(ValueError, match="exceeds the model's context max_len=16"):
        generate(graphdef, params, prompts, lens, jax.random.key(0), SamplingConfig(12, EOS))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(graphdef, params, prompts.at[1, 0].set(VOCAB + 3), lens, jax.random.key(0), SamplingConfig(4, EOS))
    with pytest.raises(ValueError, match="prompt_lens"):
        generate(graphdef, params, prompts, lens.at[0].set(0), jax.random.key(0), SamplingConfig(4, EOS))
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(4, EOS, temperature=0.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=float("nan")), "temperature must be a finite number > 0"),
        (dict(temperature=float("inf")), "temperature must be a finite number > 0"),
        (dict(temperature=-1.0), "temperature must be a finite number > 0"),
        (dict(top_p=0.0), r"top_p must be a number in \(0, 1\]"),
        (dict(top_p=-1.0), r"top_p must be a number in \(0, 1\]"),
        (dict(top_p=float("nan")), r"top_p must be a number in \(0, 1\]"),
        (dict(top_k=-1), "top_k must be an integer >= 0"),
        (dict(top_k=2.5), "top_k must be an integer >= 0"),
        (dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1"),
        (dict(max_new_tokens=2.0), "max_new_tokens must be an integer >= 1"),
        (dict(eos_id=None), "eos_id must be a token id"),
        (dict(eos_id=-1), "eos_id must be a token id"),
        (dict(greedy="yes"), "greedy must be True or False"),
    ],
)
def test_sampling_config_refuses_bad_values(kwargs, message):
    values = dict(max_new_tokens=4, eos_id=EOS) | kwargs
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**values)


def test_filter_logits_and_generate_check_their_arguments():
    logits = jnp.zeros((1, 4))
    with pytest.raises(ValueError, match=r"top_p must be a number in \(0, 1\]"):
        filter_logits(logits, top_p=float("nan"))
    with pytest.raises(ValueError, match="top_k must be an integer >= 0"):
        filter_logits(logits, top_k=-2)
    graphdef, params = model(llama_tiny(VOCAB, max_len=16))
    prompts, lens = ragged_prompts(width=5)
    with pytest.raises(TypeError, match="config must be a SamplingConfig"):
        generate(graphdef, params, prompts, lens, jax.random.key(0), dict(max_new_tokens=4, eos_id=EOS))
    assert SamplingConfig(np.int64(4), np.int32(EOS), temperature=np.float32(0.5)).max_new_tokens == 4
