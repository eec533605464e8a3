"""Step checkpoints inside a task, so a killed run resumes where it stopped and ends with the same numbers.

A checkpoint holds what the next step depends on: the training adapter's weights, the optimizer state, the
position in the task's (deterministic) batch schedule, the losses so far and the RNG states (dropout). It is
written to a temporary name and renamed, and loaded with ``weights_only=True``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .console import log
from .dist import Dist
from .errors import NloraError
from .io import atomic_write

STATE_FILE = "state.pt"


@dataclass
class TrainState:
    micro: int = 0  # micro-batches done (always at an optimizer-step boundary)
    losses: list[float] = field(default_factory=list)
    penalties: list[float] = field(default_factory=list)
    seconds: float = 0.0  # training time before the interruption
    # the process CPU time of that training (not counting pauses or other load on the machine); None when
    # resumed from a checkpoint of an earlier version, which did not keep it
    cpu_seconds: float | None = 0.0


def _rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def save(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: TrainState, dist: Dist) -> None:
    """Rank 0 writes; weights and optimizer are the same on every rank, RNG states are gathered per rank."""
    rng = dist.all_gather(_rng_state())
    if not dist.is_main:
        return
    blob = {
        "trainable": {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(),
        "micro": state.micro,
        "losses": state.losses,
        "penalties": state.penalties,
        "seconds": state.seconds,
        "cpu_seconds": state.cpu_seconds,
        "rng": rng,
        "world": dist.world,
        "cpu_threads": torch.get_num_threads(),
    }
    atomic_write(path, lambda tmp: torch.save(blob, tmp))


def load(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, dist: Dist) -> TrainState:
    """Restore weights, optimizer and RNG from ``path``; returns where training stood."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a checkpoint from another version or a damaged disk
        raise NloraError(
            f"{path}: cannot read checkpoint ({e.__class__.__name__}); delete it to restart the task"
        ) from None
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(blob["trainable"]):
        raise NloraError(
            f"{path}: checkpoint parameters do not match the model being trained; delete it to restart the task"
        )
    with torch.no_grad():
        for name, value in blob["trainable"].items():
            params[name].copy_(value)
    if blob["world"] != dist.world:
        raise NloraError(
            f"{path}: checkpoint was written by {blob['world']} process(es), this run has "
            f"{dist.world}; resume with the same number or delete it to restart the task"
        )
    # the kernel (fused, foreach) is this process's choice, not the checkpoint's: load_state_dict would bring back
    # the saved groups' flags, so an older checkpoint would resume on torch's default kernel
    kernel = [{key: group[key] for key in ("fused", "foreach") if key in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(blob["optimizer"])
    for group, chosen in zip(optimizer.param_groups, kernel):
        group.update(chosen)
    threads = blob.get("cpu_threads")  # absent in checkpoints of earlier versions
    on_cpu = next(iter(params.values())).device.type == "cpu" if params else False
    if on_cpu and threads is not None and threads != torch.get_num_threads():
        # CPU kernels split their sums by thread, so the floats change in their last bits
        log(
            f"{path}: written with {threads} CPU thread(s), resumed with {torch.get_num_threads()}: the rest "
            "of the task will not match an uninterrupted run bit for bit (set OMP_NUM_THREADS to match)"
        )
    rng = blob["rng"][dist.rank]
    torch.set_rng_state(rng["torch"])
    random.setstate(_as_tuple(rng["python"]))
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    cpu = blob.get("cpu_seconds")  # absent in checkpoints of earlier versions
    return TrainState(
        blob["micro"],
        list(blob["losses"]),
        list(blob["penalties"]),
        float(blob["seconds"]),
        None if cpu is None else float(cpu),
    )


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
