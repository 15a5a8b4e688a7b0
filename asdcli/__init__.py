"""asd: unsupervised anomalous sound detection for machines, DCASE Task 2 conventions."""

__version__ = "0.1.0"
