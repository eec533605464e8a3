"""Data-parallel execution under ``accelerate launch`` (or torchrun): one process per GPU, or per CPU with gloo.

Accelerate sets up the process group and the device. Each rank trains on its share of every global batch and
the gradients of the trainable (LoRA) parameters are summed across ranks once per optimizer step, with each
rank's loss already weighted by its share of the global batch's answer tokens, so the update equals the
one-process update on the whole batch. Evaluation splits each task's batches across ranks and gathers the
predictions; only rank 0 writes files.

Under an FSDP config the frozen base weights are sharded too (FSDP2 over the model's transformer blocks,
before any adapter exists), while the LoRA factors, made later, stay whole on every rank and go through the
same gradient sum: the regularisers read them whole. Sharded ranks must run forward passes in lockstep, so a
rank with no examples in a micro-batch or fewer evaluation batches runs a filler pass whose result is dropped.
"""

from __future__ import annotations

import os
import platform
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from .errors import NloraError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device | None = None  # set by Accelerate when launched; None: choose from --device
    sharded: bool = False  # FSDP: base weights sharded across ranks (adapters are not)
    reshard_after_forward: bool = True
    root: Any = None  # the FSDP root module once the model is sharded

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

    def shard_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """FSDP2 over every transformer block (the classes the model names in ``_no_split_modules``) and the
        whole model. Call before adapters exist: all it shards is frozen base weight."""
        if not self.sharded:
            return model
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        blocks = set(getattr(model, "_no_split_modules", None) or [])
        wrapped = [m for m in model.modules() if type(m).__name__ in blocks]
        if not wrapped:
            raise NloraError(f"FSDP: {type(model).__name__} names no transformer block classes "
                             "(_no_split_modules) to shard by; use a DDP config")
        for p in model.parameters():
            p.requires_grad_(False)
        device = self.device if self.device is not None else torch.device("cpu")
        mesh = init_device_mesh(device.type, (self.world,))
        # T5's stack computes the position bias from block 0's table before calling the block, outside the
        # block's gather: that small table stays whole on every rank.
        whole = {p for n, m in model.named_modules() if n.endswith("relative_attention_bias") for p in m.parameters()}
        for block in wrapped:
            fully_shard(block, mesh=mesh, reshard_after_forward=self.reshard_after_forward, ignored_params=whole)
        self.root = fully_shard(model, mesh=mesh, reshard_after_forward=self.reshard_after_forward)
        return model

    @contextmanager
    def root_gathered(self):
        """The root's own weights (embeddings, head) gathered for the duration: generation may call a
        submodule (T5's encoder) without going through the root's forward, which would gather them."""
        if self.root is None:
            yield
            return
        self.root.unshard()
        try:
            yield
        finally:
            self.root.reshard()

    def lockstep(self, batches: list) -> list[tuple[Any, bool]]:
        """This rank's share of ``batches`` as (batch, keep) pairs. Sharded ranks pad to the same number of
        passes with fillers (keep False) so that their weight gathers match."""
        mine = [(b, True) for b in batches[self.rank::self.world]]
        if self.sharded and batches:
            mine += [(batches[0], False)] * (-(-len(batches) // self.world) - len(mine))
        return mine


def machine_name(device: torch.device | str) -> str:
    """What benchmarks print beside their figures: the GPU's name, or the CPU model and thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu} CPU ({platform.machine()}), {torch.get_num_threads()} threads"


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
    if state.distributed_type == DistributedType.DEEPSPEED or _env_flag("ACCELERATE_USE_DEEPSPEED"):
        raise NloraError("DeepSpeed is not supported: nlora runs its own optimizer step on the LoRA factors; "
                         "for sharded base weights use configs/accelerate/fsdp-gpus.yaml")
    sharded = state.distributed_type == DistributedType.FSDP or _env_flag("ACCELERATE_USE_FSDP")
    if sharded:
        _check_fsdp_settings()
    return Dist(rank=state.process_index, world=state.num_processes, device=state.device, sharded=sharded,
                reshard_after_forward=os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower()
                not in ("false", "shard_grad_op", "no_shard", "2", "3"))


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("true", "1", "yes")


def _check_fsdp_settings() -> None:
    """The FSDP options nlora honours are fsdp_version 2 and fsdp_reshard_after_forward; refuse the rest
    rather than ignore them."""
    if os.environ.get("FSDP_VERSION", "2") != "2":
        raise NloraError(f"FSDP: fsdp_version {os.environ['FSDP_VERSION']} in the Accelerate config; nlora "
                         "shards with FSDP2, set fsdp_version: 2 (configs/accelerate/fsdp-gpus.yaml)")
    for flag, what in (("FSDP_OFFLOAD_PARAMS", "fsdp_offload_params"),
                       ("FSDP_ACTIVATION_CHECKPOINTING", "fsdp_activation_checkpointing")):
        if _env_flag(flag):
            raise NloraError(f"FSDP: {what}: true is not supported; set it to false")
