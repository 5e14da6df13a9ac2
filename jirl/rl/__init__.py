"""Policy optimisation on token-level rewards: advantage estimators by name
(``advantages.ADVANTAGES``), policy losses (``policy_losses.POLICY_LOSSES``), KL estimators and
controllers (``kl``), the sample -> reward -> update loop (``loop``) and RAFT (``raft``)."""
