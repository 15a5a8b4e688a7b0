"""b3: machine-ID contrastive embedding (Guan et al., ICASSP 2023, arXiv 2304.03588).

A CNN embeds each clip. Pretraining pulls together clips of the same machine section and
attributes (supervised contrastive loss, Khosla et al. 2020: positives are other clips of the
same class, not augmentations of one clip); perturbed copies of the clips form extra classes, so
a single-section dataset still has negatives. The fine-tuning phase adds an ID classifier
(cross-entropy) over the same classes. Scores: domain-aware kNN cosine distance to the training
embeddings of the clip's section, or InfoNCE against the section prototypes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asdcli.config import ContrastiveConfig
from asdcli.models.base import Batch, Branch, BranchContext, random_crop
from asdcli.models.memory_bank import MemoryBank, collect_embeddings
from asdcli.data.pseudo_anomalies import OTHER_SECTION
from asdcli.models.perturb import imitated_kinds, perturbed_copies


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv, batch norm, 2x2 max pool, ReLU: halves mel bins and frames.

    The ReLU after the pooling gives the same values as before it (max and ReLU commute) on a
    quarter of them. (Pooling before the batch norm as well was 1.65x faster but lowered b3 on
    the real DCASE slider folds from 0.975 to 0.908 AUC: batch norm then normalises maxima.)
    """
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.MaxPool2d(2, ceil_mode=True), nn.ReLU(inplace=True))


def supcon_loss(z: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """Supervised contrastive loss of (B, D) normalised embeddings with (B,) class labels.

    Anchors without a positive in the batch are left out; 0 if no anchor has one.
    """
    sim = z @ z.T / temperature  # (B, B)
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)  # (B, B)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = positives.sum(dim=1)
    has_pos = n_pos > 0
    if not has_pos.any():
        return z.sum() * 0.0
    mean_log_prob = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(1)[has_pos] / n_pos[has_pos]
    return -mean_log_prob.mean()


