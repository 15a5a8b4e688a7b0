"""b1: a pretrained audio model's embeddings, fine-tuned or frozen, scored by kNN.

The backbone (:mod:`asdcli.models.backbones`: EfficientAT MobileNetV3 by default, the Audio
Spectrogram Transformer for GPUs) embeds the raw waveform with its own input pipeline, not asd's
log-mel. ``finetune_layers`` trains its top blocks (-1: all of it) on the section-and-attribute
classes of the training clips with an additive angular margin loss (ArcFace, Deng et al. 2019;
what lifts pretrained models in recent DCASE systems); where the data hold a single class,
perturbed copies of the clips' input (:mod:`asdcli.models.perturb`) are extra classes, as in b3.
The clip embedding is scored by domain-aware k-nearest-neighbour cosine distance to the training
clips of the same section. Batch-norm statistics stay those of pretraining: a few clips per batch
would otherwise overwrite them.
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asdcli.config import PretrainedConfig
from asdcli.data.pseudo_anomalies import OTHER_SECTION
from asdcli.models.backbones import BACKBONES, check_source
from asdcli.models.base import Batch, Branch, BranchContext, state_digest
from asdcli.models.memory_bank import MemoryBank, collect_embeddings
from asdcli.models.perturb import imitated_kinds, perturbed_copies


class MarginHead(nn.Module):
    """ArcFace: cosine logits of unit embeddings against class centres, the true class's angle
    widened by ``margin`` radians, all scaled by ``scale``."""

    def __init__(self, dim: int, n_classes: int, margin: float, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_classes, dim) * 0.01)
        self.margin, self.scale = margin, scale

    def loss(self, emb: Tensor, labels: Tensor) -> Tensor:
        """(B, D) embeddings, (B,) class indices -> scalar cross-entropy with the margin."""
        cos = F.normalize(emb.float(), dim=1) @ F.normalize(self.weight, dim=1).T  # (B, C)
        theta = torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6))
        target = torch.cos(theta + self.margin)
        own = F.one_hot(labels, cos.shape[1]).bool()
        return F.cross_entropy(self.scale * torch.where(own, target, cos), labels)


class PretrainedBranch(Branch):
    """Pretrained backbone embedding + kNN memory bank; optional fine-tuning with a margin loss."""

    name = "pretrained"
    bid = "b1"
    config_field = "pretrained"
    loss_name = "section/attribute ArcFace loss (fine-tuned blocks)"
    needs_wave = True

    def __init__(self, context: BranchContext, cfg: PretrainedConfig, saved: dict | None = None):
        super().__init__(context)
        self.cfg = cfg
        kind = saved["backbone"] if saved else cfg.backbone
        self.backbone = BACKBONES[kind](cfg, saved)
        self.backbone.requires_grad_(False)
        # pretrained batch-norm statistics are kept while fine-tuning; an untrained model has none worth keeping
        self.keeps_statistics = saved.get("pretrained", True) if saved else cfg.source != "random"
        blocks = self.backbone.blocks()
        self.tuned = len(blocks) if cfg.finetune_layers < 0 else min(cfg.finetune_layers, len(blocks))
        for block in blocks[len(blocks) - self.tuned:]:
            block.requires_grad_(True)
        self.copies = cfg.perturbations if context.n_labels < 2 else 0  # one class: perturbed copies are the others
        self.head = MarginHead(self.backbone.dim, max(1, context.n_labels) + self.copies, cfg.margin, cfg.scale)
        self.head.requires_grad_(self.tuned > 0)
        self.bank = MemoryBank(cfg.k, self.backbone.dim)

    @classmethod
    def check(cls, cfg: PretrainedConfig) -> None:
        """Raise at once where the backbone's weights cannot be had (see :func:`check_source`)."""
        check_source(cfg)

    def train(self, mode: bool = True) -> "PretrainedBranch":
        super().train(mode)
        for module in self.backbone.modules() if self.keeps_statistics else ():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def extra_meta(self) -> dict:
        """Architecture needed to rebuild the model offline from a checkpoint."""
        return {**self.backbone.extra_meta(), "pretrained": self.keeps_statistics}

    def embed(self, batch: Batch) -> Tensor:
        if batch.wave is None:
            raise ValueError("the pretrained branch needs batch.wave (raw audio)")
        return self.backbone(self.backbone.inputs(batch.wave, self.context.sample_rate))  # (B, D)

    def embedding_spec(self) -> tuple[str, int] | None:
        if self.tuned:
            return None
        settings = json.dumps(self.backbone.settings(), sort_keys=True, default=str)
        return f"{self.backbone.kind}-{state_digest(self.backbone, settings)[:16]}", self.backbone.dim

    def trained_kinds(self) -> tuple[str, ...]:
        """Fine-tuned, it learns to tell the sections (and its perturbed copies) apart."""
        return (OTHER_SECTION, *imitated_kinds(self.copies)) if self.tuned else ()

    def loss(self, batch: Batch) -> Tensor:
        x = self.backbone.inputs(batch.wave, self.context.sample_rate)
        labels = batch.label
        if self.copies:
            copies, kinds = perturbed_copies(self.backbone.to_db(x), self.copies, 1)
            x = torch.cat([x, self.backbone.from_db(copies)], dim=0)
            labels = torch.cat([labels, max(1, self.context.n_labels) + kinds])
        known = labels >= 0
        if not known.any():
            return self.head.weight.sum() * 0.0
        return self.head.loss(self.backbone(x[known]), labels[known])

    def prepare_scoring(self, batches) -> None:
        self.bank.fit(*collect_embeddings(batches, self.embedding))

    def score(self, batch: Batch) -> Tensor:
        return self.bank.distance(self.embedding(batch), batch.group)

    def train_scores(self, batch: Batch) -> Tensor:
        return self.bank.distance(self.embedding(batch), batch.group, exclude=batch.index)

    def fitted_train_scores(self) -> Tensor:
        return self.bank.leave_one_out()
