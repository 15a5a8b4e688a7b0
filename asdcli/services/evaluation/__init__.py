"""Evaluation and reports: the DCASE evaluator's figures, plots, `asd info`."""
