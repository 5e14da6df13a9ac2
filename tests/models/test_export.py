"""Export to Hugging Face folders (jirl/models/export.py), checked without torch: the folders
``scripts/check_hf_export.py`` loaded in transformers and PEFT are rebuilt here from the same
recipe, reloaded with jirl and compared with the logits transformers computed
(``fixtures/hf_export_reference.json``); shards, dtypes, PEFT names and layout, tokenizer files
and the refusals are checked directly."""

import argparse
import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import load_file

from jirl.config import JirlError
from jirl.models import gpt2, llama
from jirl.models.export import (
    ExportError, add_export_arguments, export_command, export_hf, export_reward_model, load_reward_head, parse_size, plan_shards,
)
from jirl.models.heads import SequenceRewardModel
from jirl.models.pretrained import load_pretrained
from jirl.models.tokenizers import load_tokenizer
from jirl.models.transformer import TransformerConfig

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = json.loads((FIXTURES / "hf_export_reference.json").read_text())
TOLERANCE = 1e-4


def load_script():
    """``scripts/check_hf_export.py`` as a module: the model, tokenizer and export recipe."""
    spec = importlib.util.spec_from_file_location("check_hf_export", Path(__file__).parents[2] / "scripts" / "check_hf_export.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


SCRIPT = load_script()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Every variant the script checked in transformers, exported again here."""
    return SCRIPT.export_variants(tmp_path_factory.mktemp("export"))


def reloaded_logits(folder):
    """jirl's last-position logits of the reference prompts, from ``load_pretrained(folder)``."""
    pretrained = load_pretrained(str(folder))
    return SCRIPT.jirl_logits(pretrained.graphdef, pretrained.params, REFERENCE["prompts"])


@pytest.mark.parametrize("variant", ["merged_float32", "merged_bfloat16", "qwen2_merged_float32"])
def test_reloaded_export_computes_what_transformers_computed(folders, variant):
    assert SCRIPT.max_abs_diff(reloaded_logits(folders[variant]), REFERENCE["logits"][variant]) <= TOLERANCE


def test_the_lora_model_itself_matches_transformers_merged_and_peft():
    config, graphdef, params = SCRIPT.lora_model()
    logits = SCRIPT.jirl_logits(graphdef, params, REFERENCE["prompts"])
    assert SCRIPT.max_abs_diff(logits, REFERENCE["logits"]["merged_float32"]) <= TOLERANCE
    assert SCRIPT.max_abs_diff(logits, REFERENCE["logits"]["peft"]) <= TOLERANCE
    mixed = SCRIPT.jirl_logits(*SCRIPT.mixed_rank_lora_model()[1:], REFERENCE["prompts"])
    assert SCRIPT.max_abs_diff(mixed, REFERENCE["logits"]["peft_mixed_ranks"]) <= TOLERANCE
    # bfloat16 weights round the model by a bounded amount, and the adapters matter.
    assert SCRIPT.max_abs_diff(REFERENCE["logits"]["merged_bfloat16"], logits) <= REFERENCE["bf16_weight_tolerance"]
    base = load_pretrained(str(FIXTURES / "tiny_llama"))
    assert SCRIPT.max_abs_diff(SCRIPT.jirl_logits(base.graphdef, base.params, REFERENCE["prompts"]), logits) > 1e-2


@pytest.mark.parametrize("variant, dtype, code", [("merged_float32", "float32", "F32"), ("merged_bfloat16", "bfloat16", "BF16")])
def test_shards_index_every_tensor_once_in_the_dtype_asked_for(folders, variant, dtype, code):
    folder = folders[variant]
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) >= 2 and not (folder / "model.safetensors").exists()
    assert sorted(set(index["weight_map"].values())) == [s.name for s in shards]
    assert all(s.name.endswith(f"-of-{len(shards):05d}.safetensors") for s in shards)
    seen, total = [], 0
    for shard in shards:
        before = total
        with safe_open(str(shard), framework="numpy") as handle:
            assert handle.metadata() == {"format": "pt"}
            for name in handle.keys():
                assert index["weight_map"][name] == shard.name
                assert handle.get_slice(name).get_dtype() == code
                tensor = handle.get_tensor(name)
                total += tensor.nbytes
                seen.append(name)
            assert total - before <= parse_size(SCRIPT.SHARD_SIZE) or len(handle.keys()) == 1
    assert sorted(seen) == sorted(index["weight_map"]) and len(seen) == len(set(seen))
    config, _, _ = SCRIPT.lora_model()
    assert set(seen) == {rule.source for rule in llama.hf_rules(config)}
    assert index["metadata"]["total_size"] == total
    hf = json.loads((folder / "config.json").read_text())
    assert hf["torch_dtype"] == dtype and hf["architectures"] == ["LlamaForCausalLM"]
    assert (hf["bos_token_id"], hf["eos_token_id"], hf["pad_token_id"]) == (1, 2, 0)
    assert json.loads((folder / "generation_config.json").read_text()) == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


