"""What credit schemes read from models (jirl/credit/models.py): potentials on prefixes, a
reward model's own attention for ABC, and clear errors for models that cannot provide them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jirl.config import JirlError
from jirl.credit import schemes
from jirl.credit.models import attention_inputs, prefix_potentials, scores_and_attention, token_rewards
from jirl.models.heads import SequenceRewardModel, TokenRewardModel
from jirl.models.transformer import llama_tiny, rotary_embedding

VOCAB, HORIZON = 7, 5
TOKENS = jnp.array([[3, 4, 5, 6, 2, 1, 0, 0], [2, 5, 1, 1, 3, 0, 0, 0], [6, 6, 2, 4, 4, 4, 2, 1]])
PROMPT_LENS = jnp.array([2, 1, 3])
RESPONSE_LENS = jnp.array([4, 4, 5])


def reward_model(seed=0):
    return nnx.split(SequenceRewardModel(llama_tiny(VOCAB, max_len=8, d_model=32), rngs=nnx.Rngs(seed)))


def test_prefix_potentials_score_each_prefix_on_its_own():
    graphdef, params = reward_model()
    score_alone = jax.jit(lambda tokens, lengths: nnx.merge(graphdef, params)(tokens, lengths))  # one compile per prefix length
    phi = np.asarray(prefix_potentials(graphdef, params, TOKENS, PROMPT_LENS, HORIZON))
    assert phi.shape == (3, HORIZON + 1)
    for b in range(3):
        for t in range(HORIZON + 1):
            length = int(PROMPT_LENS[b]) + t  # state s_t: prompt + t response tokens
            if length > TOKENS.shape[1]:
                continue
            alone = float(score_alone(TOKENS[b : b + 1, :length], jnp.array([length]))[0])
            np.testing.assert_allclose(phi[b, t], alone, atol=1e-5)


def test_token_rewards_read_each_response_token():
    graphdef, params = nnx.split(TokenRewardModel(llama_tiny(VOCAB, max_len=8, d_model=32), rngs=nnx.Rngs(1)))
    per_slot = np.asarray(nnx.merge(graphdef, params)(TOKENS))
    got = np.asarray(token_rewards(graphdef, params, TOKENS, PROMPT_LENS, HORIZON))
    for b in range(3):
        for t in range(int(RESPONSE_LENS[b])):
            assert got[b, t] == pytest.approx(per_slot[b, int(PROMPT_LENS[b]) + t], abs=1e-6)


def manual_last_layer_attention(model, tokens, lengths):
    """The last layer's attention from the scoring token, recomputed in NumPy from the layer's
    weights and its input (the hidden state after the earlier layers)."""
    backbone = model.backbone
    cfg = backbone.config
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    x = backbone.embed(tokens)
    for layer in backbone.layers[:-1]:
        x, _, _ = layer(x, positions)
    last = backbone.layers[-1]
    h = last.attn_norm(x)
    q = rotary_embedding(last.attn.q_proj(h).reshape(*tokens.shape, cfg.num_heads, cfg.dims_per_head), positions, cfg.rope_base)
    k = rotary_embedding(last.attn.k_proj(h).reshape(*tokens.shape, cfg.kv_heads, cfg.dims_per_head), positions, cfg.rope_base)
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    group = cfg.num_heads // cfg.kv_heads
    out = np.zeros((tokens.shape[0], tokens.shape[1]))
    for b in range(tokens.shape[0]):
        i = int(lengths[b]) - 1
        for head in range(cfg.num_heads):
            scores = np.array([q[b, i, head] @ k[b, j, head // group] for j in range(i + 1)]) / np.sqrt(cfg.dims_per_head)
            w = np.exp(scores - scores.max())
            out[b, : i + 1] += w / w.sum() / cfg.num_heads
    return out


def test_abc_attention_is_the_reward_models_own_attention():
    graphdef, params = reward_model()
    model = nnx.merge(graphdef, params)
    scores, attention = scores_and_attention(graphdef, params, TOKENS, PROMPT_LENS, RESPONSE_LENS, HORIZON)
    np.testing.assert_allclose(scores, model(TOKENS, PROMPT_LENS + RESPONSE_LENS), atol=1e-6)
    manual = manual_last_layer_attention(model, TOKENS, PROMPT_LENS + RESPONSE_LENS)
    for b in range(3):
        p, n = int(PROMPT_LENS[b]), int(RESPONSE_LENS[b])
        expected = manual[b, p : p + n] / manual[b, p : p + n].sum()
        np.testing.assert_allclose(attention[b, :n], expected, atol=1e-5)
        assert np.all(np.asarray(attention[b, n:]) == 0)


def test_perturbing_the_attention_moves_the_credit():
    graphdef, params = reward_model()
    mask = jnp.arange(HORIZON)[None, :] < RESPONSE_LENS[:, None]
    rewards = jnp.where(jnp.arange(HORIZON)[None, :] == RESPONSE_LENS[:, None] - 1, jnp.array([[1.0], [-2.0], [3.0]]), 0.0)
    inputs = attention_inputs(graphdef, params, HORIZON)(TOKENS, PROMPT_LENS, RESPONSE_LENS)
    before = schemes.attention_credit(rewards, mask, abc_weight=1.0, **inputs)
    # Zero the last layer's queries: every visible key gets the same attention, so the credit
    # must become uniform over the response, whatever the rest of the model does.
    model = nnx.merge(graphdef, params)
    model.backbone.layers[-1].attn.q_proj.kernel[...] = 0.0
    inputs = attention_inputs(*nnx.split(model), HORIZON)(TOKENS, PROMPT_LENS, RESPONSE_LENS)
    after = schemes.attention_credit(rewards, mask, abc_weight=1.0, **inputs)
    uniform = schemes.uniform(rewards, mask)
    np.testing.assert_allclose(after, uniform, atol=1e-6)
    assert float(jnp.max(jnp.abs(before - uniform))) > 1e-3
    np.testing.assert_allclose(jnp.sum(before, axis=1), jnp.sum(rewards, axis=1), atol=1e-5)


class EmbeddingRewardModel(nnx.Module):
    """A reward model with no attention to read: a bag-of-embeddings linear scorer."""

    def __init__(self, rngs):
        self.embed = nnx.Embed(VOCAB, 8, rngs=rngs)
        self.head = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, tokens, lengths):
        return self.head(self.embed(tokens).mean(axis=1))[:, 0]


def test_a_reward_model_without_attention_is_refused_for_abc():
    graphdef, params = nnx.split(EmbeddingRewardModel(nnx.Rngs(0)))
    with pytest.raises(JirlError, match="EmbeddingRewardModel.*attention"):
        attention_inputs(graphdef, params, HORIZON)
    with pytest.raises(JirlError, match="needs a reward model with attention weights"):
        scores_and_attention(graphdef, params, TOKENS, PROMPT_LENS, RESPONSE_LENS, HORIZON)
    with pytest.raises(JirlError, match="layer=5 is out of range"):
        scores_and_attention(*reward_model(), TOKENS, PROMPT_LENS, RESPONSE_LENS, HORIZON, layer=5)
    with pytest.raises(JirlError, match="cannot give potentials"):
        prefix_potentials(graphdef, params, TOKENS, PROMPT_LENS, HORIZON)
