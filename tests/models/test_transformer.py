import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jirl.models.heads import SequenceRewardHead, SequenceRewardModel, TokenRewardHead, ValueHead
from jirl.models.transformer import (
    KVCache,
    Transformer,
    TransformerConfig,
    attention,
    forward,
    gpt2_tiny,
    llama_tiny,
    rotary_embedding,
)

VOCAB = 13
CONFIGS = {
    "llama_gqa_tied": llama_tiny(VOCAB),
    "llama_untied_qkv_bias": llama_tiny(VOCAB, tie_embeddings=False, qkv_bias=True, num_kv_heads=1),
    "gpt2": gpt2_tiny(VOCAB),
}


def split(config, seed=0):
    return nnx.split(Transformer(config, rngs=nnx.Rngs(seed)))


@pytest.mark.parametrize("name", CONFIGS)
def test_kv_cache_decoding_matches_full_forward_with_ragged_prompts(name):
    config = CONFIGS[name]
    graphdef, params = split(config)
    batch, length = 4, 14
    tokens = jax.random.randint(jax.random.key(1), (batch, length), 0, VOCAB)
    full_logits = forward(graphdef, params, tokens).logits
    prompt_lens = jnp.array([1, 4, 6, 3])
    width = int(prompt_lens.max())

    # Prefill the padded prompt buffer, then decode one token per row at its own position.
    cache = KVCache.zeros(config, batch, length)
    prefill = forward(graphdef, params, tokens[:, :width], None, cache)
    rows = jnp.arange(batch)
    np.testing.assert_allclose(
        prefill.logits[rows, prompt_lens - 1], full_logits[rows, prompt_lens - 1], atol=1e-5
    )
    cache = prefill.cache
    decode = jax.jit(lambda tok, pos, cache: forward(graphdef, params, tok, pos, cache))
    for t in range(length - width):
        positions = prompt_lens + t
        out = decode(tokens[rows, positions][:, None], positions[:, None], cache)
        cache = out.cache
        np.testing.assert_allclose(out.logits[:, 0], full_logits[rows, positions], atol=1e-5)


def test_chunked_prefill_matches_full_forward():
    config = CONFIGS["llama_gqa_tied"]
    graphdef, params = split(config)
    tokens = jax.random.randint(jax.random.key(2), (2, 10), 0, VOCAB)
    full = forward(graphdef, params, tokens).logits
    cache = KVCache.zeros(config, 2, 10)
    first = forward(graphdef, params, tokens[:, :6], None, cache)
    positions = jnp.broadcast_to(jnp.arange(6, 10), (2, 4))
    second = forward(graphdef, params, tokens[:, 6:], positions, first.cache)
    np.testing.assert_allclose(second.logits, full[:, 6:], atol=1e-5)


def test_attention_matches_numpy_reference_with_grouped_heads():
    rng = np.random.default_rng(0)
    b, t, heads, kv_heads, d = 2, 5, 6, 2, 4
    q = rng.standard_normal((b, t, heads, d)).astype(np.float32)
    k = rng.standard_normal((b, t, kv_heads, d)).astype(np.float32)
    v = rng.standard_normal((b, t, kv_heads, d)).astype(np.float32)
    positions = np.broadcast_to(np.arange(t), (b, t))
    out, probs = attention(q, k, v, positions, positions)

    expected = np.zeros((b, t, heads, d))
    expected_probs = np.zeros((b, heads, t, t))
    group = heads // kv_heads
    for bi in range(b):
        for h in range(heads):
            kh = h // group  # query head h reads kv head h // group
            for i in range(t):
                scores = np.array([q[bi, i, h] @ k[bi, j, kh] / np.sqrt(d) for j in range(i + 1)])
                w = np.exp(scores - scores.max())
                w /= w.sum()
                expected[bi, i, h] = sum(w[j] * v[bi, j, kh] for j in range(i + 1))
                expected_probs[bi, h, i, : i + 1] = w
    np.testing.assert_allclose(out, expected.reshape(b, t, heads * d), atol=1e-5)
    np.testing.assert_allclose(probs, expected_probs, atol=1e-6)


