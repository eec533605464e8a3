"""The continual-learning recipe: config -> data -> model -> (train task t -> evaluate tasks <= t)* -> summary."""

from __future__ import annotations

import platform
import random
import re
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from . import __version__, metrics, rundir
from . import checkpoint as ckpt
from .banks import Bank, make_bank
from .config import RunConfig
from .console import log
from .data import TaskData, load_tasks
from .dist import Dist, fit_global_batch, machine_name
from .dist import setup as dist_setup
from .errors import NloraError
from .evaluate import TaskPredictions, predict_tasks, prediction_rows, release_prediction_rows, results_dict
from .frozen import cast_frozen_linears, frozen_cast_applies
from .io import read_json, write_json, write_jsonl
from .logits import task_loss
from .methods import build_method
from .methods.base import Method, TaskContext
from .models import LoadedModel, check_target_modules, default_target_modules, load_model, pick_device
from .prompts import load_instructions
from .runtime import Runtime, make_runtime
from .train import TrainLoop, train_task
from .trainlog import RunLog


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def task_dir(out: Path, index: int, name: str) -> Path:
    return out / "tasks" / f"{index + 1:02d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}"


# -- the model -----------------------------------------------------------------------------------------------


@dataclass
class BuiltModel:
    """The base model as loaded, on its device (sharded under FSDP), and the bank that trains on it."""

    loaded: LoadedModel
    model: torch.nn.Module
    lora: Bank
    targets: list[str]


def build_model(cfg: RunConfig, method: Method, device: torch.device, dist: Dist | None = None) -> BuiltModel:
    """Load the run's model and tokenizer, check its LoRA targets against it and the method, and put the
    method's bank on it: the one way ``nlora run`` and ``nlora eval`` build a model."""
    dist = dist or Dist()
    loaded = load_model(
        cfg.model, trust_remote_code=cfg.trust_remote_code, allow_pickle_weights=cfg.allow_pickle_weights
    )
    targets = cfg.lora.target_modules or default_target_modules(loaded.model)
    check_target_modules(loaded.model, targets)
    method.check(loaded.model, targets)
    model = dist.shard_model(loaded.model).to(device)
    lora = make_bank(method.bank, model, cfg.lora, targets, loaded.family, sharded=dist.sharded)
    return BuiltModel(loaded, model, lora, targets)


# -- evaluation ----------------------------------------------------------------------------------------------


@dataclass
class Answerers:
    """Which adapters answer the evaluated tasks. ``routes``: [(adapters, positions in the evaluated tasks)]
    when different adapters answer different tasks (per-task); None: the adapters as trained. ``router``
    (methods that route by the input, see ``example_router``): each prompt is answered by the adapters it picks;
    the routes are then only what the task id would pick, and routing.json says how often the two agree."""

    lora: Bank
    routes: list | None = None
    router: Callable[[list[str]], list[list[str]]] | None = None


