"""Data-parallel training on torch.distributed, for runs launched by torchrun.

    torchrun --standalone --nproc_per_node=4 -m nanolab.train ...            # one machine
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d \\
             --rdzv_endpoint=$HEAD:29500 --rdzv_id=$SLURM_JOB_ID -m nanolab.train ...

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE. Without them nothing here talks to another
process, so a plain `python -m nanolab.train` runs the same code as a world of one.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import io
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist

from nanolab import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0 alone logs, shows progress and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def any(self, flag: bool) -> bool:
        """Whether `flag` holds on any rank (every rank must call this at the same point)."""
        if not self.distributed:
            return flag
        t = torch.tensor([int(flag)], device=_collective_device())
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
        return bool(t.item())

    def mean_(self, t: torch.Tensor) -> torch.Tensor:
        """Average `t` over ranks in place (gloo has no AVG, so a sum divided)."""
        if self.distributed:
            torch_dist.all_reduce(t)
            t /= self.size
        return t

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum `t` over ranks in place."""
        if self.distributed:
            torch_dist.all_reduce(t)
        return t

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj`, in rank order, on rank 0 (None elsewhere): unlike `gather`, the
        other ranks receive nothing, so large objects are sent once."""
        if not self.distributed:
            return [obj]
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        blobs: list[Any] | None = [None] * self.size if self.main else None
        torch_dist.gather_object(buffer.getvalue(), blobs, dst=0)
        return (
            [torch.load(io.BytesIO(blob), weights_only=False) for blob in blobs]
            if self.main
            else None
        )

    def wait_for_all(self) -> None:
        """A barrier without a time limit worth the name (a week): the ranks that wait here may
        wait for another to prepare a dataset for hours, longer than the process group's
        timeout. If that rank fails instead, torchrun stops the waiting ones."""
        if not self.distributed:
            return
        group = torch_dist.new_group(backend="gloo", timeout=datetime.timedelta(days=7))
        torch_dist.barrier(group=group)
        torch_dist.destroy_process_group(group)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        # torch.save, not plain pickle: pickle cannot load uint32 tensors (numpy's RNG state).
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        blobs: list[Any] = [None] * self.size
        torch_dist.all_gather_object(blobs, buffer.getvalue())
        # our own ranks' data
        return [torch.load(io.BytesIO(blob), weights_only=False) for blob in blobs]


def _collective_device() -> torch.device:
    return (
        torch.device("cuda", torch.cuda.current_device())
        if torch_dist.get_backend() == "nccl"
        else torch.device("cpu")
    )


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[tuple[World, torch.device]]:
    """The world this process trains in, and its device: under torchrun each rank joins the
    process group (nccl on CUDA, gloo on CPU) and takes GPU cuda:<local rank>; alone, the
    device as given. The group is left on exit, also after an error."""
    if not launched_by_torchrun():
        yield World(), device
        return
    world = World(
        int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    )
    if device.type == "cuda":
        if device.index is not None and world.size > 1:
            raise ConfigError(
                f"device={device} names one GPU, but torchrun starts one process per GPU; "
                "use device=auto or device=cuda (rank r uses cuda:<local rank>)"
            )
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ConfigError(
            f"device={device.type} cannot train under torchrun; use device=cuda or device=cpu"
        )
    torch_dist.init_process_group(backend=backend, device_id=device if backend == "nccl" else None)
    if not world.main:  # one voice: the other ranks report only problems
        logging.getLogger("nanolab").setLevel(logging.WARNING)
    try:
        yield world, device
        # Leave together: a rank that tears gloo down while rank 0 still writes its summary
        # and finishes W&B can abort at exit ("terminate called without an active exception").
        gc.collect()  # the DDP wrapper's reducer, which holds communication state
        torch_dist.barrier()
    finally:
        torch_dist.destroy_process_group()


def local_grad_accum(grad_accum: int, fix_global_batch: bool, world: World) -> int:
    """Micro-batches each rank runs per optimizer step. With fix_global_batch the config's
    grad_accum counts micro-batches over all ranks, so the global batch (and what a run
    computes) does not depend on how many processes share it."""
    if not fix_global_batch:
        return grad_accum
    if grad_accum % world.size:
        raise ConfigError(
            f"trainer.grad_accum={grad_accum} cannot be split over {world.size} processes "
            f"(trainer.fix_global_batch=true); make it a multiple of {world.size}, "
            "or set trainer.fix_global_batch=false to let the global batch grow with the processes"
        )
    return grad_accum // world.size


def gradient_sync(
    model: torch.nn.Module, last_micro_step: bool
) -> contextlib.AbstractContextManager:
    """DDP all-reduces gradients in backward; on every micro-step but an optimizer step's last
    that work would be thrown away, so it is skipped (gradients accumulate locally). `model`
    may be the DDP module or its compiled wrapper."""
    # torch.compile's OptimizedModule keeps the module there
    ddp = getattr(model, "_orig_mod", model)
    if isinstance(ddp, torch.nn.parallel.DistributedDataParallel) and not last_micro_step:
        return ddp.no_sync()
    return contextlib.nullcontext()
