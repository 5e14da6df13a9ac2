"""Write ``tests/models/fixtures/tiny_llama_lora/``: the tiny random Llama with rank-4 LoRA
adapters on every attention and MLP projection (deterministic values), merged and exported by
jirl in the Hugging Face layout. ``scripts/make_model_fixtures.py`` then records what the
reference implementation computes with it, and ``tests/models/test_lora.py`` checks that jirl
still exports exactly this and computes the same logits.

    python scripts/export_lora_fixture.py
"""

from __future__ import annotations

from pathlib import Path

import jax
from flax import nnx

from jirl.models import llama
from jirl.models.loading import save_safetensors
from jirl.models.lora import ATTENTION, add_lora, lora_layers, without_lora

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "models" / "fixtures"


def merged_lora_model():
    """``(config, plain merged model)`` built from the ``tiny_llama`` fixture."""
    config, graphdef, params = llama.load_hf(FIXTURES / "tiny_llama")
    model = add_lora(nnx.merge(graphdef, params), rank=4, alpha=8.0, targets=ATTENTION + ("gate_proj", "up_proj", "down_proj"))
    for i, layer in enumerate(lora_layers(model)):  # B starts at zero; give it values to export
        layer.lora_b[...] = 0.1 * jax.random.normal(jax.random.key(i), layer.lora_b[...].shape)
    return config, without_lora(model)


def main() -> None:
    config, plain = merged_lora_model()
    save_safetensors(nnx.state(plain), llama.hf_rules(config), llama.config_to_hf(config), FIXTURES / "tiny_llama_lora")


if __name__ == "__main__":
    main()
