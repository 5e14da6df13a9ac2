"""SPMD over a device mesh (DESIGN.md contract 7).

One ``jax.sharding.Mesh`` with axes ``("data", "fsdp", "tensor")``. Batches are split along
their leading axis over ``data`` x ``fsdp``; parameters are replicated, or (FSDP) each array is
split along its largest dimension divisible by the ``fsdp`` size. ``jax.jit`` then inserts the
collectives: the gradient of a sum over a sharded batch is the all-reduced global sum, which is
why ``LossOutput`` sums and counts give identical results on any number of devices.

Multi-host: call ``initialize_distributed`` first in every process; the same code then sees
all processes' devices in ``jax.devices()`` and ``shard_batch`` assembles the global batch from
each process's local rows.
"""

from __future__ import annotations

from typing import Literal

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A mesh over ``devices`` (default: all) with one axis size -1 filled in automatically."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError("at most one mesh axis may be -1 (inferred)")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices cannot be split into mesh axes {dict(zip(AXES, sizes))}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(
            f"mesh {dict(zip(AXES, sizes))} needs {int(np.prod(sizes))} devices but {len(devices)} are available"
        )
    return Mesh(np.array(devices).reshape(sizes), AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data`` x ``fsdp``; other axes whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """A ``NamedSharding`` that puts a full copy of an array on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int = 1024) -> PartitionSpec:
    """Split the largest dimension divisible by ``fsdp_size``; replicate small arrays."""
    if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return PartitionSpec()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return PartitionSpec(*spec)
    return PartitionSpec()


def param_shardings(params, mesh: Mesh, strategy: Literal["replicate", "fsdp"] = "replicate", min_size: int = 1024):
    """A pytree of ``NamedSharding`` matching ``params`` (arrays or ShapeDtypeStructs)."""
    if strategy not in ("replicate", "fsdp"):
        raise ValueError(f"unknown sharding strategy {strategy!r}; use 'replicate' or 'fsdp'")
    fsdp_size = mesh.shape["fsdp"] if strategy == "fsdp" else 1
    return jax.tree_util.tree_map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, fsdp_size, min_size)), params)


def shard_state(state, mesh: Mesh, strategy: Literal["replicate", "fsdp"] = "replicate"):
    """Place every array of a train state (params, optimizer state, ...) on the mesh.

    Optimizer moments follow their parameters' rule because they have the same shapes; scalars
    (step, counts, the key) are replicated.
    """
    shardings = param_shardings(state, mesh, strategy)
    return jax.tree_util.tree_map(place_global, state, shardings)


def place_global(x, sharding: NamedSharding):
    """Put an array that every process holds in full onto a (possibly multi-process) sharding."""
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = place_global(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Place a batch on the mesh, split along its leading axis.

    Single process: ``batch`` is the global batch. Multi-process: each process passes its own
    rows (the global batch is their concatenation in process order).
    """
    sharding = batch_sharding(mesh)
    num_shards = mesh.shape["data"] * mesh.shape["fsdp"]

    def place(x):
        x = np.asarray(x)
        global_rows = x.shape[0] * jax.process_count()
        if global_rows % num_shards:
            raise ValueError(
                f"global batch size {global_rows} is not divisible by the {num_shards} data shards of the mesh"
            )
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree_util.tree_map(place, batch)


def initialize_distributed(coordinator_address: str, num_processes: int, process_id: int, cpu_collectives: str = "gloo"):
    """``jax.distributed.initialize`` for multi-host runs; on CPU also turns on cross-process
    collectives (``gloo``), which CPU backends need for all-reduce between processes."""
    if cpu_collectives:  # set before initialize: backends must not have started yet
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