def test_rotary_embedding_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.standard_normal((1, 1, 1, 8)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, 1, 1, 8)), jnp.float32)

    def score(m, n):
        qm = rotary_embedding(q, jnp.array([[m]]), 100.0)
        kn = rotary_embedding(k, jnp.array([[n]]), 100.0)
        return float(jnp.sum(qm * kn))

    assert score(3, 1) == pytest.approx(score(7, 5), abs=1e-5)
    assert score(0, 0) == pytest.approx(float(jnp.sum(q * k)), abs=1e-5)
    assert abs(score(3, 1) - score(3, 2)) > 1e-3  # and it does depend on the offset


def test_rope_base_changes_the_model():
    tokens = jnp.arange(8)[None] % VOCAB
    a = forward(*split(llama_tiny(VOCAB, rope_base=10.0)), tokens).logits
    b = forward(*split(llama_tiny(VOCAB, rope_base=1e5)), tokens).logits
    assert not np.allclose(a, b, atol=1e-4)


def test_families_have_the_documented_parameters():
    _, llama = split(llama_tiny(VOCAB, tie_embeddings=False))
    _, gpt2 = split(gpt2_tiny(VOCAB))
    llama_names = {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(llama)}
    gpt2_names = {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(gpt2)}
    assert "layers/0/mlp/gate_proj/kernel" in llama_names and "lm_head/kernel" in llama_names
    assert not any("position_embed" in n or "bias" in n for n in llama_names)
    assert "position_embed/embedding" in gpt2_names and "layers/0/mlp/fc_in/bias" in gpt2_names
    assert not any("lm_head" in n for n in gpt2_names)  # tied
    # GQA: k/v projections are narrower than q.
    cfg = llama_tiny(VOCAB)
    assert llama["layers"][0]["attn"]["k_proj"]["kernel"].shape[1] == cfg.kv_heads * cfg.dims_per_head
    assert cfg.kv_heads < cfg.num_heads


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(d_model=30, num_heads=4), "not divisible"),
        (dict(num_heads=4, num_kv_heads=3), "multiple of num_kv_heads"),
        (dict(family="bert"), "unknown model family"),
    ],
)
def test_bad_configs_are_rejected_with_a_reason(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TransformerConfig(vocab_size=VOCAB, **kwargs)


def test_sequence_reward_is_read_at_the_last_real_token():
    config = llama_tiny(VOCAB)
    model = SequenceRewardModel(config, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(3), (3, 9), 1, VOCAB)
    lengths = jnp.array([2, 5, 9])
    rewards = model(tokens, lengths)
    # Independent path: per-position head output, then index by hand.
    per_position = model.head.per_position(model.backbone(tokens).hidden)
    np.testing.assert_allclose(rewards, per_position[jnp.arange(3), lengths - 1], atol=1e-6)
    # Padding after the last real token does not matter.
    padded = tokens.at[0, 2:].set(0).at[1, 5:].set(7)
    np.testing.assert_allclose(model(padded, lengths), rewards, atol=1e-5)


def test_value_and_token_reward_heads_give_one_number_per_position():
    hidden = jax.random.normal(jax.random.key(0), (2, 7, 16))
    value = ValueHead(16, rngs=nnx.Rngs(0))
    token_reward = TokenRewardHead(16, rngs=nnx.Rngs(1))
    w = value.proj.kernel[...][:, 0]
    np.testing.assert_allclose(value(hidden), hidden @ w + value.proj.bias[...][0], atol=1e-5)
    assert token_reward(hidden).shape == (2, 7)
    assert SequenceRewardHead(16, rngs=nnx.Rngs(0))(hidden, jnp.array([3, 7])).shape == (2,)