def evaluate_and_write(
    rt: Runtime, model, tasks: list[TaskData], dest: Path, answerers: Answerers | None = None, reuse: bool = False
) -> dict:
    """Predictions on every rank's share, gathered; rank 0 writes. ``reuse``: a finished evaluation in
    ``dest`` (a resumed run's, same settings) is read instead of redone. ``answerers``: None, ``model`` as it
    is (the starting model); else the bank's adapters, as it says, on merged weights."""
    dist = rt.dist
    if reuse and (dest / "predict_results.json").is_file():
        return read_json(dest / "predict_results.json")
    start, cpu_start = time.perf_counter(), time.process_time()
    lora = answerers.lora if answerers is not None else None
    if lora is None or lora.model is None:
        preds = predict_tasks(model, rt, tasks)
    else:  # on merged weights: no LoRA branches in the generation loop
        preds = [None] * len(tasks)
        trained_with = lora.active()
        routing = {}
        for adapters, positions in answerers.routes or [(None, list(range(len(tasks))))]:
            if answerers.router is not None:
                for i in positions:
                    preds[i], routing[tasks[i].name] = _predict_routed(rt, lora, tasks[i], answerers.router, adapters)
                continue
            lora.activate(adapters if adapters is not None else trained_with)
            with lora.merged(lora.active()):
                for i, p in zip(positions, predict_tasks(lora.model, rt, [tasks[i] for i in positions])):
                    preds[i] = p
        lora.activate(trained_with)
        if answerers.router is not None and dist.is_main:
            write_json(dest / "routing.json", routing_summary(routing))
    results = results_dict(preds, time.perf_counter() - start)
    results["predict_cpu_seconds"] = round(time.process_time() - cpu_start, 3)  # nlora's; not a release key
    if dist.is_main:
        write_jsonl(dest / "predictions.jsonl", prediction_rows(preds))
        write_jsonl(dest / "predict_eval_predictions.jsonl", release_prediction_rows(preds, [t.labels for t in tasks]))
        write_json(dest / "predict_results.json", results)  # last: its presence marks the evaluation done
    dist.barrier()
    return results


def _predict_routed(rt: Runtime, lora: Bank, task: TaskData, router, expected):
    """One task's predictions when each prompt picks its adapters: the prompts grouped by choice, each group
    predicted with its adapters alone; and the routing counts (against ``expected``, the task id's choice)."""
    examples = task.splits["test"]
    chosen = [tuple(c) for c in router([e.prompt for e in examples])]
    groups: dict[tuple, list[int]] = {}
    for n, choice in enumerate(chosen):
        groups.setdefault(choice, []).append(n)
    predictions, lens, truncated = [""] * len(examples), [0] * len(examples), []
    counted = True  # every group reports generation lengths (label scoring reports none)
    for choice, idx in groups.items():
        part = TaskData(task.name, task.category, task.labels, {"test": [examples[n] for n in idx]})
        lora.activate(list(choice))
        with lora.merged(lora.active()):
            (answered,) = predict_tasks(lora.model, rt, [part])
        for j, n in enumerate(idx):
            predictions[n] = answered.predictions[j]
            lens[n] = answered.gen_lens[j] if answered.gen_lens is not None else 0
        counted = counted and answered.gen_lens is not None
        truncated.append(answered.truncated)
    preds = TaskPredictions(
        task.name,
        task.category,
        [e.prompt for e in examples],
        [e.label for e in examples],
        predictions,
        lens if counted else None,
        None if None in truncated else sum(truncated),
    )
    counts = {"+".join(c): len(idx) for c, idx in sorted(groups.items())}
    right = len(groups.get(tuple(expected), [])) if expected is not None else None
    return preds, {
        "expected": "+".join(expected) if expected is not None else None,
        "routed": counts,
        "examples": len(examples),
        "correct": right,
    }


def routing_summary(per_task: dict) -> dict:
    """routing.json: per task, how many test prompts went to which adapters, and the share that went where
    the task id would have sent them (routing accuracy, %)."""
    scored = [r for r in per_task.values() if r["correct"] is not None]
    for r in per_task.values():
        r["accuracy"] = (
            round(100 * r["correct"] / r["examples"], 4) if r["correct"] is not None and r["examples"] else None
        )
    total = sum(r["examples"] for r in scored)
    return {"accuracy": round(100 * sum(r["correct"] for r in scored) / total, 4) if total else None, "tasks": per_task}


def example_router(rt: Runtime, method: Method, lora: Bank, task_index: int):
    """For methods that route by the input: prompts -> the adapters answering each (token ids as the model
    reads them in evaluation). None for the others, whose evaluation is unchanged."""
    if not method.routes_by_input:
        return None

    def router(prompts: list[str]) -> list[list[str]]:
        if not prompts:
            return []
        sources = [e.source for e in rt.encode_prompts(prompts)]
        return method.route_examples(lora, task_index, sources)

    return router


