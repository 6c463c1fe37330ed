"""DistributedDataParallel under ``torchrun``: process group, rank, reductions. One process otherwise."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..core.device import CPU, Device, resolve_device


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; ``world == 1`` means no process group."""

    rank: int = 0
    world: int = 1
    device: Device = CPU

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over all ranks."""
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device.torch)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def any(self, flag: bool) -> bool:
        return self.sum([float(flag)])[0] > 0

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (on every rank)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def wrap(self, module: nn.Module) -> nn.Module:
        if not self.enabled:
            return module
        ids = [self.device.index] if self.device.is_cuda else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def launched_rank() -> int:
    """This process's rank as set by ``torchrun`` (0 when not launched by it)."""
    return int(os.environ.get("RANK", "0"))


def setup(device_word: str) -> Dist:
    """The device (``--device`` words; a GPU this machine lacks is a DeviceError), and the ``torchrun`` process
    group if ``WORLD_SIZE`` > 1 (gloo on CPU, nccl on GPUs; each process on the GPU of its local rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_word)
    if world == 1:
        return Dist(device=device)
    rank = launched_rank()
    if device.is_cuda:
        device = resolve_device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}")
        torch.cuda.set_device(device.torch)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.is_cuda else "gloo")
    return Dist(rank=rank, world=world, device=device)


def teardown(ctx: Dist) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
