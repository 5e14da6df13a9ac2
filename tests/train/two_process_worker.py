"""One process of the two-process training test (run by tests/train/test_multiprocess.py).

Usage: python two_process_worker.py PORT PROCESS_ID OUT_JSON
Each process feeds its half of the global batch; the losses of 3 update steps are written.
"""

import json
import sys

port, process_id, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]

from jirl.sharding import initialize_distributed  # noqa: E402

initialize_distributed(f"localhost:{port}", num_processes=2, process_id=process_id)

import jax  # noqa: E402

from tests.train.multiprocess_setup import global_batches, make_state_and_step  # noqa: E402
from jirl.sharding import make_mesh, shard_batch, shard_state  # noqa: E402

mesh = make_mesh(data=-1)
state, step = make_state_and_step()
state = shard_state(state, mesh)
losses = []
for batch in global_batches():
    rows = len(batch["tokens"]) // 2
    local = {k: v[process_id * rows : (process_id + 1) * rows] for k, v in batch.items()}
    state, metrics = step(state, shard_batch(local, mesh))
    losses.append(float(metrics["loss"]))
with open(out_path, "w") as f:
    json.dump({"losses": losses, "devices": jax.device_count(), "processes": jax.process_count()}, f)