def answerers_after(rt: Runtime, method: Method, lora: Bank, task_index: int, evaluated: list[int]) -> Answerers:
    """The adapters that answer the ``evaluated`` tasks (indices in the run) after task ``task_index``."""
    return Answerers(lora, route_positions(method, task_index, evaluated), example_router(rt, method, lora, task_index))


def evaluated_tasks(cfg: RunConfig, t: int, n: int) -> list[int]:
    """Which tasks are evaluated after training task t (of n)."""
    if cfg.full_matrix:
        return list(range(n))
    if cfg.eval_scope == "needed" and t < n - 1:
        return [t]
    return list(range(t + 1))


def route_positions(method, task_index: int, evaluated: list[int]):
    """The method's routes as positions in the evaluated list; None when the model answers everything as is."""
    distinct = sorted(set(evaluated))
    routes = method.eval_routes(task_index, distinct)
    if routes == [(None, distinct)]:
        return None
    return [(a, [p for p, j in enumerate(evaluated) if j in js]) for a, js in routes]


# -- training ------------------------------------------------------------------------------------------------


def store_frozen_weights(rt: Runtime, method: Method, lora: Bank) -> None:
    """Under bf16 autocast, the base model's frozen linear weights are stored in bf16 from the first adapter on
    (nlora.frozen: the same results, no cast per call). Once done, later calls find nothing left to cast."""
    if lora.model is not None and frozen_cast_applies(rt.amp_dtype, method, rt.dist.sharded):
        done = cast_frozen_linears(lora.model, rt.amp_dtype)
        if done.layers:
            log(done.describe(rt.amp_dtype))


def task_context(rt: Runtime, lora: Bank, examples, settings) -> TaskContext:
    """What a method's hooks get to compute the task loss on batches of its own choosing."""
    keep = rt.keeps_logits(lora.model)

    def loss(batch_examples):
        batch = rt.collate_train(batch_examples)
        with rt.autocast():
            return task_loss(lora.model, batch, rt.family, keep)

    return TaskContext(examples, settings.batch_size, loss)


@dataclass
class RunSession:
    """Everything the steps of one ``nlora run`` share, once the model is built."""

    cfg: RunConfig
    rt: Runtime
    method: Method
    lora: Bank
    tasks: dict[str, TaskData]
    out: Path
    runlog: RunLog | None = None


