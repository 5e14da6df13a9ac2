"""Inverse RL from demonstrations: methods by name (``jirl.irl.methods.IRL_METHODS``), AfD
(``afd``), adversarial IRL (GAIL and AIRL, ``adversarial``), IQ-Learn (``iq_learn``), exact
MaxEnt IRL on the oracle's tree (``maxent``), SPIN (``spin``) and reward-recovery metrics
(``recovery``)."""
