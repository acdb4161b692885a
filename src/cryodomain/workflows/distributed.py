"""Multi-process training with PyTorch's DistributedDataParallel, launched by ``torchrun``.

``torchrun`` sets RANK, LOCAL_RANK, WORLD_SIZE and the rendezvous; nothing here picks a port.
Every process reads its own share of each *global* batch (the same batches a single process would
see, split in contiguous slices), and the random noise of a step is drawn for the whole global
batch from a generator seeded by (seed, epoch, step) and sliced the same way. DDP averages the
gradients, so N processes follow the trajectory of one process with the same global batch, up to
floating-point summation order. Backends: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from cryodomain.errors import input_error


@dataclass(frozen=True)
class Processes:
    """Where this process stands among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, logs and outputs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str) -> torch.device:
    """The device named ``auto`` (CUDA when available), ``cpu`` or ``cuda``; InputError for CUDA without one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise input_error(None, "--device", "cuda was requested but no CUDA device is available", "use --device cpu or auto")
    return torch.device(name)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device_type: str) -> Processes:
    """Join the process group when launched by torchrun (a no-op for one process)."""
    if not launched_by_torchrun():
        return Processes()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    processes = Processes(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device_type == "cuda":
        torch.cuda.set_device(processes.local_rank)
    return processes


def stop(processes: Processes) -> None:
    if processes.distributed and dist.is_initialized():
        dist.destroy_process_group()


def share(global_size: int, processes: Processes) -> slice:
    """This process's contiguous slice of a global batch of ``global_size`` items."""
    base, extra = divmod(global_size, processes.world_size)
    start_row = processes.rank * base + min(processes.rank, extra)
    return slice(start_row, start_row + base + (1 if processes.rank < extra else 0))


class ShardedBatches(Sampler[list[int]]):
    """Yields this process's share of every global batch of ``batches``."""

    def __init__(self, batches: Sampler[list[int]], processes: Processes):
        self.batches = batches
        self.processes = processes

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            yield batch[share(len(batch), self.processes)]

    def __len__(self) -> int:
        return len(self.batches)


def step_generator(seed: int, epoch: int, step: int, device: torch.device) -> torch.Generator:
    """The generator of one step's noise: the same in every process and for any world size."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + step)
    return generator


def reduce_sum(values: torch.Tensor, processes: Processes) -> torch.Tensor:
    """Sum a tensor over all processes (a no-op for one process)."""
    if processes.distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def gather_in_order(local: "np.ndarray", processes: Processes) -> "np.ndarray":
    """Concatenate every process's contiguous share (rank order = particle order), on every process."""
    if not processes.distributed:
        return local
    shares: list = [None] * processes.world_size
    dist.all_gather_object(shares, local)
    return np.concatenate(shares)


def barrier(processes: Processes) -> None:
    if processes.distributed:
        dist.barrier()
