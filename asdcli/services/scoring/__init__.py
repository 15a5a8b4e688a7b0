"""Scoring with a trained run: the branches a command works with, branch scores and their normalisation, the fusion's examples, the stages after the branches, `asd score` and `asd watch`."""