def test_shards_split_as_transformers_splits():
    tensors = {"a": np.zeros(10, np.float32), "b": np.zeros(10, np.float32), "big": np.zeros(100, np.float32), "c": np.zeros(5, np.float32)}
    # huggingface_hub files a too-large tensor as its own shard at once, ahead of the open one.
    assert plan_shards(tensors, 80) == [["big"], ["a", "b"], ["c"]]
    assert plan_shards(tensors, 10**6) == [["a", "b", "big", "c"]]
    assert (parse_size("2GB"), parse_size("500MB"), parse_size("1GiB"), parse_size(" 40 kb "), parse_size(123)) == (
        2 * 10**9, 5 * 10**8, 2**30, 40_000, 123)
    with pytest.raises(ExportError, match="is not a size"):
        parse_size("two gigs")


def test_float16_and_a_single_file_when_the_weights_fit(tmp_path):
    config, graphdef, params = SCRIPT.lora_model()
    export_hf(tmp_path / "f16", config, graphdef, params, dtype="float16")
    assert sorted(p.name for p in (tmp_path / "f16").iterdir()) == ["config.json", "model.safetensors"]
    with safe_open(str(tmp_path / "f16" / "model.safetensors"), framework="numpy") as handle:
        assert {handle.get_slice(name).get_dtype() for name in handle.keys()} == {"F16"}
    assert json.loads((tmp_path / "f16" / "config.json").read_text())["torch_dtype"] == "float16"
    assert SCRIPT.max_abs_diff(reloaded_logits(tmp_path / "f16"), REFERENCE["logits"]["merged_float32"]) <= 0.05


def test_peft_adapters_have_peft_names_and_shapes_and_merge_by_hand_to_the_merged_export(folders):
    folder = folders["peft"]
    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA" and adapter_config["task_type"] == "CAUSAL_LM"
    assert (adapter_config["r"], adapter_config["lora_alpha"], adapter_config["bias"], adapter_config["fan_in_fan_out"]) == (4, 8.0, "none", False)
    assert adapter_config["target_modules"] == sorted(SCRIPT.LORA_TARGETS)
    assert Path(adapter_config["base_model_name_or_path"]) == (folder / "base").resolve()
    adapters = load_file(str(folder / "adapter_model.safetensors"))
    base = load_file(str(folder / "base" / "model.safetensors"))
    merged = {}
    for shard in folders["merged_float32"].glob("model-*.safetensors"):
        merged.update(load_file(str(shard)))
    assert set(base) == set(merged)
    parts = {"q_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn", "gate_proj": "mlp", "down_proj": "mlp"}
    expected = {f"base_model.model.model.layers.{n}.{part}.{proj}.lora_{ab}.weight"
                for n in range(2) for proj, part in parts.items() for ab in "AB"}
    assert set(adapters) == expected
    scale = adapter_config["lora_alpha"] / adapter_config["r"]
    adapted = set()
    for name, a in adapters.items():
        if ".lora_A." not in name:
            continue
        module = name.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        b = adapters[f"base_model.model.{module}.lora_B.weight"]
        weight = base[f"{module}.weight"]
        assert a.shape == (4, weight.shape[1]) and b.shape == (weight.shape[0], 4)
        np.testing.assert_allclose(weight + scale * (b @ a), merged[f"{module}.weight"], rtol=1e-5, atol=1e-5, err_msg=module)
        adapted.add(f"{module}.weight")
    for name in set(base) - adapted:  # what has no adapter is the base weight itself
        np.testing.assert_array_equal(base[name], merged[name], err_msg=name)


