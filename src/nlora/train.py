"""The training loop for one task: task loss + the method's penalty, AdamW at a constant rate."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .banks import Bank
from .batching import Encoded, batch_order
from .config import TaskSettings
from .errors import NloraError
from .logits import loss_from_logits
from .methods.base import Method
from .runtime import Runtime
from .trainlog import TaskLog

# torch's fused AdamW runs on the CPU from 2.4 on (the floor in pyproject is lower)
FUSED_ADAMW_ON_CPU = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 4)


def adamw(params: list[torch.nn.Parameter], lr: float, sharded: bool = False) -> torch.optim.AdamW:
    """AdamW at ``lr``, no weight decay. With every parameter a plain CPU tensor, torch's fused kernel: torch's
    default there loops over the tensors in Python, about ten elementwise passes over each, which for a fully
    fine-tuned SmolLM2 (seq-ft, migu: 135M parameters) is 0.31 s a step at 2 threads against 0.082 s fused (the
    same update rule; ``benchmarks/optimizer_step.py``). Sharded runs and other devices keep torch's default."""
    on_cpu = bool(params) and all(p.device.type == "cpu" and type(p) is torch.nn.Parameter for p in params)
    fused = True if FUSED_ADAMW_ON_CPU and on_cpu and not sharded else None
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=fused)


@dataclass
class TrainStats:
    steps: int
    examples: int
    final_loss: float
    mean_loss: float
    mean_penalty: float
    seconds: float  # wall time, across resumes
    cpu_seconds: float | None  # process CPU time, across resumes (None: resumed from an older checkpoint)


