"""Evaluation: exact evaluation on enumerable tasks (``jirl.eval.exact``), reward-model metrics
and best-of-n curves (``jirl.eval.metrics``) and over-optimisation fits (``jirl.eval.scaling``)."""
