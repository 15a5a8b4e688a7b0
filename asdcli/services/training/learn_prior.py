"""`asd learn-prior`: a prior over branches from labelled runs of other machines.

Each labelled run is a run trained on normal clips, whose data folder also holds labelled test
clips (``normal``/``anomaly`` in the names, as a DCASE development set). Every branch of the run
scores them (standardised per section as in scoring), the run's own pseudo-anomalies give the
evidence weights its fusion would have seen, and :func:`~asdcli.services.training.branch_prior.learn_prior`
turns these into a prior file for ``fusion.prior`` (see that module).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from asdcli.config import AsdConfig
from asdcli.data.layout import discover
from asdcli.errors import DataError
from asdcli.services.training.branch_prior import BranchPrior, Labelled, learn_prior
from asdcli.services.scoring.branch_scores import trained_branches
from asdcli.services.scoring.examples import Examples, build_examples
from asdcli.services.training.fuse import fusion_prior
from asdcli.services.scoring.stages import usable_branches
from asdcli.services.store.runs import Run, open_run, read_branch_record, run_config
from asdcli.services.scoring.score import score_clips


def labelled_clips(data: Path) -> list:
    """The test clips under ``data`` whose names say normal or anomaly."""
    clips = [c for c in discover(data) if c.split == "test" and c.label is not None]
    if not clips:
        raise DataError(f"no labelled test clips under {data} (expected <machine>/test/*_normal_* and *_anomaly_* "
                        "files, as in a DCASE development set)")
    return clips


def run_examples(run: Run, data: Path, names: list[str], config: AsdConfig) -> Examples:
    """The fusion head's stored examples when they cover exactly ``names``, else new ones."""
    if run.examples.exists():
        stored = Examples.load(run.examples)
        if stored.branches == names:
            return stored
    return build_examples(run, data, names, config)


def labelled_run(run_dir: Path | Run, data: Path, set_name: str, cache_dir: Path | None,
                 names: list[str] | None = None, config: AsdConfig | None = None) -> Labelled:
    """One labelled run: ``names`` (default: the branches its fusion would use) scored on the
    labelled test clips of ``data``, with the evidence of its own pseudo-anomalies."""
    run = open_run(run_dir)
    config = config or run_config(run)
    names = names or usable_branches(run, trained_branches(run), config)[0]
    result = score_clips(run, labelled_clips(data), cache_dir, names=names)
    z = np.stack([result.normalized[n] for n in names], axis=1)  # (N, K)
    evidence = fusion_prior(run_examples(run, data, names, config), config)[0].double().numpy()
    counts = [s.count for s in read_branch_record(run, names[0]).score_stats.values()]
    return Labelled(set_name, names, z, np.array([int(c.is_anomaly) for c in result.clips]),
                    np.array([run.vocab.group_name(c) for c in result.clips]), evidence, max(counts, default=0))


def learn_from_runs(pairs: list[tuple[Path, Path]], cache_dir: Path | None, description: str | None = None) -> BranchPrior:
    """A prior from (run folder, data folder) pairs; each pair is one labelled set."""
    runs = [labelled_run(run, data, Path(data).resolve().name or str(data), cache_dir) for run, data in pairs]
    text = description or "labelled test clips of " + ", ".join(str(d) for _, d in pairs)
    return learn_prior(runs, text)