def train_or_reuse(run: RunSession, t: int) -> dict:
    """Train task t (resuming its step checkpoint if any), or reload its adapter if it finished earlier."""
    cfg, rt, method, lora, dist = run.cfg, run.rt, run.method, run.lora, run.rt.dist
    settings = cfg.tasks[t]
    task, tdir = run.tasks[settings.name], task_dir(run.out, t, settings.name)
    examples = method.train_examples(t, [run.tasks[s.name].splits["train"] for s in cfg.tasks])
    train_data = rt.encode(examples)
    adapter = method.begin_task(lora, t, settings)
    store_frozen_weights(rt, method, lora)
    ctx = task_context(rt, lora, train_data, settings)
    stats_path = tdir / "train_stats.json"
    done = stats_path.is_file()
    dist.barrier()  # all ranks decide before rank 0 can write the stats (with nothing to train it would race ahead)
    if done:
        if (tdir / "adapter").is_dir():
            lora.load(adapter, tdir / "adapter")
        method.end_task(lora, t, settings, ctx)
        if dist.is_main:  # a crash between the stats and the clean-up leaves it behind
            shutil.rmtree(tdir / "checkpoint", ignore_errors=True)
        log(f"task {t + 1}/{len(cfg.tasks)} {task.name}: trained earlier, adapter reloaded")
        return read_json(stats_path)
    checkpoint = tdir / "checkpoint" / ckpt.STATE_FILE
    entry = {
        "task": task.name,
        "adapter": adapter,
        "train_steps": 0,
        "train_examples": 0,
        "train_loss": None,
        "mean_penalty": None,
        "train_seconds": 0.0,
        "train_cpu_seconds": 0.0,
        "train_truncated": sum(e.truncated for e in train_data),
    }  # over the length limit, cut (--compat)
    if train_data:
        log(
            f"task {t + 1}/{len(cfg.tasks)} {task.name}: {len(train_data)} examples, {settings.epochs:g} "
            f"epoch(s), batch {settings.batch_size}x{settings.grad_accum}, lr {settings.lr:g}, "
            f"{entry['train_truncated']} over {cfg.max_source_length} tokens cut ({cfg.compat})"
            + (" (resuming from its step checkpoint)" if checkpoint.is_file() else "")
        )
        method.before_training(lora, t, settings, ctx)
        loop = TrainLoop(
            seed=cfg.seed + t,
            desc=f"train {task.name}",
            checkpoint=checkpoint,
            save_every=cfg.save_every,
            compile_model=cfg.compile,
            max_grad_norm=cfg.max_grad_norm,
            log=run.runlog.task_log(t, task.name, tdir) if run.runlog is not None else None,
        )
        stats = train_task(rt, lora, method, train_data, settings, loop)
        entry.update(
            train_steps=stats.steps,
            train_examples=stats.examples,
            train_loss=round(stats.final_loss, 6),
            mean_penalty=round(stats.mean_penalty, 6),
            train_seconds=round(stats.seconds, 2),
            train_cpu_seconds=None if stats.cpu_seconds is None else round(stats.cpu_seconds, 2),
        )
    else:
        log(f"task {t + 1}/{len(cfg.tasks)} {task.name}: nothing to train at this point for {cfg.method}")
    method.end_task(lora, t, settings, ctx)
    if dist.is_main:
        if train_data:
            lora.save(adapter, tdir / "adapter")
        write_json(stats_path, entry)  # after the adapter: its presence marks the training done
        shutil.rmtree(tdir / "checkpoint", ignore_errors=True)
    dist.barrier()
    return entry


def evaluate_after_task(run: RunSession, t: int, matrix: list[list[float | None]], entry: dict) -> dict:
    """Evaluate the tasks due after task t, fill row t of ``matrix``; returns task t's summary entry."""
    cfg, n = run.cfg, len(run.cfg.tasks)
    all_tasks = [run.tasks[s.name] for s in cfg.tasks]
    tdir = task_dir(run.out, t, cfg.tasks[t].name)
    evaluated = evaluated_tasks(cfg, t, n)
    fresh = not (tdir / "predict_results.json").is_file()  # a resumed run's earlier evaluations are not re-logged
    answerers = answerers_after(run.rt, run.method, run.lora, t, evaluated)
    results = evaluate_and_write(run.rt, run.lora.model, [all_tasks[j] for j in evaluated], tdir, answerers, reuse=True)
    for j in evaluated:
        matrix[t][j] = results[f"predict_exact_match_for_{all_tasks[j].name}"]
    if fresh and run.runlog is not None:
        run.runlog.log_eval({all_tasks[j].name: matrix[t][j] for j in evaluated})
    loss = "-" if entry["train_loss"] is None else f"{entry['train_loss']:.4f}"
    routed = read_json(tdir / "routing.json") if (tdir / "routing.json").is_file() else None  # route
    log(
        f"after {all_tasks[t].name}: loss {loss}, exact match "
        + ", ".join(f"{all_tasks[j].name} {matrix[t][j]:.1f}" for j in evaluated)
        + (
            f"; routed as the task id would: {routed['accuracy']:.1f}%"
            if routed and routed["accuracy"] is not None
            else ""
        )
    )
    return {
        **entry,
        "eval_seconds": results["predict_runtime"],
        "eval_cpu_seconds": results.get("predict_cpu_seconds"),  # absent from evaluations of earlier versions
        **({"routing_accuracy": routed["accuracy"]} if routed else {}),
    }


