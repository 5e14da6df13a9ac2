"""Trained-run weights (jirl/train/trained.py): what a text trainer saves is read back as the same
policy, and `jirl export RUN OUT` writes that policy (LoRA merged) as a folder that reloads to
the LoRA model's logits."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jirl.cli import main
from jirl.config import ConfigError
from jirl.models.lora import add_lora, lora_layers
from jirl.models.pretrained import load_pretrained
from jirl.train.trained import is_trained_run, load_trained, save_trained

FIXTURE = Path(__file__).resolve().parents[1] / "models" / "fixtures" / "tiny_llama"
TOKENS = jnp.asarray([[1, 5, 9, 2, 7, 7, 3, 0], [4, 4, 8, 1, 2, 6, 0, 0]])
LORA = {"rank": 4, "alpha": 8.0, "targets": ["q_proj", "v_proj"]}


def logits(graphdef, params):
    return np.asarray(nnx.merge(graphdef, params)(TOKENS).logits)


def lora_run(tmp_path):
    """A run folder as `jirl run dpo` leaves it, with adapters that are not zero (so a test that
    dropped them would fail); returns the folder and the LoRA model's logits."""
    base = load_pretrained(str(FIXTURE))
    model = add_lora(nnx.merge(base.graphdef, base.params), LORA["rank"], LORA["alpha"], tuple(LORA["targets"]))
    for i, layer in enumerate(lora_layers(model)):
        layer.lora_b[...] = 0.05 * jax.random.normal(jax.random.key(i), layer.lora_b[...].shape)
    graphdef, params = nnx.split(model)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"model": str(FIXTURE), "beta": 0.1}}))
    save_trained(run, 7, params, model=str(FIXTURE), lora=LORA, dtype="float32")
    return run, logits(graphdef, params), logits(base.graphdef, base.params)


def test_a_lora_run_loads_as_the_merged_policy_and_exports_to_the_same_logits(tmp_path):
    run, expected, base_logits = lora_run(tmp_path)
    assert np.max(np.abs(expected - base_logits)) > 1e-3  # the adapters change the model
    assert is_trained_run(run) and (run / "adapters").is_dir()
    base, params, run_config = load_trained(run)
    assert run_config["beta"] == 0.1
    np.testing.assert_allclose(logits(base.graphdef, params), expected, atol=1e-5)

    assert main(["export", str(run), str(tmp_path / "hf")]) == 0
    exported = load_pretrained(str(tmp_path / "hf"))
    np.testing.assert_allclose(logits(exported.graphdef, exported.params), expected, atol=1e-5)


def test_a_full_fine_tuning_run_restores_every_parameter(tmp_path):
    base = load_pretrained(str(FIXTURE))
    params = jax.tree_util.tree_map(lambda x: x + 0.01, base.params)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"model": str(FIXTURE)}}))
    save_trained(run, 3, params, model=str(FIXTURE), lora=None, dtype="float32")
    assert (run / "params").is_dir() and not (run / "adapters").exists()
    loaded_base, loaded, _ = load_trained(run)
    np.testing.assert_array_equal(logits(loaded_base.graphdef, loaded), logits(base.graphdef, params))


def test_a_folder_without_saved_weights_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert not is_trained_run(tmp_path)
    with pytest.raises(ConfigError, match="adapters/ or params/"):
        load_trained(tmp_path)


def test_adapters_saved_without_the_layout_metadata_are_refused(tmp_path):
    """An RL run's adapters (on a base that may itself be a trained run) are not read as if they
    sat on the pretrained model."""
    from jirl.train.checkpoint import CheckpointManager

    run = tmp_path / "run"
    (run / "adapters").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"config": {}}))
    with CheckpointManager(run / "adapters", keep_last=1) as manager:
        manager.save(1, {"x": jnp.zeros(2)}, {"model": str(FIXTURE), "lora": LORA})
    with pytest.raises(ConfigError, match="not written by save_trained"):
        load_trained(run)