def build_schedule(
    lengths: list[int], settings: TaskSettings, seed: int, group_by_length: bool = True, world: int = 1
) -> list[list[int]]:
    """The task's micro-batches, a function of the seed only (so a resumed run replays the same order).
    With a global batch, batches are drawn at that size and cut into per-process chunks; a micro-batch holds
    ``world`` chunks interleaved, so that rank r's round-robin share is chunk r: every number of processes
    sees the same global batches in the same per-process chunks."""
    per_epoch = math.ceil(len(lengths) / settings.batch_size)
    schedule = []
    for epoch in range(math.ceil(settings.epochs)):
        if getattr(settings, "global_batch", None):
            order = [
                i for b in batch_order(lengths, settings.global_batch, seed * 1000 + epoch, group_by_length) for i in b
            ]
            per_rank = max(1, settings.batch_size // world)
            chunks = [order[s : s + per_rank] for s in range(0, len(order), per_rank)]
            for s in range(0, len(chunks), world):
                group = chunks[s : s + world]
                schedule.append([c[j] for j in range(per_rank) for c in group if j < len(c)])
        else:
            schedule += batch_order(lengths, settings.batch_size, seed * 1000 + epoch, group_by_length)
    return schedule[: math.ceil(settings.epochs * per_epoch)]


@dataclass
class TrainLoop:
    """How one task's training loop runs, besides the run's ``Runtime``."""

    seed: int  # the batch order's (a function of it only, so a resumed run replays the same order)
    desc: str = "train"  # the progress bar's label
    checkpoint: Path | None = None  # resumed from if it exists; saved every ``save_every`` optimizer steps
    save_every: int = 0  # 0: never
    compile_model: bool = False  # torch.compile the forward
    max_grad_norm: float | None = None  # clip the summed LoRA gradients to this norm (None: no clipping)
    log: TaskLog | None = None  # the task's train_log.jsonl, cut back to the checkpoint's step on resume


@dataclass
class _Trainee:
    """What each micro-step of a task works on."""

    forward: torch.nn.Module  # the model, compiled or not
    lora: Bank
    method: Method
    settings: TaskSettings
    keep_logits: bool


def train_task(
    rt: Runtime, lora: Bank, method: Method, data: list[Encoded], settings: TaskSettings, loop: TrainLoop
) -> TrainStats:
    """Train the current adapter on one task; resumes from ``loop.checkpoint`` if it exists, saves it every
    ``loop.save_every`` optimizer steps (0: never). ``loop.log``: a line per optimizer step or logging interval."""
    dist, log, checkpoint = rt.dist, loop.log, loop.checkpoint
    model = lora.model
    model.train()
    # The compiled module shares the parameters; compiled per task, as the set of adapters changes.
    forward = torch.compile(model, dynamic=True) if loop.compile_model else model
    params = lora.trainable_parameters()
    optimizer = adamw(params, settings.lr, dist.sharded)
    trainee = _Trainee(forward, lora, method, settings, rt.keeps_logits(model))
    # reference: random batches, as the release's HF Trainer (no group_by_length)
    schedule = build_schedule(
        [len(e.source) + len(e.target) for e in data],
        settings,
        loop.seed,
        group_by_length=rt.compat != "reference",
        world=dist.world,
    )
    total_steps = math.ceil(len(schedule) / settings.grad_accum)

    state = ckpt.TrainState()
    if checkpoint is not None and checkpoint.is_file():
        state = ckpt.load(checkpoint, model, optimizer, dist)
    start = time.perf_counter() - state.seconds
    cpu_start, cpu_before = time.process_time(), state.cpu_seconds

    def cpu_seconds() -> float | None:
        return None if cpu_before is None else cpu_before + time.process_time() - cpu_start

    if log is not None:
        log.begin(
            state.micro // settings.grad_accum,
            total_steps,
            [len(b) for b in schedule],
            settings.grad_accum,
            settings.epochs,
        )
    bar = tqdm(
        total=total_steps,
        initial=state.micro // settings.grad_accum,
        desc=loop.desc,
        unit="step",
        dynamic_ncols=True,
        leave=False,
        disable=not dist.is_main,
    )
    optimizer.zero_grad(set_to_none=True)
    for micro in range(state.micro, len(schedule)):
        step = micro // settings.grad_accum + 1
        share = dist.shard(schedule[micro])
        filler = dist.sharded and not share  # sharded ranks must all run the pass; this one counts for nothing
        loss, extra = _micro_step(rt, trainee, [data[i] for i in share or schedule[micro][:1]], step, filler)
        state.losses.append(loss)
        state.penalties.append(extra)
        if (micro + 1) % settings.grad_accum == 0 or micro + 1 == len(schedule):
            dist.sum_gradients(params)
            method.before_step(lora, dist)
            logs_norm = log is not None and log.wants(step)
            if loop.max_grad_norm:  # the release clips at 1.0 (HF max_grad_norm); the LoRA gradients summed over ranks
                total = torch.nn.utils.clip_grad_norm_(params, loop.max_grad_norm)  # returns the norm before clipping
                grad_norm = float(total) if logs_norm else None
            else:
                grad_norm = _grad_norm(params) if logs_norm else None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", pen=f"{extra:.3g}")
            state.micro = micro + 1
            if log is not None:
                log.step(
                    step,
                    micro + 1,
                    state.losses,
                    state.penalties,
                    optimizer.param_groups[0]["lr"],
                    grad_norm,
                    time.perf_counter() - start,
                )
            if checkpoint is not None and loop.save_every and step % loop.save_every == 0 and micro + 1 < len(schedule):
                state.seconds, state.cpu_seconds = time.perf_counter() - start, cpu_seconds()
                ckpt.save(checkpoint, model, optimizer, state, dist)
    bar.close()
    per_epoch = math.ceil(len(data) / settings.batch_size)
    tail = state.losses[-max(1, per_epoch // 10) :]
    return TrainStats(
        steps=total_steps,
        examples=sum(len(b) for b in schedule),
        final_loss=sum(tail) / len(tail),
        mean_loss=sum(state.losses) / len(state.losses),
        mean_penalty=sum(state.penalties) / len(state.penalties),
        seconds=time.perf_counter() - start,
        cpu_seconds=cpu_seconds(),
    )


def _grad_norm(params: list[torch.nn.Parameter]) -> float:
    """L2 norm of all gradients together (the figure clip_grad_norm_ returns), for runs that do not clip."""
    norms = [torch.linalg.vector_norm(p.grad.detach().float()) for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def _micro_step(
    rt: Runtime, trainee: _Trainee, examples: list[Encoded], step: int, filler: bool = False
) -> tuple[float, float]:
    """Forward and backward of one micro-batch (this rank's share); returns the global mean loss and penalty.
    ``filler``: the pass only keeps a sharded rank in step; its loss is multiplied by zero. ``compat``
    reference: the release's loss, each rank's micro-batch mean over its own count (for decoders the release's
    loss-mask denominator), averaged over ranks; clean: the token-weighted mean over the global micro-batch."""
    dist, compat, family = rt.dist, rt.compat, rt.family
    method, lora, settings = trainee.method, trainee.lora, trainee.settings
    loss_sum, count, batch_extra = torch.zeros((), device=rt.device), 0, None
    if examples:
        batch = rt.collate_train(examples)
        with rt.autocast():
            logits, targets = family.answer_logits(trainee.forward, batch, trainee.keep_logits)
            loss_sum, count = loss_from_logits(logits, targets)
            count = family.loss_count(examples, count, compat)
            batch_extra = method.batch_penalty(lora, settings, batch, family, logits, targets)
        if filler:
            loss_sum, count = loss_sum * 0, 0
            batch_extra = None if batch_extra is None else batch_extra * 0
    local_sum = loss_sum.detach().float().item()
    counts = dist.sum_(torch.tensor([float(count), local_sum, local_sum / max(count, 1)], device=rt.device))
    global_count = max(float(counts[0]), 1.0)
    if compat == "reference":  # each rank's own mean, averaged over ranks (a 0/0 mean counts as 0, not NaN)
        global_count = max(float(count), 1.0) * dist.world
    extra = method.penalty(lora, settings)  # fp32: a sum over millions of |dW| entries would lose bits in bf16
    # Gradients are summed over ranks: each rank's share of the mean, and the penalty once in total.
    objective = loss_sum / global_count + (extra / dist.world if extra is not None else 0.0)
    if batch_extra is not None:  # a mean over this rank's batch, weighted by its share of the answer tokens
        share = count / global_count
        objective = objective + share * batch_extra.float()
        extra = batch_extra.float() * share if extra is None else extra + batch_extra.float() * share
    mean_loss = float(counts[2]) / dist.world if compat == "reference" else float(counts[1]) / global_count
    penalty = float(extra.detach()) if extra is not None else 0.0
    total = mean_loss + penalty
    if not math.isfinite(total):
        raise NloraError(
            f"non-finite loss ({total}) at step {step} of task {settings.name}; lower --lr or "
            "--lambda (the last step checkpoint, if any, is kept)"
        )
    if torch.is_tensor(objective) and objective.requires_grad:
        (objective / settings.grad_accum).backward()
    return mean_loss, penalty
