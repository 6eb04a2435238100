"""Distributed data parallel training under ``torchrun`` (NCCL on GPUs, gloo on CPUs).

``torchrun --nproc-per-node N -m autoseg train ...`` sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``;
``init_distributed`` finds them. The global batch is split over the ranks, every rank samples its own
batches (seeded by its rank), gradients are averaged by DDP, and only rank 0 writes files.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from autoseg.errors import AutosegError, TrainingError

T = TypeVar("T")

# Final validation on rank 0 may take long; the other ranks wait at a barrier meanwhile.
_PROCESS_GROUP_TIMEOUT = datetime.timedelta(hours=6)


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_distributed(device_type: str) -> DistributedContext:
    """Join the process group torchrun set up (a no-op context when not launched by torchrun)."""
    if not launched_by_torchrun():
        return DistributedContext()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device_type == "mps":
        raise TrainingError("distributed training on mps is not supported by PyTorch; use cuda or cpu")
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise TrainingError(
                f"rank {rank}: LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s); "
                "lower --nproc-per-node"
            )
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=_PROCESS_GROUP_TIMEOUT)
    return DistributedContext(rank, world, local_rank)


def shutdown(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def rank_batch_size(global_batch: int, context: DistributedContext) -> int:
    """This rank's share of the global batch (the first ``global % world`` ranks take one more)."""
    if global_batch < context.world_size:
        raise TrainingError(
            f"batch size {global_batch} cannot be split over {context.world_size} processes; "
            f"use at most {global_batch} processes or --set batch_size={context.world_size}"
        )
    share, extra = divmod(global_batch, context.world_size)
    return share + (1 if context.rank < extra else 0)


def wrap_model(module: nn.Module, context: DistributedContext, device: torch.device) -> nn.Module:
    if not context.enabled:
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def all_reduce_sum(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Sum over ranks (NCCL reduces only CUDA tensors: CPU tensors make a round trip)."""
    if not context.enabled:
        return tensor
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        reduced = tensor.to(torch.device("cuda", context.local_rank))
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced.to(tensor.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_value(value: Any, context: DistributedContext) -> Any:
    """Rank 0's ``value`` on every rank: any picklable object (``on_main`` sends rank 0's exception)."""
    if not context.enabled:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def on_main(action: Callable[[], T], context: DistributedContext) -> T | None:
    """``action()`` on rank 0 alone (its result there, None elsewhere), the ranks leaving together. Its user error
    (``AutosegError``, ``OSError``: a refused fold, no permission, a damaged case) is raised on every rank: raised on
    rank 0 alone, it stopped rank 0 while the others waited for it at their next collective (6 h under NCCL)."""
    if not context.enabled:
        return action()
    result, failure = None, None
    if context.is_main:
        try:
            result = action()
        except (AutosegError, OSError) as exc:
            failure = exc
    failure = broadcast_value(failure, context)
    if failure is not None:
        raise failure
    return result


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()