def test_different_ranks_go_to_peft_rank_and_alpha_patterns(folders):
    adapter_config = json.loads((folders["peft_mixed_ranks"] / "adapter_config.json").read_text())
    assert (adapter_config["r"], adapter_config["lora_alpha"]) == (4, 8.0)
    assert adapter_config["rank_pattern"] == {f"model.layers.{n}.mlp.down_proj": 2 for n in range(2)}
    assert adapter_config["alpha_pattern"] == {f"model.layers.{n}.mlp.down_proj": 3.0 for n in range(2)}
    assert adapter_config["target_modules"] == ["down_proj", "q_proj", "v_proj"]


def test_tokenizer_files_round_trip(folders):
    original = SCRIPT.tiny_tokenizer()
    expected = REFERENCE["tokenizer"]
    for folder in (folders["merged_float32"], folders["peft"]):
        loaded = load_tokenizer(folder)
        assert loaded.encode(SCRIPT.TEXT) == original.encode(SCRIPT.TEXT) == expected["ids"]
        chat = loaded.apply_chat_template(SCRIPT.CHAT)
        assert chat == original.apply_chat_template(SCRIPT.CHAT) == expected["chat_text"]
        assert loaded.encode(chat) == expected["chat_ids"]
        assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == (expected["bos_token"], expected["eos_token"], expected["pad_token"])
        assert loaded.decode(loaded.encode(SCRIPT.TEXT)) == SCRIPT.TEXT
    config = json.loads((folders["merged_float32"] / "tokenizer_config.json").read_text())
    assert config["chat_template"] == SCRIPT.CHATML and config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert json.loads((folders["merged_float32"] / "special_tokens_map.json").read_text()) == {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    assert load_pretrained(str(folders["merged_float32"])).tokenizer.encode(SCRIPT.TEXT) == expected["ids"]


def test_a_non_empty_folder_is_refused_and_overwrite_keeps_other_files(tmp_path):
    config, graphdef, params = SCRIPT.lora_model()
    out = tmp_path / "out"
    export_hf(out, config, graphdef, params, max_shard_size=SCRIPT.SHARD_SIZE)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="is not empty.*overwrite=True"):
        export_hf(out, config, graphdef, params)
    assert len(list(out.glob("model-*.safetensors"))) >= 2  # nothing was touched
    export_hf(out, config, graphdef, params, overwrite=True)  # now fits one file: stale shards go
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "notes.txt"]
    assert SCRIPT.max_abs_diff(reloaded_logits(out), REFERENCE["logits"]["merged_float32"]) <= TOLERANCE
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="not a folder"):
        export_hf(tmp_path / "file", config, graphdef, params)


def test_bad_options_and_models_are_refused_with_the_fix(tmp_path):
    config, graphdef, params = SCRIPT.lora_model()
    with pytest.raises(ExportError, match="unknown export dtype 'int8'"):
        export_hf(tmp_path / "a", config, graphdef, params, dtype="int8")
    with pytest.raises(ExportError, match="unknown lora mode 'fold'.*'merge'"):
        export_hf(tmp_path / "a", config, graphdef, params, lora="fold")
    with pytest.raises(ExportError, match="max_shard_size"):
        export_hf(tmp_path / "a", config, graphdef, params, max_shard_size="big")
    with pytest.raises(ExportError, match="not exportable"):
        export_hf(tmp_path / "a", object(), graphdef, params)
    assert not (tmp_path / "a").exists()  # refused before anything was written
    base_config, base_graphdef, base_params = llama.load_hf(FIXTURES / "tiny_llama")
    with pytest.raises(ExportError, match="needs a model with LoRA adapters"):
        export_hf(tmp_path / "b", base_config, base_graphdef, base_params, lora="peft")
    assert not (tmp_path / "b").exists()
    wide = TransformerConfig(vocab_size=64, d_model=32, num_layers=3, num_heads=4)
    with pytest.raises(ExportError, match="config the model was built with"):
        export_hf(tmp_path / "c", wide, base_graphdef, base_params)
    assert issubclass(ExportError, JirlError)