# -- the run -------------------------------------------------------------------------------------------------


def run(cfg: RunConfig, overwrite: bool = False) -> dict:
    """Run the whole sequence, or resume it; returns the summary dict (also written to summary.json).

    The run directory's lock is held until this returns or raises (the OS drops it if the process dies)."""
    with ExitStack() as held:
        return _run(cfg, overwrite, held)


def _run(cfg: RunConfig, overwrite: bool, held: ExitStack) -> dict:
    started = time.perf_counter()
    dist = dist_setup(cfg.device)
    if cfg.global_batch:  # the same examples per optimizer step on any number of processes
        cfg.tasks = fit_global_batch(cfg.tasks, cfg.global_batch, dist.world)
    method = build_method(cfg)
    if dist.sharded and method.bank != "lora":
        raise NloraError(
            f"{dist.sharder}: method {cfg.method} trains more than LoRA factors; with sharded base "
            "weights nlora runs the LoRA methods (nlora methods), or use a DDP config"
        )
    device = dist.device or pick_device(cfg.device)
    # All data is read and checked before the model loads or any directory is written.
    tasks = load_tasks(
        cfg.data_dir,
        cfg.task_names,
        load_instructions(cfg.instructions),
        max_train=cfg.max_train_per_task,
        max_test=cfg.max_test_per_task,
        seed=cfg.seed,
        unknown_labels=cfg.unknown_labels,
    )
    resuming = rundir.plan_run_dir(cfg, overwrite, dist, held)
    dist.barrier()  # every rank looks at the directory before rank 0 changes it, so all agree on resuming
    out = Path(cfg.output_dir)
    if resuming and (out / "summary.json").is_file():
        log(f"{out} holds a complete run; nothing to do (--overwrite to run again)")
        return read_json(out / "summary.json")
    log(f"loading model {cfg.model}")
    built = build_model(cfg, method, device, dist)
    if not resuming:  # only now, with data, model and method checked, is anything written
        rundir.make_run_dir(cfg, overwrite, dist, held)
    rt = make_runtime(cfg, built.loaded, device, dist)
    _log_start(cfg, rt, built, resuming)

    n = len(cfg.tasks)
    matrix: list[list[float | None]] = [[None] * n for _ in range(n)]
    zero_shot = None
    if cfg.full_matrix:  # the starting model on every task: the b[j] of FWT
        log("evaluating the starting model on every task (--full-matrix)")
        all_tasks = [tasks[s.name] for s in cfg.tasks]
        results = evaluate_and_write(rt, built.model, all_tasks, out / "zero_shot", reuse=True)
        zero_shot = [results[f"predict_exact_match_for_{t.name}"] for t in all_tasks]
    session = RunSession(cfg, rt, method, built.lora, tasks, out, RunLog(out, cfg, dist.is_main))
    per_task = []
    for t in range(n):
        seed_everything(cfg.seed + t)  # per task, so a resumed run replays every remaining task exactly
        entry = train_or_reuse(session, t)
        session.runlog.task_finished(entry["train_steps"])
        if not method.evaluate_after(t, n):
            per_task.append({**entry, "eval_seconds": None, "eval_cpu_seconds": None})
            continue
        per_task.append(evaluate_after_task(session, t, matrix, entry))

    summary = run_summary(cfg, rt, matrix, zero_shot, per_task)
    summary["wall_time_s"] = round(time.perf_counter() - started, 2)
    summary["cpu_time_s"] = cpu_time(per_task)
    summary["resumed"] = bool(resuming)
    session.runlog.finish(summary)
    if dist.is_main:
        write_json(out / "summary.json", summary)
        log(
            f"done in {summary['wall_time_s']:.0f}s: AA {summary['aa']:.2f}"
            + (f", BWT {summary['bwt']:.2f}" if summary["bwt"] is not None else "")
            + f" -> {out / 'summary.json'}"
        )
    dist.barrier()
    return summary


