"""b1: pretrained Audio Spectrogram Transformer (Gong et al. 2021) embeddings.

The input is not asd's log-mel but AST's own Kaldi-style fbank (16 kHz, 128 bins, 10 ms hop,
``max_length`` frames, normalised with AudioSet's mean and std), computed by
``transformers.ASTFeatureExtractor`` from the waveform. The pooled embedding z1 is scored by
domain-aware k-nearest-neighbour cosine distance to the training clips of the same section. By
default the transformer is frozen; ``finetune_layers`` trains its top layers with an ID classifier.
"""

from __future__ import annotations

import pickle
import json
import socket
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from asdcli.config import PretrainedConfig
from asdcli.errors import ConfigError
from asdcli.data.pseudo_anomalies import OTHER_SECTION
from asdcli.models.base import Batch, Branch, BranchContext, state_digest
from asdcli.models.memory_bank import MemoryBank, collect_embeddings


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).exists()


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers a TCP connection within ``timeout`` seconds (one try,
    instead of the hub client's minute of retries on a machine without network)."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def _from_pretrained(cls, location: str, remote: bool):
    """``cls.from_pretrained(location)``: for a model id, the local Hugging Face cache first, then
    the Hub only when it can be reached (an ``OSError`` at once when it cannot)."""
    if not remote:
        return cls.from_pretrained(location)
    try:
        return cls.from_pretrained(location, local_files_only=True)
    except (OSError, ValueError):
        if not hub_reachable():
            raise OSError("not in the local Hugging Face cache, and the Hub cannot be reached") from None
        return cls.from_pretrained(location)


def load_ast(cfg: PretrainedConfig, saved: dict | None = None):
    """(ASTModel, ASTFeatureExtractor) from a saved architecture, 'random', a folder or a model id.

    ``saved`` (from a run's metadata) rebuilds the architecture offline; the weights then come
    from the run's checkpoint.
    """
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    if saved is not None:
        model = ASTModel(ASTConfig.from_dict(saved["ast_config"]))
        return model, ASTFeatureExtractor(**saved["feature_extractor"])
    if cfg.source == "random":
        config = ASTConfig(hidden_size=cfg.random_hidden, num_hidden_layers=cfg.random_layers,
                           num_attention_heads=cfg.random_heads, intermediate_size=4 * cfg.random_hidden,
                           max_length=cfg.max_length, num_mel_bins=128)
        return ASTModel(config), ASTFeatureExtractor(max_length=cfg.max_length)
    if _looks_like_path(cfg.source) and not Path(cfg.source).expanduser().is_dir():
        raise ConfigError(f"branches.pretrained.source: folder {cfg.source} does not exist")
    location = str(Path(cfg.source).expanduser()) if _looks_like_path(cfg.source) else cfg.source
    try:
        model = _from_pretrained(ASTModel, location, remote=not _looks_like_path(cfg.source))
    except pickle.UnpicklingError:
        raise ConfigError(f"branches.pretrained.source: {cfg.source} holds a pickled weights file that does not load "
                          "as plain tensors (torch.load weights_only refused it: it could run code); give a folder "
                          "with model.safetensors") from None
    except (OSError, ValueError, RuntimeError) as error:
        raise ConfigError(
            f"branches.pretrained.source: cannot load AST weights '{cfg.source}' ({str(error).splitlines()[0]}). "
            "Without network access, download them elsewhere (e.g. `hf download "
            "MIT/ast-finetuned-audioset-10-10-0.4593 --local-dir ast`), copy the folder here and set "
            "branches.pretrained.source to it; or set it to 'random' for an untrained model."
        ) from None
    try:
        extractor = ASTFeatureExtractor.from_pretrained(location, local_files_only=True)
    except (OSError, ValueError):
        extractor = ASTFeatureExtractor(max_length=model.config.max_length)
    return model, extractor


class PretrainedBranch(Branch):
    """AST pooled embedding + kNN memory bank; optional top-layer fine-tuning with an ID head."""

    name = "pretrained"
    bid = "b1"
    loss_name = "section/attribute cross-entropy (fine-tuned top layers)"
    needs_wave = True

    def __init__(self, context: BranchContext, cfg: PretrainedConfig, saved: dict | None = None):
        super().__init__(context)
        self.cfg = cfg
        self.ast, self.extractor = load_ast(cfg, saved)
        self.ast.requires_grad_(False)
        # transformers 5 names the blocks `layers`; 4.x had `encoder.layer`.
        layers = self.ast.layers if hasattr(self.ast, "layers") else self.ast.encoder.layer
        for layer in list(layers)[len(layers) - min(cfg.finetune_layers, len(layers)):]:
            layer.requires_grad_(True)
        if cfg.finetune_layers:
            self.ast.layernorm.requires_grad_(True)
        self.classifier = nn.Linear(self.ast.config.hidden_size, max(1, context.n_labels))
        self.classifier.requires_grad_(cfg.finetune_layers > 0)
        self.bank = MemoryBank(cfg.k)

    def extra_meta(self) -> dict:
        """Architecture needed to rebuild the model offline from a checkpoint."""
        return {"ast_config": self.ast.config.to_dict(), "feature_extractor": self.extractor.to_dict()}

    def ast_inputs(self, wave: Tensor) -> Tensor:
        """(B, samples) 16 kHz waveform -> (B, max_length, 128) normalised Kaldi fbank."""
        if wave is None:
            raise ValueError("the pretrained branch needs batch.wave (raw audio)")
        clips = [w.detach().cpu().numpy() for w in wave]
        values = self.extractor(clips, sampling_rate=self.context.sample_rate, return_tensors="pt")["input_values"]
        return values.to(wave.device)

    def embed(self, batch: Batch) -> Tensor:
        return self.ast(input_values=self.ast_inputs(batch.wave)).pooler_output  # (B, hidden)

    def embedding_spec(self) -> tuple[str, int] | None:
        if self.cfg.finetune_layers:
            return None
        settings = json.dumps(self.extractor.to_dict(), sort_keys=True, default=str)
        return f"ast-{state_digest(self.ast, settings)[:16]}", self.ast.config.hidden_size

    def trained_kinds(self) -> tuple[str, ...]:
        """Fine-tuned, its ID classifier learns to tell the sections apart."""
        return (OTHER_SECTION,) if self.cfg.finetune_layers else ()

    def loss(self, batch: Batch) -> Tensor:
        known = batch.label >= 0
        logits = self.classifier(self.embed(batch))
        if not known.any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits[known], batch.label[known])

    def prepare_scoring(self, batches) -> None:
        self.bank.fit(*collect_embeddings(batches, self.embedding))

    def score(self, batch: Batch) -> Tensor:
        return self.bank.distance(self.embedding(batch), batch.group)

    def train_scores(self, batch: Batch) -> Tensor:
        return self.bank.distance(self.embedding(batch), batch.group, exclude=batch.index)

    def fitted_train_scores(self) -> Tensor:
        return self.bank.leave_one_out()
