"""Pretrained-weight import (jirl/models/llama.py, gpt2.py, loading.py) against the PyTorch
reference: tiny random Llama and GPT-2 models saved by Hugging Face transformers, and their
logits, stored by ``scripts/make_model_fixtures.py``."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jirl.models import gpt2, llama
from jirl.models.loading import WeightsError

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = json.loads((FIXTURES / "tiny_models.json").read_text())
FAMILIES = {"tiny_llama": llama, "tiny_gpt2": gpt2, "tiny_qwen2": llama}  # Qwen2: Llama with q/k/v biases


def relative_error(got, expected) -> float:
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))


def last_logits(graphdef, params, ids):
    return nnx.merge(graphdef, params)(jnp.asarray([ids])).logits[0, -1]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_logits_match_the_reference_implementation(name):
    config, graphdef, params = FAMILIES[name].load_hf(FIXTURES / name)
    for ids, expected in zip(REFERENCE["prompts"], REFERENCE[name]):
        assert relative_error(last_logits(graphdef, params, ids), expected) <= 1e-4


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_export_round_trips_the_checkpoint(name, tmp_path):
    module = FAMILIES[name]
    config, graphdef, params = module.load_hf(FIXTURES / name)
    from safetensors.numpy import load_file

    from jirl.models.loading import save_safetensors

    prefix = {"prefix": "transformer."} if module is gpt2 else {}
    save_safetensors(params, module.hf_rules(config, **prefix), module.config_to_hf(config), tmp_path)
    original, exported = load_file(str(FIXTURES / name / "model.safetensors")), load_file(str(tmp_path / "model.safetensors"))
    for key, value in exported.items():
        np.testing.assert_array_equal(value, original[key], err_msg=key)
    assert set(original) - set(exported) <= {"lm_head.weight"}  # GPT-2's tied copy, if stored


def copy_fixture(name, tmp_path, **config_changes):
    target = tmp_path / name
    shutil.copytree(FIXTURES / name, target)
    config = json.loads((target / "config.json").read_text())
    config.update(config_changes)
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_config_and_weights_mismatches_are_named(tmp_path):
    with pytest.raises(WeightsError, match=r"lacks 9 tensor\(s\).*model\.layers\.2\."):
        llama.load_hf(copy_fixture("tiny_llama", tmp_path / "a", num_hidden_layers=3))
    with pytest.raises(WeightsError, match=r"mlp\.(down|gate)_proj\.weight' has shape .* but the config needs"):
        llama.load_hf(copy_fixture("tiny_llama", tmp_path / "b", intermediate_size=96))
    with pytest.raises(WeightsError, match=r"lm_head.weight differs from model.embed_tokens.weight"):
        llama.load_hf(copy_fixture("tiny_llama", tmp_path / "c", tie_word_embeddings=True))
    from safetensors.numpy import load_file, save_file

    folder = copy_fixture("tiny_gpt2", tmp_path / "d")
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["transformer.h.1.mlp.c_fc.bias"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(WeightsError, match=r"lacks 1 tensor\(s\).*transformer\.h\.1\.mlp\.c_fc\.bias"):
        gpt2.load_hf(folder)
    with pytest.raises(WeightsError, match="sliding-window attention"):
        llama.load_hf(copy_fixture("tiny_qwen2", tmp_path / "e", use_sliding_window=True))
    with pytest.raises(WeightsError, match="config.json not found"):
        llama.load_hf(tmp_path)


@pytest.mark.slow
def test_sharded_loading_on_eight_fake_devices_gives_the_same_logits():
    script = textwrap.dedent(f"""
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
        import jax, json, numpy as np, jax.numpy as jnp
        from flax import nnx
        from jirl.models import llama
        from jirl.sharding import make_mesh
        path = {str(FIXTURES / "tiny_llama")!r}
        _, graphdef, plain = llama.load_hf(path)
        mesh = make_mesh(data=1, fsdp=8)
        _, graphdef, sharded = llama.load_hf(path, mesh=mesh, strategy="fsdp")
        spread = [len(x.sharding.device_set) for x in jax.tree_util.tree_leaves(sharded)]
        ids = jnp.asarray([[1, 5, 9, 2, 7]])
        a = nnx.merge(graphdef, plain)(ids).logits
        b = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t).logits)(sharded, ids)
        print(json.dumps({{"devices": len(jax.devices()), "max_spread": max(spread),
                          "split": sum(not x.sharding.is_fully_replicated for x in jax.tree_util.tree_leaves(sharded)),
                          "diff": float(jnp.max(jnp.abs(a - b)))}}))
    """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == 8 and result["max_spread"] == 8 and result["split"] >= 1
    assert result["diff"] < 1e-5


def test_a_hub_id_without_the_hub_is_a_clear_error(monkeypatch):
    from jirl.config import JirlError
    from jirl.models.pretrained import load_pretrained

    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read at import time
    with pytest.raises(JirlError, match="could not fetch 'someone/no-such-model' from the Hugging Face hub"):
        load_pretrained("someone/no-such-model")
    # A local Hugging Face folder loads through the same entry point.
    model = load_pretrained(str(FIXTURES / "tiny_qwen2"))
    assert model.config.qkv_bias and model.tokenizer is None


def test_an_org_name_that_is_no_local_path_is_fetched_from_the_hub_and_says_so(monkeypatch, capsys, tmp_path):
    from jirl.config import JirlError
    from jirl.models import pretrained

    fetched = []

    def offline(repo_id):
        fetched.append(repo_id)
        raise JirlError(f"could not fetch {repo_id!r} from the Hugging Face hub")

    monkeypatch.setattr(pretrained, "download_from_hub", offline)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(JirlError, match="could not fetch 'someorg/somemodel'"):
        pretrained.load_pretrained("someorg/somemodel")
    assert fetched == ["someorg/somemodel"]
    assert "'someorg/somemodel' is not a local path: fetching it from the Hugging Face hub" in capsys.readouterr().err
    (tmp_path / "someorg" / "somemodel").mkdir(parents=True)  # a local folder of that name wins: no fetch
    with pytest.raises(JirlError, match="config.json"):
        pretrained.load_pretrained("someorg/somemodel")
    assert fetched == ["someorg/somemodel"]