def _log_start(cfg: RunConfig, rt: Runtime, built: BuiltModel, resuming: bool) -> None:
    dist = rt.dist
    if dist.sharded:
        log(f"{dist.sharder}: this rank holds {100 * dist.held_share(built.model):.0f}% of the base weights")
    log(
        f"{'resuming ' if resuming else ''}{cfg.method} on {len(cfg.tasks)} tasks ({', '.join(cfg.task_names)}), "
        f"model {cfg.model}, device {rt.device}"
        f"{f' x {dist.world} processes' + (f' ({dist.sharder})' if dist.sharded else '') if dist.active else ''}, "
        f"{'bf16 autocast' if rt.amp_dtype else 'fp32'}, {_what_trains(cfg, built)}"
    )


def _what_trains(cfg: RunConfig, built: BuiltModel) -> str:
    if built.lora.kind == "prompt":
        return "soft prompts (the model frozen)"
    if built.lora.kind == "full":
        return "every weight (full fine-tuning)"
    return f"LoRA r={cfg.lora.r} on {built.targets}"


def cpu_time_parts(per_task: list[dict]) -> tuple[float | None, float | None]:
    """The process CPU seconds of the run's training and of its evaluation, each summed over the tasks and across
    resumes; a part is None where a task's share was made by an earlier version, which did not measure it."""
    train = [p.get("train_cpu_seconds") for p in per_task]
    evaluation = [p.get("eval_cpu_seconds") for p in per_task if p.get("eval_seconds") is not None]
    return (None if None in train else sum(train)), (None if None in evaluation else sum(evaluation))


def cpu_time(per_task: list[dict]) -> float | None:
    """The process CPU time of the run's training and evaluation, across resumes: unlike the wall time it does
    not count pauses, other load on the machine or work lost to an interruption. None where a part was made by
    an earlier version, which did not measure it."""
    train, evaluation = cpu_time_parts(per_task)
    return None if train is None or evaluation is None else round(train + evaluation, 2)