def test_gpt2_exports_and_reloads(tmp_path):
    config, graphdef, params = gpt2.load_hf(FIXTURES / "tiny_gpt2")
    export_hf(tmp_path / "gpt2", config, graphdef, params, dtype="float32", max_shard_size="30KB")
    reference = json.loads((FIXTURES / "tiny_models.json").read_text())
    assert SCRIPT.max_abs_diff(reloaded_logits(tmp_path / "gpt2"), reference["tiny_gpt2"]) <= TOLERANCE
    assert json.loads((tmp_path / "gpt2" / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    SCRIPT.with_deterministic_adapters(model := nnx.merge(graphdef, params), rank=2, alpha=2.0, targets=("q_proj",))
    with pytest.raises(ExportError, match="lora='merge'"):
        export_hf(tmp_path / "gpt2_peft", config, *nnx.split(model), lora="peft")


def random_reward_model(config):
    """``(graphdef, params)`` of a ``SequenceRewardModel`` with NumPy-drawn parameters (built
    abstractly: eager initialisation compiles every initialiser, seconds on CPU)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: SequenceRewardModel(config, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(3)
    return graphdef, jax.tree.map(lambda leaf: jnp.asarray(0.3 * rng.standard_normal(leaf.shape), jnp.float32), state)


def test_a_reward_model_exports_its_backbone_and_head(tmp_path):
    config = TransformerConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, max_len=16)
    graphdef, params = random_reward_model(config)
    out = export_reward_model(tmp_path / "rm", config, graphdef, params, dtype="float32")
    tokens, lengths = jnp.asarray([[1, 5, 9, 2, 0], [3, 4, 0, 0, 0]]), jnp.asarray([4, 2])
    backbone = load_pretrained(str(out))
    head = load_reward_head(out / "reward_head")
    assert head["kind"] == "sequence" and head["weight"].shape == (1, 32) and head["bias"].shape == (1,)
    hidden = np.asarray(jax.jit(lambda p, t: nnx.merge(backbone.graphdef, p)(t).hidden)(backbone.params, tokens))
    rewards = hidden[np.arange(2), np.asarray(lengths) - 1] @ head["weight"].T[:, 0] + head["bias"][0]
    expected = jax.jit(lambda p, t, n: nnx.merge(graphdef, p)(t, n))(params, tokens, lengths)
    np.testing.assert_allclose(rewards, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ExportError, match="backbone \\+ head"):
        export_reward_model(tmp_path / "lm", *SCRIPT.lora_model())


def test_export_command_writes_a_folder_load_pretrained_reads(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    args = parser.parse_args([str(FIXTURES / "tiny_llama"), str(tmp_path / "out"), "--dtype", "bfloat16", "--max-shard-size", "50KB"])
    assert export_command(args) == 0
    assert "exported" in capsys.readouterr().out
    assert len(list((tmp_path / "out").glob("model-*.safetensors"))) == 2
    reference = json.loads((FIXTURES / "tiny_models.json").read_text())
    assert SCRIPT.max_abs_diff(reloaded_logits(tmp_path / "out"), reference["tiny_llama"]) <= 0.1
    with pytest.raises(ExportError, match="not empty"):
        export_command(args)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen2", "tiny_gpt2"])
def test_exporting_a_transformers_checkpoint_writes_its_tensors_back_unchanged(tmp_path, name):
    """The layout check that does not go through jirl's own import rules: a folder transformers
    saved, loaded by jirl and exported, holds the very tensors (names, shapes, values) of the
    original file. (The loader's parity with transformers' logits is tested in test_pretrained, so
    a transpose wrong on the way in and back out would fail there.)"""
    original = load_file(str(FIXTURES / name / "model.safetensors"))
    model = load_pretrained(str(FIXTURES / name))
    export_hf(tmp_path / name, model.config, model.graphdef, model.params)
    exported = load_file(str(tmp_path / name / "model.safetensors"))
    tied = {"lm_head.weight"} - set(original)  # a tied head is written only when the original has it
    assert set(exported) - tied == set(original)
    for key, value in original.items():
        np.testing.assert_array_equal(exported[key], value.astype(np.float32), err_msg=key)
