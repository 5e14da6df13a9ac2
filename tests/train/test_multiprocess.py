import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.train.multiprocess_setup import global_batches, make_state_and_step

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_local_processes_train_like_one_process_over_the_global_batch(tmp_path):
    port = free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "PYTHONPATH": str(REPO)}
    outs = [tmp_path / f"process{i}.json" for i in range(2)]
    workers = [
        subprocess.Popen(
            [sys.executable, str(REPO / "tests/train/two_process_worker.py"), str(port), str(i), str(outs[i])],
            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]
    for worker in workers:
        output, _ = worker.communicate(timeout=240)
        assert worker.returncode == 0, output[-3000:]
    results = [json.loads(out.read_text()) for out in outs]
    assert all(r["processes"] == 2 and r["devices"] == 4 for r in results)

    state, step = make_state_and_step()  # one process, no mesh, the whole batch
    reference = []
    for batch in global_batches():
        state, metrics = step(state, batch)
        reference.append(float(metrics["loss"]))
    for r in results:
        np.testing.assert_allclose(r["losses"], reference, rtol=1e-5)
    assert reference[-1] < reference[0]
