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
Under a DeepSpeed ZeRO-3 config DeepSpeed does that sharding instead (an engine without an optimizer: it
partitions the frozen weights and gathers each module's share around its forward pass); everything else is
the same as under FSDP.
"""

from __future__ import annotations

import json
import os
import platform
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch

from .errors import NloraError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device | None = None  # set by Accelerate when launched; None: choose from --device
    sharder: str = ""  # "FSDP" or "DeepSpeed ZeRO-3" when the base weights are sharded (adapters never are)
    reshard_after_forward: bool = True
    root: Any = None  # the FSDP root module once the model is sharded
    engine: Any = None  # the DeepSpeed engine once the model is partitioned (kept: it owns the gather hooks)

    @property
    def sharded(self) -> bool:
        return bool(self.sharder)

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
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def shard(self, items: list) -> list:
        """This rank's share of a global batch (round robin)."""
        return items[self.rank :: self.world]

    def shard_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """FSDP2 over every transformer block (the classes the model names in ``_no_split_modules``) and the
        whole model. Call before adapters exist: all it shards is frozen base weight."""
        if not self.sharded:
            return model
        for p in model.parameters():
            p.requires_grad_(False)
        if self.sharder == DEEPSPEED:
            return self._partition_zero3(model)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        blocks = set(getattr(model, "_no_split_modules", None) or [])
        wrapped = [m for m in model.modules() if type(m).__name__ in blocks]
        if not wrapped:
            raise NloraError(
                f"FSDP: {type(model).__name__} names no transformer block classes "
                "(_no_split_modules) to shard by; use a DDP config"
            )
        device = self.device if self.device is not None else torch.device("cpu")
        mesh = init_device_mesh(device.type, (self.world,))
        # T5's stack computes the position bias from block 0's table before calling the block, outside the
        # block's gather: that small table stays whole on every rank.
        whole = {p for n, m in model.named_modules() if n.endswith("relative_attention_bias") for p in m.parameters()}
        for block in wrapped:
            fully_shard(block, mesh=mesh, reshard_after_forward=self.reshard_after_forward, ignored_params=whole)
        self.root = fully_shard(model, mesh=mesh, reshard_after_forward=self.reshard_after_forward)
        return model

    def _partition_zero3(self, model: torch.nn.Module) -> torch.nn.Module:
        """ZeRO-3 parameter partitioning with no optimizer: DeepSpeed's hooks gather each module's weights for
        its forward (and backward) pass. Adapters added later are ordinary, whole parameters."""
        import deepspeed

        config = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "zero_optimization": {**_deepspeed_zero_section(), "stage": 3},
        }
        self.engine, *_ = deepspeed.initialize(model=model, config=config)
        return model

    def held_share(self, model: torch.nn.Module) -> float:
        """The fraction of the base model's weight elements this rank holds (1.0 unless sharded)."""
        held = total = 0
        for p in model.parameters():
            if hasattr(p, "ds_tensor"):  # ZeRO-3: the local partition, the full size
                held, total = held + p.ds_tensor.numel(), total + p.ds_numel
            elif hasattr(p, "to_local"):  # FSDP2 DTensor
                held, total = held + p.to_local().numel(), total + p.numel()
            else:
                held, total = held + p.numel(), total + p.numel()
        return held / max(total, 1)

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
        mine = [(b, True) for b in batches[self.rank :: self.world]]
        if self.sharded and batches:
            mine += [(batches[0], False)] * (-(-len(batches) // self.world) - len(mine))
        return mine


def fit_global_batch(tasks: list, global_batch: int, world: int) -> list:
    """Each task's settings for ``world`` processes such that every optimizer step takes ``global_batch``
    examples: per process the largest micro-batch that divides global_batch / world without exceeding the task's
    batch_size, and the accumulation that makes up the rest (e.g. the release's 4 GPUs x 1 x 8 = 32: one process
    accumulates 32, two accumulate 16). nlora's batch_size is the micro-batch over all processes."""
    if global_batch % world:
        raise NloraError(
            f"global batch {global_batch} cannot be split evenly over {world} processes; use a number "
            f"of processes that divides it, or --batch-size/--grad-accum"
        )
    per_world = global_batch // world
    out = []
    for t in tasks:
        per_process = max(d for d in range(1, min(t.batch_size, per_world) + 1) if per_world % d == 0)
        out.append(
            replace(t, batch_size=per_process * world, grad_accum=per_world // per_process, global_batch=global_batch)
        )
    return out


def cpuinfo(field: str) -> str | None:
    """A field of /proc/cpuinfo's first CPU ("model name", "vendor_id"); None where there is no such file or field."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith(field))
    except (OSError, StopIteration):
        return None


def machine_name(device: torch.device | str) -> str:
    """What benchmarks print beside their figures: the GPU's name, or the CPU model, the vector instructions
    torch's kernels use and the thread count. The model name alone can hide a machine twice as slow: two "AMD
    EPYC" hosts here, one with AVX-512 and one with AVX2 only, trained the same steps at 4.8 and about 9 s each."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = cpuinfo("model name") or platform.processor() or platform.machine()
    vector = torch.backends.cpu.get_cpu_capability()
    return f"{cpu} CPU ({platform.machine()}, {vector}), {torch.get_num_threads()} threads"


LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """True under a launcher (accelerate launch, torchrun) with several processes. A WORLD_SIZE left in the
    environment without the rest of a launcher's variables is refused: joining a process group that no
    other process will join would hang."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        world = int(raw)
    except ValueError:
        raise NloraError(
            f"environment variable WORLD_SIZE={raw!r} is not a number; unset it, or start nlora with accelerate launch"
        ) from None
    if world <= 1:
        return False
    missing = [v for v in LAUNCHER_VARS if not os.environ.get(v)]
    if missing:
        raise NloraError(
            f"WORLD_SIZE={world} is set but {', '.join(missing)} are not: not started by a launcher; "
            "unset WORLD_SIZE, or start nlora with accelerate launch"
        )
    return True


def setup(device: str = "auto") -> Dist:
    """A single process unless launched with several; then Accelerate initialises the process group
    (NCCL on GPUs; gloo on CPUs, with ``--device cpu`` or where no GPU is visible)."""
    if not launched():
        return Dist()
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    sharder = ""
    if state.distributed_type == DistributedType.DEEPSPEED or _env_flag("ACCELERATE_USE_DEEPSPEED"):
        _check_deepspeed_settings()
        sharder = DEEPSPEED
    elif state.distributed_type == DistributedType.FSDP or _env_flag("ACCELERATE_USE_FSDP"):
        _check_fsdp_settings()
        sharder = "FSDP"
    return Dist(
        rank=state.process_index,
        world=state.num_processes,
        device=state.device,
        sharder=sharder,
        reshard_after_forward=os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower()
        not in ("false", "shard_grad_op", "no_shard", "2", "3"),
    )


DEEPSPEED = "DeepSpeed ZeRO-3"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("true", "1", "yes")


def _check_fsdp_settings() -> None:
    """The FSDP options nlora honours are fsdp_version 2 and fsdp_reshard_after_forward; refuse the rest
    rather than ignore them."""
    if os.environ.get("FSDP_VERSION", "2") != "2":
        raise NloraError(
            f"FSDP: fsdp_version {os.environ['FSDP_VERSION']} in the Accelerate config; nlora "
            "shards with FSDP2, set fsdp_version: 2 (configs/accelerate/fsdp-gpus.yaml)"
        )
    for flag, what in (
        ("FSDP_OFFLOAD_PARAMS", "fsdp_offload_params"),
        ("FSDP_ACTIVATION_CHECKPOINTING", "fsdp_activation_checkpointing"),
    ):
        if _env_flag(flag):
            raise NloraError(f"FSDP: {what}: true is not supported; set it to false")


def _deepspeed_zero_section() -> dict:
    """The ``zero_optimization`` section of the DeepSpeed config file named in the Accelerate config, if any."""
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "")
    if not path or path.lower() == "none":
        return {}
    try:
        section = json.loads(open(path).read()).get("zero_optimization", {})
    except (OSError, ValueError) as e:
        raise NloraError(f"DeepSpeed: cannot read deepspeed_config_file {path}: {e}") from None
    return section if isinstance(section, dict) else {}


def _check_deepspeed_settings() -> None:
    """nlora uses DeepSpeed for ZeRO stage 3 only (sharded base weights, on the GPUs); refuse what it would
    otherwise ignore. Stages 1 and 2 shard optimizer state and gradients, which here are a few MB of LoRA
    factors that nlora keeps whole and steps itself."""
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise NloraError(
            "DeepSpeed config but deepspeed is not installed: pip install --no-build-isolation deepspeed (after torch)"
        ) from None
    section = _deepspeed_zero_section()
    stage = str(section.get("stage", os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "")))
    if stage != "3":
        raise NloraError(
            f"DeepSpeed: zero_stage {stage or 'unset'}; nlora supports zero_stage: 3 (sharded base "
            "weights, configs/accelerate/deepspeed-zero3.yaml); for plain data parallel use ddp-gpus.yaml"
        )
    offload = {
        "offload_param_device": os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "none"),
        "offload_optimizer_device": os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none"),
    }
    for key in ("offload_param", "offload_optimizer"):
        if isinstance(section.get(key), dict):
            offload[f"{key}_device"] = str(section[key].get("device", "none"))
    for key, value in offload.items():
        if value.lower() not in ("none", ""):
            raise NloraError(f"DeepSpeed: {key}: {value} is not supported; set it to none")
    if _env_flag("ACCELERATE_DEEPSPEED_ZERO3_INIT"):
        raise NloraError(
            "DeepSpeed: zero3_init_flag: true is not supported (nlora loads the model, then "
            "partitions it); set it to false"
        )
