"""A reference detector in the style of the DCASE 2023 Task 2 baseline autoencoder, for benchmarks.

Written for this project from the baseline's published description: log-mel frames (128 mels,
n_fft 1024, hop 512) stacked 5 at a time into 640-dim vectors; a dense autoencoder
640-128-128-128-128-8-128-128-128-128-640 (batch norm and ReLU after every hidden layer) trained
with MSE for 100 epochs (Adam, lr 1e-3, batch 256) on the vectors of the normal training clips.
Two scores per clip, as the baseline's two modes:

- ``mse``: mean squared reconstruction error over the clip's vectors;
- ``mahalanobis`` ("selective Mahalanobis"): the residuals x - x_hat of the training vectors give
  one covariance per domain (source, target); a clip's score is the mean over its vectors of
  d^T S^-1 d, taking the smaller of the two domains' values.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from asdcli.config import AsdConfig, AudioConfig, FeatureConfig
from asdcli.data.audio import load_audio
from asdcli.data.features import LogMel
from asdcli.data.layout import Clip

N_FRAMES = 5
BASELINE_FEATURES = FeatureConfig(n_fft=1024, hop_length=512, n_mels=128, power=2.0)


def frame_vectors(logmel: Tensor, n_frames: int = N_FRAMES) -> Tensor:
    """(n_mels, T) log-mel -> (T - n_frames + 1, n_frames * n_mels) stacked consecutive frames."""
    windows = logmel.unfold(1, n_frames, 1)  # (n_mels, T', n_frames)
    return windows.permute(1, 2, 0).reshape(windows.shape[1], -1)  # (T', n_frames * n_mels)


def _dense(d_in: int, d_out: int) -> list[nn.Module]:
    return [nn.Linear(d_in, d_out), nn.BatchNorm1d(d_out), nn.ReLU()]


class BaselineAE(nn.Module):
    """The baseline's dense autoencoder over (B, 640) stacked-frame vectors."""

    def __init__(self, dim: int, hidden: int = 128, bottleneck: int = 8):
        super().__init__()
        layers = _dense(dim, hidden)
        for _ in range(3):
            layers += _dense(hidden, hidden)
        layers += _dense(hidden, bottleneck) + _dense(bottleneck, hidden)
        for _ in range(3):
            layers += _dense(hidden, hidden)
        layers.append(nn.Linear(hidden, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@dataclass
class ReferenceScores:
    """(N,) scores of the clips in order, per mode, and the seconds training and scoring took."""

    mse: np.ndarray
    mahalanobis: np.ndarray
    train_s: float
    score_s: float


class BaselineReference:
    """Train on normal clips, score test clips; deterministic for a seed on the CPU."""

    def __init__(self, audio: AudioConfig, seed: int = 0, epochs: int = 100, batch_size: int = 256, lr: float = 1e-3,
                 device: torch.device | str = "cpu"):
        self.audio, self.seed, self.epochs, self.batch_size, self.lr = audio, seed, epochs, batch_size, lr
        self.device = torch.device(device)
        self.logmel = LogMel(audio, BASELINE_FEATURES)
        self.model: BaselineAE | None = None
        self.precision: dict[str, Tensor] = {}

    def _vectors(self, clip: Clip) -> Tensor:
        with torch.no_grad():
            return frame_vectors(self.logmel(load_audio(clip.path, self.audio))).to(self.device)

    def fit(self, clips: list[Clip]) -> float:
        """Train on the normal ``clips``, then fit the residual covariances; returns seconds."""
        start = time.perf_counter()
        per_clip = [self._vectors(c) for c in clips]
        x = torch.cat(per_clip)  # (V, 640)
        torch.manual_seed(self.seed)
        self.model = BaselineAE(x.shape[1]).to(self.device)
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        generator = torch.Generator().manual_seed(self.seed)
        self.model.train()
        for _ in range(self.epochs):
            order = torch.randperm(len(x), generator=generator).to(self.device)
            for i in range(0, len(x), self.batch_size):
                batch = x[order[i : i + self.batch_size]]
                if len(batch) < 2:  # batch norm needs two rows
                    continue
                loss = (self.model(batch) - batch).pow(2).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        self.model.eval()
        for domain in ("source", "target"):
            rows = [v for v, c in zip(per_clip, clips) if (c.domain or "source") == domain]
            if rows:
                self.precision[domain] = self._precision(torch.cat(rows))
        return time.perf_counter() - start

    def _precision(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            residual = (x - self.model(x)).double()  # (V, 640)
        centred = residual - residual.mean(dim=0)
        cov = centred.T @ centred / max(1, len(residual) - 1)
        eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
        cov += 1e-6 * torch.diag(cov).mean() * eye  # rank-deficient with few clips
        return torch.linalg.inv(cov)

    def score(self, clips: list[Clip]) -> tuple[np.ndarray, np.ndarray, float]:
        """(mse (N,), selective Mahalanobis (N,), seconds) of ``clips``."""
        start = time.perf_counter()
        mse, mahala = [], []
        with torch.no_grad():
            for clip in clips:
                x = self._vectors(clip)
                residual = (x - self.model(x)).double()  # (T', 640)
                mse.append(float(residual.pow(2).mean()))
                per_domain = [float(torch.einsum("ti,ij,tj->t", residual, p, residual).mean())
                              for p in self.precision.values()]
                mahala.append(min(per_domain))
        return np.array(mse), np.array(mahala), time.perf_counter() - start


def reference_scores(train: list[Clip], test: list[Clip], config: AsdConfig, seed: int = 0,
                     epochs: int = 100, device: torch.device | str = "cpu") -> ReferenceScores:
    """Train the reference on ``train`` (normal clips) and score ``test`` (on ``device``)."""
    reference = BaselineReference(config.audio, seed, epochs, device=device)
    train_s = reference.fit(train)
    mse, mahala, score_s = reference.score(test)
    return ReferenceScores(mse, mahala, train_s, score_s)
