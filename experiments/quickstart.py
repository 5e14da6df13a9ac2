"""``jirl run quickstart``: the first thing to run after installing jirl.

For now it is the exact-oracle study (``experiments/oracle.py``) on the decomposable bigram
task: the frontier of reward against KL that every training method is later compared with,
and expert demonstrations drawn from the optimum. The training-engine issue grows it into
demonstrations -> SFT -> evaluation against the oracle.
"""

from __future__ import annotations

from experiments.oracle import OracleConfig
from experiments.oracle import run as run_oracle
from jirl.experiment import RunDir, register_experiment


@register_experiment(
    "quickstart", config=OracleConfig, description="Start here: exact reward/KL frontier and expert demos (bigram task)"
)
def run(config: OracleConfig, run: RunDir) -> dict:
    return run_oracle(config, run)
