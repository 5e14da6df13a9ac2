"""Evaluation: the shared setting of a study (task, policy, reference, exact tree;
``jirl.eval.setting``), exact evaluation against an expert (``jirl.eval.exact``), reward-model
metrics and best-of-n curves (``jirl.eval.metrics``) and over-optimisation fits
(``jirl.eval.scaling``)."""
