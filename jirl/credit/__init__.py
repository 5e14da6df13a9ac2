"""Dense credit assignment for sparse rewards: schemes (``CREDIT_SCHEMES``), what they read from
models, PRIME's implicit PRM and randomised return decomposition."""

from jirl.credit.schemes import CREDIT_SCHEMES, check_dense_rewards, credit_correlation

__all__ = ["CREDIT_SCHEMES", "check_dense_rewards", "credit_correlation"]