class ContrastiveBranch(Branch):
    """CNN embedding trained on machine-section identity; z3 = normalised embedding."""

    name = "contrastive"
    bid = "b3"
    config_field = "contrastive"
    loss_name = "supervised contrastive loss (+ ID cross-entropy after the switch)"
    switch_field = "pretrain_fraction"

    def __init__(self, context: BranchContext, cfg: ContrastiveConfig, saved: dict | None = None):
        super().__init__(context)
        self.cfg = cfg
        c = cfg.channels
        self.features = nn.Sequential(conv_block(1, c), conv_block(c, 2 * c), conv_block(2 * c, 4 * c))
        self.features.to(memory_format=torch.channels_last)  # CPU convolutions run 1.4x faster in it
        self.project = nn.Sequential(nn.Linear(8 * c, 2 * cfg.embed_dim), nn.ReLU(),
                                     nn.Linear(2 * cfg.embed_dim, cfg.embed_dim))
        # the background's recordings are one more class of the ID classifier ("another machine"),
        # and one class per machine type in the contrastive loss
        self.n_classes = context.n_labels + cfg.perturbations + (cfg.background != "none")
        self.classifier = nn.Linear(cfg.embed_dim, self.n_classes)
        self.background: tuple[Tensor, Tensor] | None = None
        self.bank = MemoryBank(cfg.k, cfg.embed_dim)
        self.register_buffer("prototypes", torch.zeros(context.n_groups, cfg.embed_dim))
        self.progress = 0.0

    def limitation(self) -> str | None:
        """With one section-and-attribute class its perturbed copies are the only other classes
        (measured on single-machine real sets, MIMII fan and DCASE slider: AUC 0.98 with 3 of
        them); without them it has nothing to learn from."""
        if self._classes() < 2 and not self.cfg.perturbations:
            return ("one section-and-attribute class and branches.contrastive.perturbations is 0: its contrastive and ID "
                    "objectives have no other class to tell the clips from, so its embedding cannot learn what normal means")
        return None

    def _classes(self) -> int:
        """Classes it learns to tell apart besides its perturbed copies: the run's section-and-attribute
        classes and the background's machine types."""
        return self.context.n_labels + (0 if self.background is None else int(self.background[1].max()) + 1)

    def extra_meta(self) -> dict:
        return {"classes": self._classes()}

    @classmethod
    def fusion_limitation(cls, extra: dict, cfg: ContrastiveConfig) -> str | None:
        """With fewer than ``min_classes`` classes (:meth:`_classes`, recorded at training) its only
        negatives are perturbed copies of its own clips: measured on real single-section sets it then
        learns the perturbations and ranks real ToyCar and ToyConveyor faults below normal clips."""
        classes = extra.get("classes")
        if classes is None or classes >= cfg.min_classes:
            return None
        return (f"{classes} class(es) to tell apart, fewer than branches.contrastive.min_classes={cfg.min_classes}: "
                "its only negatives are perturbed copies of its own clips")

    def trained_kinds(self) -> tuple[str, ...]:
        """Other sections are the classes it learns to tell apart; its perturbed copies imitate
        some waveform pseudo-anomalies."""
        return (OTHER_SECTION, *imitated_kinds(self.cfg.perturbations))

    def background_spec(self) -> str:
        return self.cfg.background

    def set_background(self, feats: Tensor, kinds: Tensor) -> None:
        self.background = (feats, kinds) if len(feats) else None

    def _with_background(self, feats: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Append ``background_per_step`` background clips drawn at random (torch's generator,
        seeded per epoch) to a step's clips: (B', M, T) clips, (B',) contrastive labels (one class
        per machine type) and (B',) classifier labels (one class for every other machine)."""
        own = self.context.n_labels + self.cfg.perturbations
        if self.background is None:
            return feats, labels, labels
        bank, kinds = self.background
        rows = torch.randint(len(bank), (self.cfg.background_per_step,)).to(bank.device)
        drawn = bank[rows].to(feats.device)
        if self.cfg.crop_frames:
            drawn = random_crop(drawn, self.cfg.crop_frames)
        kinds = kinds[rows].to(labels.device)
        return (torch.cat([feats, drawn]), torch.cat([labels, own + kinds]),
                torch.cat([labels, torch.full_like(kinds, own)]))

    def set_progress(self, fraction: float) -> None:
        """Training progress in [0, 1]: the classifier joins after ``pretrain_fraction``."""
        self.progress = fraction

    def _embed_feats(self, feats: Tensor) -> Tensor:
        """(B, n_mels, frames) dB -> (B, embed_dim) unit vectors.

        Under mixed precision only the convolutions run in it: the projection, the embedding and
        the losses on it (logits scaled by 1 / temperature) stay fp32.
        """
        h = self.features(self.normalize(feats)[:, None])  # (B, 4c, M', T')
        with torch.autocast(feats.device.type, enabled=False):
            h = h.float()
            pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)  # (B, 8c)
            return F.normalize(self.project(pooled), dim=1)

    def loss(self, batch: Batch) -> Tensor:
        feats = random_crop(batch.feats, self.cfg.crop_frames) if self.cfg.crop_frames else batch.feats
        copies, kinds = perturbed_copies(feats, self.cfg.perturbations, self.cfg.copies_per_clip)
        feats = torch.cat([feats, copies], dim=0)  # (B + P * B, M, T)
        labels = torch.cat([batch.label, self.context.n_labels + kinds])
        feats, labels, classes = self._with_background(feats, labels)  # (B + P * B + G, M, T)
        known = labels >= 0
        z = self._embed_feats(feats)[known]
        labels, classes = labels[known], classes[known]
        with torch.autocast(feats.device.type, enabled=False):
            loss = supcon_loss(z, labels, self.cfg.temperature)
            if self.progress >= self.cfg.pretrain_fraction:
                loss = loss + F.cross_entropy(self.classifier(z) / self.cfg.temperature, classes)
        return loss

    def embed(self, batch: Batch) -> Tensor:
        return self._embed_feats(batch.feats)

    def prepare_scoring(self, batches) -> None:
        emb, group, domain = collect_embeddings(batches, self.embedding)
        self.bank.fit(emb, group, domain)
        for g in range(self.context.n_groups):
            if (group == g).any():
                self.prototypes[g] = F.normalize(emb[group == g].mean(dim=0), dim=0)

    def _prototype_score(self, z: Tensor, group: Tensor) -> Tensor:
        logits = z @ self.prototypes.T / self.cfg.temperature  # (B, n_groups)
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        own = log_prob.gather(1, group.clamp_min(0)[:, None])[:, 0]
        # Unknown section: distance to the nearest prototype instead.
        return torch.where(group >= 0, -own, -log_prob.amax(dim=1))

    def score(self, batch: Batch) -> Tensor:
        z = self.embedding(batch)
        if self.cfg.score == "prototype":
            return self._prototype_score(z, batch.group)
        return self.bank.distance(z, batch.group)

    def train_scores(self, batch: Batch) -> Tensor:
        if self.cfg.score == "prototype":
            return self.score(batch)
        return self.bank.distance(self.embedding(batch), batch.group, exclude=batch.index)

    def fitted_train_scores(self) -> Tensor:
        if self.cfg.score == "prototype":
            return self._prototype_score(self.bank.emb, self.bank.group)
        return self.bank.leave_one_out()
