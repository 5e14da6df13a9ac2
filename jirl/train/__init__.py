"""The training engine: explicit loss aggregation and the objective registry (``losses``), the
train state and compiled update step (``step``), SFT (``sft``), device meshes and sharding
(``sharding``), Orbax checkpoints (``checkpoint``), logs (``logging``), the training loop with
exact resume (``loop``) and vmapped seeds (``seeds``)."""
