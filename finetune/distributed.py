"""This process's place among the processes torchrun started (rank, world size, device), and
the little the training loop needs from torch.distributed."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Dist:
    """Join the process group torchrun set up (if any) and pick this process's device."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but no CUDA GPU is visible")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist(device=torch.device("cuda" if use_cuda else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if not use_cuda:
        # Several processes share the CPU cores: don't oversubscribe them.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return Dist(
        rank=dist.get_rank(),
        world_size=world_size,
        local_rank=local_rank,
        device=torch.device(f"cuda:{local_rank}" if use_cuda else "cpu"),
    )


def data_parallel(model: nn.Module, env: Dist) -> nn.Module:
    """`model` in DistributedDataParallel when there are several processes, else itself."""
    if env.world_size == 1:
        return model
    return DistributedDataParallel(
        model, device_ids=[env.local_rank] if env.device.type == "cuda" else None
    )


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def broadcast_flag(flag: bool, env: Dist) -> bool:
    """The main process's `flag`, on every process."""
    if env.world_size == 1:
        return flag
    t = torch.tensor([int(flag)], device=env.device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def barrier(env: Dist) -> None:
    if env.world_size > 1:
        dist.barrier()
