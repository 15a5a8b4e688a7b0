"""The branch registry: names, ids (b1..b5) and construction from a config. Services look
branches up here and never branch on a name. A sixth branch is one module: a :class:`Branch`
subclass with its ``config_class`` (a :class:`~asdcli.config.BranchTrain`), passed to
:func:`register_branch`; configs then take its section ``branches.<config_field>``, and training,
fusion, scoring and freeze-debug take the branch like the five."""

from __future__ import annotations

from asdcli import config_branches
from asdcli.config import BRANCH_FIELDS, AsdConfig
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
    """The config section of a branch (``transformer-ae`` -> ``config.branches.transformer_ae``);
    a registered branch's defaults where the config was made before it was registered."""
    field = BRANCHES[canonical_name(name)].config_field
    section = getattr(config.branches, field, None)
    return section if section is not None else config_branches.REGISTERED[field]()


def register_branch(cls: type[Branch]) -> None:
    """Make ``cls`` a branch of every command: it needs ``name``, ``bid`` (``b6``...),
    ``config_field`` and ``config_class``, none of them taken by another branch."""
    config_class = getattr(cls, "config_class", None)
    for attribute in ("name", "bid", "config_field"):
        if not isinstance(getattr(cls, attribute, None), str):
            raise ConfigError(f"branch class {cls.__name__}: '{attribute}' is not set")
    if config_class is None or not issubclass(config_class, config_branches.BranchTrain):
        raise ConfigError(f"branch class {cls.__name__}: 'config_class' must be a BranchTrain config section")
    taken = [a for a in ("name", "bid", "config_field") for other in BRANCHES.values()
             if getattr(other, a) == getattr(cls, a)]
    if taken or cls.config_field in config_branches.BranchesConfig.model_fields:
        raise ConfigError(f"branch class {cls.__name__}: its {(taken or ['config_field'])[0]} is another branch's")
    BRANCHES[cls.name] = cls
    IDS[cls.bid] = cls.name
    BRANCH_FIELDS[cls.bid] = cls.config_field
    config_branches.REGISTERED[cls.config_field] = config_class


def unregister_branch(name: str) -> None:
    """Undo :func:`register_branch` (one of the five cannot be removed)."""
    cls = BRANCHES[canonical_name(name)]
    if cls.config_field in config_branches.BranchesConfig.model_fields:
        raise ConfigError(f"branch {cls.name} is built in; only a registered branch can be removed")
    del BRANCHES[cls.name], IDS[cls.bid], BRANCH_FIELDS[cls.bid], config_branches.REGISTERED[cls.config_field]


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
