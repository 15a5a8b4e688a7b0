"""Device selection and torch.distributed (DDP) set-up, shared by the training services."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from asdcli.errors import ConfigError


def resolve_device(gpu: int | None = None, device: str | None = None) -> torch.device:
    """``--gpu N`` or ``--device cpu|cuda:N|auto`` -> a torch device; CUDA asked for but absent is an error."""
    if gpu is not None and device is not None:
        raise ConfigError("give either --gpu or --device, not both")
    if gpu is not None:
        device = f"cuda:{gpu}"
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if not device.startswith("cuda"):
        raise ConfigError(f"--device {device}: expected cpu, cuda, cuda:N or auto")
    if not torch.cuda.is_available():
        raise ConfigError(f"{device}: no CUDA device is available on this machine; leave out --gpu/--device "
                          "to run on the CPU")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise ConfigError(f"{device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(device)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware (elsewhere bf16 is emulated and slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


@dataclass(frozen=True)
class DistInfo:
    """This process's place among the torchrun workers (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@contextlib.contextmanager
def distributed(device: torch.device) -> Iterator[DistInfo]:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        yield DistInfo(dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else DistInfo()
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        yield DistInfo(dist.get_rank(), dist.get_world_size())
        dist.barrier()  # nobody tears the group down while a peer still talks to it
    finally:
        dist.destroy_process_group()
