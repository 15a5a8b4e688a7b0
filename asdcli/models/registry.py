"""The branch registry: names, ids (b1..b5) and construction from a config. Services look
branches up here and never branch on a name."""

from __future__ import annotations

from asdcli.config import AsdConfig
from asdcli.errors import ConfigError
from asdcli.models.base import Branch, BranchContext
from asdcli.models.branch_contrastive import ContrastiveBranch
from asdcli.models.branch_diffusion import DiffusionBranch
from asdcli.models.branch_flow import FlowBranch
from asdcli.models.branch_pretrained import PretrainedBranch
from asdcli.models.branch_transformer_ae import TransformerAEBranch

BRANCHES: dict[str, type[Branch]] = {
    cls.name: cls for cls in (PretrainedBranch, TransformerAEBranch, ContrastiveBranch, DiffusionBranch, FlowBranch)
}
IDS = {cls.bid: name for name, cls in BRANCHES.items()}


def canonical_name(name_or_id: str) -> str:
    """``b3`` or ``contrastive`` -> ``contrastive``; anything else is a ConfigError listing the choices."""
    key = name_or_id.strip().lower().replace("_", "-")
    if key in BRANCHES:
        return key
    if key in IDS:
        return IDS[key]
    choices = ", ".join(f"{cls.bid}={name}" for name, cls in BRANCHES.items())
    raise ConfigError(f"unknown branch '{name_or_id}' (choose from {choices})")


def config_key(name: str) -> str:
    """The dotted config name of a branch's settings (``transformer-ae`` -> ``branches.transformer_ae``)."""
    return f"branches.{BRANCHES[canonical_name(name)].config_field}"


def branch_config(config: AsdConfig, name: str):
    """The config section of a branch (``transformer-ae`` -> ``config.branches.transformer_ae``)."""
    return getattr(config.branches, BRANCHES[canonical_name(name)].config_field)


def branch_training(config: AsdConfig, name: str, setting: str):
    """A branch's ``epochs``, ``lr`` or ``precision``: its own where set, else ``train.<setting>``."""
    own = getattr(branch_config(config, name), setting)
    return own if own is not None else getattr(config.train, setting)


def build_branch(name: str, config: AsdConfig, context: BranchContext, saved: dict | None = None) -> Branch:
    """A new branch of kind ``name``; ``saved`` is its ``extra_meta()`` from a checkpoint."""
    cls = BRANCHES[canonical_name(name)]
    cfg = branch_config(config, cls.name)
    if saved:
        return cls(context, cfg, saved)
    return cls(context, cfg)


def upstream_names(config: AsdConfig, name: str) -> list[str]:
    """The branches whose embeddings branch ``name`` takes with this config (canonical names)."""
    cls = BRANCHES[canonical_name(name)]
    return [canonical_name(u) for u in cls.upstream(branch_config(config, cls.name))]


def training_order(config: AsdConfig) -> list[str]:
    """Every branch, each after the branches it takes embeddings from (registry order otherwise)."""
    order: list[str] = []

    def place(name: str, chain: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in chain:
            raise ConfigError(f"{config_key(name)}: its upstream branches lead back to it ({' -> '.join(chain + (name,))})")
        for up in upstream_names(config, name):
            place(up, chain + (name,))
        order.append(name)

    for name in BRANCHES:
        place(name, ())
    return order
