"""asd: unsupervised anomalous sound detection for machines, DCASE Task 2 conventions.

Library use: ``asdcli.train(data, run, config)`` runs every stage of a run (what ``asd train``
does; ``asdcli.Progress`` takes its callbacks); ``from asdcli import Detector``;
``Detector.load(run)`` once, then ``.score(paths)`` or ``.score_waveform(array, sample_rate,
machine=..., section=...)``.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "Detector":  # loaded on first use: the command line needs only the version
        from asdcli.services.scoring.score import Detector

        return Detector
    if name in ("train", "Progress"):
        from asdcli.services.training import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