def run_summary(cfg: RunConfig, rt: Runtime, matrix, zero_shot, per_task: list[dict]) -> dict:
    """summary.json (its wall time, CPU time and resumed flag are set by the caller, in their places)."""
    device, dist = rt.device, rt.dist
    return {
        "tasks": cfg.task_names,
        "method": cfg.method,
        "model": cfg.model,
        "preset": cfg.preset,
        "accuracy_matrix": matrix,
        "aa": metrics.average_accuracy(matrix),
        "bwt": metrics.backward_transfer(matrix),
        "fwt": metrics.forward_transfer(matrix, zero_shot) if zero_shot else None,
        "zero_shot": zero_shot,
        "wall_time_s": None,
        "cpu_time_s": None,
        "resumed": None,
        "per_task": per_task,
        "seed": cfg.seed,
        "device": str(device),
        "processes": dist.world,
        "fsdp": dist.sharder == "FSDP",
        "sharding": dist.sharder or None,
        "precision": "bf16" if rt.amp_dtype else "fp32",
        "machine": {
            "name": machine_name(device),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
        "nlora_version": __version__,
    }


# -- nlora eval ----------------------------------------------------------------------------------------------


def evaluate_run(
    run_dir: str | Path,
    task_names: list[str],
    after_task: int | None = None,
    data_dir: str | None = None,
    max_test: int | None = None,
    eval_batch_size: int | None = None,
    device: str | None = None,
) -> tuple[Path, dict]:
    """The model as it was after task K (1-based, default the last trained), on any tasks, trained or not.

    Rebuilt from the base model and the saved adapters alone. Writes
    RUN_DIR/eval/after-KK/<tasks>/predict_results.json and predictions.jsonl; the summary is untouched.
    Holds the run directory's lock meanwhile (refused while a run trains there).
    """
    request = EvalRequest(task_names, after_task, data_dir, max_test, eval_batch_size, device)
    run_dir = Path(run_dir)
    lock = rundir.DirectoryLock(run_dir).acquire() if run_dir.is_dir() else None
    try:
        return _evaluate_run(run_dir, request)
    finally:
        if lock is not None:
            lock.release()


@dataclass
class EvalRequest:
    """What ``nlora eval`` was asked: the tasks, after which task, and the settings it may change."""

    task_names: list[str]
    after_task: int | None = None
    data_dir: str | None = None
    max_test: int | None = None
    eval_batch_size: int | None = None
    device: str | None = None


def _evaluate_run(run_dir: Path, request: EvalRequest) -> tuple[Path, dict]:
    from .analysis import check_run_dir, read_run_config
    from .io import check_saved_weights, error_line

    task_names, max_test = request.task_names, request.max_test
    for flag, value in (("--max-test-per-task", max_test), ("--eval-batch-size", request.eval_batch_size)):
        if value is not None and value < 1:  # 0 test examples would be scored as 0.0 exact match
            raise NloraError(f"{flag} must be >= 1, got {value}")
    if not task_names:
        raise NloraError("--tasks names no task")
    check_run_dir(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise NloraError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = read_run_config(run_dir / "config.yaml")
    method = build_method(cfg)
    trained = [i for i, s in enumerate(cfg.tasks) if (task_dir(run_dir, i, s.name) / "adapter").is_dir()]
    k = (trained[-1] + 1 if trained else 0) if request.after_task is None else request.after_task
    needed = method.eval_adapters(k - 1) if k >= 1 else []
    if not trained or k < 1 or k > len(cfg.tasks) or any(i not in trained for i in needed):
        raise NloraError(
            f"--after-task {k}: {run_dir} has no saved model after that task (adapters saved after "
            f"tasks {', '.join(str(i + 1) for i in trained) or 'none'})"
        )
    dev = pick_device(request.device or cfg.device)
    tasks = load_tasks(
        request.data_dir or cfg.data_dir,
        task_names,
        load_instructions(cfg.instructions),
        max_test=max_test if max_test is not None else cfg.max_test_per_task,
        seed=cfg.seed,
        unknown_labels=cfg.unknown_labels,
        splits=("test",),
    )
    for i in needed:  # damaged adapter files are found before the model loads
        check_saved_weights(task_dir(run_dir, i, cfg.tasks[i].name) / "adapter")
    built = build_model(cfg, method, dev)
    lora = built.lora
    for i in needed:
        method.start(lora, method.adapter_name(i))
        adapter_dir = task_dir(run_dir, i, cfg.tasks[i].name) / "adapter"
        try:
            lora.load(method.adapter_name(i), adapter_dir)
        except (RuntimeError, KeyError, ValueError) as e:  # tensors of other shapes or names than the model's
            raise NloraError(f"{adapter_dir}: does not fit model {cfg.model} ({error_line(e)})") from None
    lora.model.to(dev)
    rt = make_runtime(cfg, built.loaded, dev, eval_batch_size=request.eval_batch_size)
    store_frozen_weights(rt, method, lora)
    index = {s.name: i for i, s in enumerate(cfg.tasks)}
    evaluated = [min(index.get(name, k - 1), k - 1) for name in task_names]  # unseen tasks: the newest model
    dest = run_dir / "eval" / f"after-{k:02d}" / re.sub(r"[^A-Za-z0-9_.+-]", "_", "+".join(task_names))
    rundir.record(run_dir, "eval")
    log(f"evaluating {run_dir} after task {k} ({cfg.tasks[k - 1].name}) on {', '.join(task_names)}")
    answerers = answerers_after(rt, method, lora, k - 1, evaluated)
    results = evaluate_and_write(rt, lora.model, [tasks[t] for t in task_names], dest, answerers)
    return dest, results
