"""The final classifier: a small MLP over the fused features, meta-learned with MAML
(Finn et al. 2017, through ``learn2learn.algorithms.MAML``) so that a few gradient steps on a
machine section's normal clips and pseudo-anomalies adapt it to that section."""

from __future__ import annotations

import contextlib
import copy
import io
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asdcli.errors import DependencyError

from asdcli.models.fusion_attention import FusionOutput


def meta_features(out: FusionOutput) -> Tensor:
    """Fusion output -> (B, 2K + 1): compressed branch scores, fused score (column K), attention weights."""
    return torch.cat([out.scores, out.fused[:, None], out.weights], dim=1)


class MetaClassifier(nn.Module):
    """(B, F) fused features -> (B,) anomaly logit (higher = more anomalous).

    logit = w . x + b + MLP(x). The linear part starts as the fused score alone (weight 1 on its
    column) and the MLP's last layer at zero, so the untrained classifier ranks clips as the fusion
    does; meta-learning and each section's adaptation learn corrections to it. The linear weights
    on the branch scores are what a few inner-loop steps can move furthest: a per-section
    re-weighting of the branches.
    """

    def __init__(self, in_dim: int, hidden: int, fused_index: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        with torch.no_grad():
            self.linear.weight[0, fused_index] = 1.0
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, x: Tensor) -> Tensor:
        return (self.linear(x) + self.net(x)).squeeze(1)


def maml_wrapper(model: nn.Module, inner_lr: float, first_order: bool) -> nn.Module:
    """``learn2learn.algorithms.MAML`` around ``model`` (its import prints a gym notice: silenced)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from learn2learn.algorithms import MAML
        except ImportError as error:
            raise DependencyError(f"asd meta-train needs learn2learn 0.2.0, which does not import ({error}); install it "
                                  "with scripts/install.sh (it rebuilds it for Python 3.11+), or pip install "
                                  "'asdcli[meta]' on Python 3.10; scoring works without it") from None
    return MAML(model, lr=inner_lr, first_order=first_order)


def adapted(maml: nn.Module, x: Tensor, y: Tensor, steps: int) -> nn.Module:
    """A clone of the MAML model after ``steps`` inner-loop updates on support set ``x`` (S, F),
    ``y`` (S,) 0 normal / 1 anomaly; gradients flow back to the meta-parameters."""
    learner = maml.clone()
    with torch.enable_grad():
        for _ in range(steps):
            learner.adapt(F.binary_cross_entropy_with_logits(learner(x), y.float()))
    return learner


def adapted_copy(model: nn.Module, x: Tensor, y: Tensor, steps: int, lr: float) -> nn.Module:
    """For scoring: a copy of ``model`` after the same ``steps`` inner-loop updates as
    :func:`adapted` (each parameter p + (-lr * grad), MAML's arithmetic, so the scores are
    identical) without a graph back to the meta-parameters, and without importing learn2learn
    (seconds of start-up for every ``asd score``)."""
    learner = copy.deepcopy(model)
    params = list(learner.parameters())
    with torch.enable_grad():
        for _ in range(steps):
            grads = torch.autograd.grad(F.binary_cross_entropy_with_logits(learner(x), y.float()), params)
            with torch.no_grad():
                for param, grad in zip(params, grads):
                    param.add_(-lr * grad)
    return learner
