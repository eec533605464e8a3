"""Data-parallel execution under ``accelerate launch`` (or torchrun): one process per GPU, or per CPU with gloo.

Accelerate sets up the process group and the device. Each rank trains on its share of every global batch and
the gradients of the trainable (LoRA) parameters are summed across ranks once per optimizer step, with each
rank's loss already weighted by its share of the global batch's answer tokens, so the update equals the
one-process update on the whole batch. Evaluation splits each task's batches across ranks and gathers the
predictions; only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .errors import NloraError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device | None = None  # set by Accelerate when launched; None: choose from --device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.active:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def all_gather(self, obj) -> list:
        if not self.active:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum the gradients of ``params`` over ranks in one flat buffer (LoRA gradients are a few MB)."""
        if not self.active:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.sum_(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    def shard(self, items: list) -> list:
        """This rank's share of a global batch (round robin)."""
        return items[self.rank::self.world]


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str = "auto") -> Dist:
    """A single process unless launched with several; then Accelerate initialises the process group
    (NCCL on GPUs; gloo on CPUs, with ``--device cpu`` or where no GPU is visible)."""
    if not launched():
        return Dist()
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    if state.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise NloraError(f"distributed type {state.distributed_type.value} is not supported yet: nlora trains "
                         "LoRA factors it reads whole in its regularisers; use a DDP config "
                         "(configs/accelerate/ddp-*.yaml)")
    return Dist(rank=state.process_index, world=state.num_processes, device=state.device)
