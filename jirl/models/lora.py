"""Low-rank adapters (LoRA; Hu et al. 2021, "LoRA: Low-rank adaptation of large language models").

A chosen ``nnx.Linear`` projection ``y = x W (+ b)`` becomes

    y = x W (+ b) + (alpha / r) x A B,   A: [in, r] (random),  B: [r, out] (zeros),

so the adapted model starts equal to the base. ``A`` and ``B`` are ``nnx.LoRAParam`` variables:
train them alone with ``init_train_state(params, optimizer, key, trainable=ADAPTERS)`` and the
base weights stay frozen; ``adapter_params`` picks them out for an adapters-only checkpoint.
``merge_lora`` folds ``(alpha / r) A B`` into ``W`` (``unmerge_lora`` takes it out again) and
``without_lora`` returns the plain model, e.g. for export to Hugging Face safetensors.

An adapters-only checkpoint is the adapters' state saved alone::

    manager.save(step, adapter_params(params), metadata)            # jirl.train.checkpoint
    adapters, _ = manager.restore(adapter_params(fresh_lora_params))
    params = with_adapters(fresh_lora_params, adapters)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jirl.config import JirlError

ADAPTERS = nnx.LoRAParam  # the filter that selects adapter parameters only
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj", "fc_in", "fc_out")


class LoRALinear(nnx.Module):
    """``base(x) + (alpha / rank) x A B``; ``merged`` once ``A B`` is folded into ``base``."""

    def __init__(self, base: nnx.Linear, rank: int, alpha: float, *, rngs: nnx.Rngs):
        if rank < 1:
            raise JirlError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        self.scale = alpha / rank
        init = nnx.initializers.he_uniform()
        self.lora_a = nnx.LoRAParam(init(rngs.params(), (base.in_features, rank), jnp.float32))
        self.lora_b = nnx.LoRAParam(jnp.zeros((rank, base.out_features), jnp.float32))
        self.merged = False

    def delta(self) -> jax.Array:
        """``(alpha / rank) A B``, the adapter's change of the kernel ``[in, out]``."""
        return self.scale * (self.lora_a[...] @ self.lora_b[...])

    def __call__(self, x):
        y = self.base(x)
        if self.merged:
            return y
        x = x.astype(self.lora_a[...].dtype) if x.dtype != self.lora_a[...].dtype else x
        return y + (self.scale * ((x @ self.lora_a[...]) @ self.lora_b[...])).astype(y.dtype)


def _projections(model):
    """``(parent, name, module)`` of every ``nnx.Linear`` or ``LoRALinear`` in the layers."""
    for layer in model.layers:
        for parent in (layer.attn, layer.mlp):
            for name in vars(parent):
                module = getattr(parent, name)
                if isinstance(module, (nnx.Linear, LoRALinear)):
                    yield parent, name, module


def add_lora(model, rank: int = 8, alpha: float | None = None, targets=ATTENTION, seed: int = 0):
    """Wrap the projections named in ``targets`` of every layer of a jirl ``Transformer`` (in
    place) with rank-``rank`` adapters; ``alpha`` defaults to ``rank`` (scale 1). Returns the
    model. Raises if a target name matches no projection."""
    rngs = nnx.Rngs(seed)
    alpha = float(rank if alpha is None else alpha)
    found = set()
    for parent, name, module in list(_projections(model)):
        if name in targets:
            if isinstance(module, LoRALinear):
                raise JirlError(f"{name} already has a LoRA adapter")
            setattr(parent, name, LoRALinear(module, rank, alpha, rngs=rngs))
            found.add(name)
    unknown = sorted(set(targets) - found)
    if unknown:
        raise JirlError(f"LoRA targets {unknown} match no projection; this model's projections are {sorted({n for _, n, _ in _projections(model)})}")
    return model


def lora_layers(model) -> list[LoRALinear]:
    """Every ``LoRALinear`` layer of ``model``, in module order (the projections ``add_lora``
    wrapped)."""
    return [module for _, _, module in _projections(model) if isinstance(module, LoRALinear)]


def merge_lora(model):
    """Fold every adapter into its base kernel, ``W <- W + (alpha / r) A B`` (in place)."""
    for layer in lora_layers(model):
        if not layer.merged:
            layer.base.kernel[...] = layer.base.kernel[...] + layer.delta().astype(layer.base.kernel[...].dtype)
            layer.merged = True
    return model


def unmerge_lora(model):
    """Take every merged adapter out of its base kernel again, ``W <- W - (alpha / r) A B``."""
    for layer in lora_layers(model):
        if layer.merged:
            layer.base.kernel[...] = layer.base.kernel[...] - layer.delta().astype(layer.base.kernel[...].dtype)
            layer.merged = False
    return model


def without_lora(model):
    """The plain model with every adapter merged in (a copy; ``model`` is unchanged): its
    parameters have the base model's names, ready for ``jirl.models.loading.save_safetensors``."""
    plain = nnx.clone(model)
    merge_lora(plain)
    for parent, name, module in list(_projections(plain)):
        if isinstance(module, LoRALinear):
            setattr(parent, name, module.base)
    return plain


def adapter_params(params) -> nnx.State:
    """Only the adapter parameters of a LoRA model's state (an adapters-only checkpoint)."""
    return nnx.filter_state(params, ADAPTERS)


def with_adapters(params, adapters) -> nnx.State:
    """A LoRA model's full state with its adapters replaced by ``adapters`` (e.g. restored from
    an adapters-only checkpoint onto the base model with freshly added adapters)."""
    return nnx.merge_state(params, adapters)
