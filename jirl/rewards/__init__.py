"""Reward models learned from preferences: pairwise losses (``losses``: Bradley-Terry,
classification, hinge; process rewards), models on jirl backbones (``models``), cached embeddings
and light heads (``embeddings``, ``embedding_heads``), ensembles (``ensemble``), the simulated
annotator (``annotation``) and verifiable rewards (``verifiable``)."""
