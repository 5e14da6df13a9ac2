"""LoRA (jirl/models/lora.py): only adapters train, merging equals base + adapters, unmerging
restores the base, and the merged export loads as the base model's architecture."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jirl.config import JirlError
from jirl.models import llama
from jirl.models.lora import ADAPTERS, adapter_params, add_lora, lora_layers, merge_lora, unmerge_lora, without_lora
from jirl.models.loading import save_safetensors
from jirl.train.sft import sft_loss
from jirl.train.step import init_train_state, make_update_step

FIXTURES = Path(__file__).parent / "fixtures"
TOKENS = jnp.asarray([[1, 5, 9, 2, 7, 7, 3, 0], [4, 4, 8, 1, 2, 6, 0, 0]])


def base_model():
    config, graphdef, params = llama.load_hf(FIXTURES / "tiny_llama")
    return config, nnx.merge(graphdef, params)


def trained_lora_model(steps=20):
    config, model = base_model()
    add_lora(model, rank=4, alpha=8.0, targets=("q_proj", "v_proj", "down_proj"))
    graphdef, params = nnx.split(model)
    optimizer = optax.adam(1e-2)
    state = init_train_state(params, optimizer, jax.random.key(0), trainable=ADAPTERS)
    step = make_update_step(sft_loss(graphdef), optimizer)
    batch = {"tokens": TOKENS, "prompt_len": jnp.array([2, 2]), "response_len": jnp.array([5, 4])}
    for _ in range(steps):
        state, metrics = step(state, batch)
    return config, graphdef, state


def test_only_adapters_train_and_the_base_weights_stay_unchanged():
    _, base = base_model()
    _, graphdef, state = trained_lora_model()
    assert all(isinstance(v, nnx.LoRAParam) for v in jax.tree_util.tree_leaves(state.params, is_leaf=lambda x: isinstance(x, nnx.Variable)))
    model = nnx.merge(graphdef, state.full_params)
    np.testing.assert_array_equal(model.layers[0].attn.q_proj.base.kernel[...], base.layers[0].attn.q_proj.kernel[...])
    np.testing.assert_array_equal(model.embed.embedding[...], base.embed.embedding[...])
    assert float(jnp.max(jnp.abs(model.layers[1].attn.v_proj.lora_b[...]))) > 0  # the adapters moved
    before = base(TOKENS).logits
    assert float(jnp.max(jnp.abs(model(TOKENS).logits - before))) > 1e-3


def test_merged_model_equals_base_plus_adapters_and_unmerge_restores_it():
    _, graphdef, state = trained_lora_model()
    model = nnx.merge(graphdef, state.full_params)
    logits = model(TOKENS).logits
    layer = model.layers[0].attn.q_proj
    base_kernel = np.asarray(layer.base.kernel[...])
    expected = base_kernel + layer.scale * np.asarray(layer.lora_a[...]) @ np.asarray(layer.lora_b[...])
    merge_lora(model)
    np.testing.assert_allclose(layer.base.kernel[...], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(model(TOKENS).logits, logits, rtol=1e-5, atol=1e-5)
    plain = without_lora(model)
    assert not lora_layers(plain)
    np.testing.assert_allclose(plain(TOKENS).logits, logits, rtol=1e-5, atol=1e-5)
    unmerge_lora(model)
    np.testing.assert_allclose(layer.base.kernel[...], base_kernel, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(model(TOKENS).logits, logits, rtol=1e-5, atol=1e-5)


def test_adapters_alone_and_export_of_the_merged_model(tmp_path):
    config, graphdef, state = trained_lora_model()
    adapters = adapter_params(state.full_params)
    sizes = [x.size for x in jax.tree_util.tree_leaves(adapters)]
    assert len(sizes) == 2 * 3 * config.num_layers and sum(sizes) < 0.25 * sum(x.size for x in jax.tree_util.tree_leaves(state.full_params))
    plain = without_lora(nnx.merge(graphdef, state.full_params))
    save_safetensors(nnx.state(plain), llama.hf_rules(config), llama.config_to_hf(config), tmp_path)
    _, g2, p2 = llama.load_hf(tmp_path)
    np.testing.assert_allclose(nnx.merge(g2, p2)(TOKENS).logits, plain(TOKENS).logits, rtol=1e-6, atol=1e-6)


def test_bad_lora_targets_are_refused():
    _, model = base_model()
    with pytest.raises(JirlError, match=r"LoRA targets \['qkv'\] match no projection"):
        add_lora(model, targets=("qkv",))
    with pytest.raises(JirlError, match="rank must be >= 1"):
        add_lora(model, rank=0, targets=("q_proj",))


def test_merged_export_round_trips_through_the_reference_implementation(tmp_path):
    """jirl exports exactly the committed ``tiny_llama_lora`` folder, and transformers (logits
    stored by ``scripts/make_model_fixtures.py``) computes what jirl computes with it."""
    import importlib.util
    import json

    from safetensors.numpy import load_file

    spec = importlib.util.spec_from_file_location("export_lora_fixture", Path(__file__).parents[2] / "scripts" / "export_lora_fixture.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    config, plain = script.merged_lora_model()
    save_safetensors(nnx.state(plain), llama.hf_rules(config), llama.config_to_hf(config), tmp_path)
    committed = load_file(str(FIXTURES / "tiny_llama_lora" / "model.safetensors"))
    exported = load_file(str(tmp_path / "model.safetensors"))
    assert set(committed) == set(exported)
    for name, value in exported.items():
        np.testing.assert_allclose(value, committed[name], rtol=1e-6, atol=1e-6, err_msg=name)
    reference = json.loads((FIXTURES / "tiny_models.json").read_text())
    _, graphdef, params = llama.load_hf(FIXTURES / "tiny_llama_lora")
    for ids, expected in zip(reference["prompts"], reference["tiny_llama_lora"]):
        got = np.asarray(nnx.merge(graphdef, params)(jnp.asarray([ids])).logits[0, -1], np.float64)
        assert np.max(np.abs(got - expected)) / np.max(np.abs(expected)) <= 1e-4
        base = np.asarray(reference["tiny_llama"][reference["prompts"].index(ids)])
        assert np.max(np.abs(base - expected)) > 1e-2  # the adapters changed the model


def test_an_adapters_only_checkpoint_restores_the_trained_model(tmp_path):
    from jirl.models.lora import with_adapters
    from jirl.train.checkpoint import CheckpointManager

    config, graphdef, state = trained_lora_model()
    trained = state.full_params
    with CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(20, adapter_params(trained), {"rank": 4})
    saved_bytes = sum(f.stat().st_size for f in (tmp_path / "ckpt").rglob("*") if f.is_file())
    full_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(trained))
    assert saved_bytes < full_bytes  # the base weights are not in it
    # A fresh start: the base model again, new (untrained) adapters, then the checkpoint.
    _, fresh = base_model()
    add_lora(fresh, rank=4, alpha=8.0, targets=("q_proj", "v_proj", "down_proj"), seed=1)
    fresh_graphdef, fresh_params = nnx.split(fresh)
    with CheckpointManager(tmp_path / "ckpt") as manager:
        adapters, metadata = manager.restore(adapter_params(fresh_params))
    restored = with_adapters(fresh_params, adapters)
    np.testing.assert_allclose(nnx.merge(fresh_graphdef, restored)(TOKENS).logits, nnx.merge(graphdef, trained)(TOKENS).logits, atol=1e-6)
    assert metadata["rank"] == 4
