"""Data layer: DCASE layouts, audio loading, log-mel features and the synthetic generator."""
