"""The continual-learning recipe: config -> data -> model -> (train task t -> evaluate tasks <= t)* -> summary."""

from __future__ import annotations

import os
import platform
import random
import re
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from . import __version__, metrics, rundir
from . import checkpoint as ckpt
from .adapters import ContinualLoRA
from .batching import collate_train, encode, encode_prompts
from .config import RunConfig, save_config
from .data import TaskData, load_tasks, resolve_task_dirs
from .dist import Dist, fit_global_batch, machine_name
from .dist import setup as dist_setup
from .errors import NloraError
from .evaluate import TaskPredictions, predict_tasks, prediction_rows, release_prediction_rows, results_dict
from .io import read_json, write_json, write_jsonl
from .logits import accepts_logits_to_keep, autocast, task_loss
from .methods import get_method
from .methods.base import TaskContext
from .models import autocast_dtype, check_target_modules, default_target_modules, load_model, pick_device
from .prompts import load_instructions
from .train import train_task
from .trainlog import RunLog


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def task_dir(out: Path, index: int, name: str) -> Path:
    return out / "tasks" / f"{index + 1:02d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}"


# Settings that may change between a run and its resumption: where it runs, how it batches evaluation (a
# resumed run may land on another GPU), how it logs, what it may load: none changes what is trained.
RESUME_FREE = (
    "output_dir",
    "device",
    "save_every",
    "eval_batch_size",
    "report_to",
    "log_every",
    "trust_remote_code",
    "allow_pickle_weights",
)
# What a run writes at the top of its directory (recorded in the manifest before it is written).
RUN_OUTPUTS = ("config.yaml", rundir.FINGERPRINT, "tasks", "zero_shot", "summary.json", "logs")


def check_resumable(saved: Path, cfg: RunConfig) -> None:
    """A run directory is resumed only with the settings it was made with."""
    try:
        before = RunConfig.from_dict(yaml.safe_load(saved.read_text("utf-8"))).to_dict()
    except (yaml.YAMLError, TypeError, KeyError, AttributeError, ValueError) as e:
        raise NloraError(
            f"{saved}: not a readable nlora config ({e.__class__.__name__}); pass --overwrite to start over"
        ) from None
    now = cfg.to_dict()
    diff = [k for k in sorted(set(before) | set(now)) if k not in RESUME_FREE and before.get(k) != now.get(k)]
    if diff:
        shown = "; ".join(f"{k}: {before.get(k)!r} there, {now.get(k)!r} now" for k in diff[:3])
        raise NloraError(
            f"{saved.parent} holds a run with different settings ({shown}"
            f"{'; ...' if len(diff) > 3 else ''}); resume it with the same settings, choose another "
            "--output-dir, or pass --overwrite to start over"
        )


def data_files(cfg: RunConfig) -> dict[str, list[Path]]:
    """Every file the run's data comes from, per task (the instruction file under its own key)."""
    dirs = resolve_task_dirs(cfg.data_dir, cfg.task_names)
    files = {name: [d / "labels.json", d / "train.json", d / "test.json"] for name, d in dirs.items()}
    if cfg.instructions:
        files["(instructions)"] = [Path(cfg.instructions)]
    return files


def plan_run_dir(cfg: RunConfig, overwrite: bool, dist: Dist, held: ExitStack) -> bool:
    """Read-only checks of the output directory (every rank); True if an earlier run there is resumed.

    Rank 0 takes the directory's lock first when it exists, so nothing it reads is being written by another
    process. A non-empty folder nlora did not make is refused, with --overwrite too."""
    out = Path(cfg.output_dir)
    rundir.check_path_usable(out)
    rundir.refuse_foreign(out)
    if out.is_dir() and dist.is_main:
        held.callback(rundir.DirectoryLock(out).acquire().release)
    if not overwrite and (out / "config.yaml").is_file():
        check_resumable(out / "config.yaml", cfg)
        rundir.check_run_files(out)
        rundir.check_fingerprint(out, rundir.data_fingerprint(data_files(cfg)))
        return True
    if not overwrite and not rundir.is_empty(out):
        raise NloraError(
            f"output directory {out} holds the start of an nlora run but no config.yaml; pass --overwrite to start over"
        )
    return False


def make_run_dir(cfg: RunConfig, overwrite: bool, dist: Dist, held: ExitStack) -> Path:
    """Called once every check has passed: clear what nlora wrote before (--overwrite), record and write the
    config and the data fingerprint."""
    out = Path(cfg.output_dir)
    if dist.is_main:
        try:
            existed = out.is_dir()
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise NloraError(f"cannot create output directory {out}: {e.strerror or e}") from None
        if not existed:  # made just now: lock it, and make sure no other process got here first
            held.callback(rundir.DirectoryLock(out).acquire().release)
            if not rundir.is_empty(out):
                raise NloraError(
                    f"output directory {out} was filled by another process meanwhile; choose another --output-dir"
                )
        try:
            if overwrite:
                rundir.clear(out)
            rundir.record(out, *RUN_OUTPUTS)
            write_json(out / rundir.FINGERPRINT, rundir.data_fingerprint(data_files(cfg)))
            save_config(cfg, out / "config.yaml")
        except OSError as e:  # a full or read-only disk: leave no half-made run directory behind
            if not existed:
                shutil.rmtree(out, ignore_errors=True)
            raise NloraError(f"cannot write the run directory {out}: {e.strerror or e}") from None
    dist.barrier()
    return out


def default_eval_batch(device: torch.device) -> int:
    """Large on a GPU (evaluation is memory-light per example); out-of-memory halves it as needed."""
    return 128 if device.type == "cuda" else 32


def log(msg: str) -> None:
    if os.environ.get("RANK", "0") in ("0", ""):  # under a launcher, one copy of each message
        tqdm.write(f"[nlora] {msg}")


def _read_json(path: Path):
    try:
        return read_json(path)
    except NloraError as e:
        raise NloraError(f"{e}; delete it to redo that step, or pass --overwrite to start the run over") from None


def evaluate_and_write(
    model,
    tok,
    tasks: list[TaskData],
    dest: Path,
    gen_kw: dict,
    dist: Dist | None = None,
    reuse: bool = False,
    routes=None,
    lora: ContinualLoRA | None = None,
    router=None,
) -> dict:
    """Predictions on every rank's share, gathered; rank 0 writes. ``reuse``: a finished evaluation in
    ``dest`` (a resumed run's, same settings) is read instead of redone. ``routes``: [(adapters, positions in
    ``tasks``)] when different adapters answer different tasks (per-task); None: the model as it is.
    ``router`` (methods that route by the input, see ``example_router``): each prompt is answered by the
    adapters it picks; the routes are then only what the task id would pick, and routing.json says how often
    the two agree."""
    dist = dist or Dist()
    if reuse and (dest / "predict_results.json").is_file():
        return _read_json(dest / "predict_results.json")
    start = time.perf_counter()
    if lora is None or lora.model is None:
        preds = predict_tasks(model, tok, tasks, dist=dist, **gen_kw)
    else:  # on merged weights: no LoRA branches in the generation loop
        preds = [None] * len(tasks)
        trained_with = lora.active()
        routing = {}
        for adapters, positions in routes or [(None, list(range(len(tasks))))]:
            if router is not None:
                for i in positions:
                    preds[i], routing[tasks[i].name] = _predict_routed(
                        lora, tok, tasks[i], router, adapters, dist, gen_kw
                    )
                continue
            lora.activate(adapters if adapters is not None else trained_with)
            with lora.merged(lora.active()):
                for i, p in zip(
                    positions, predict_tasks(lora.model, tok, [tasks[i] for i in positions], dist=dist, **gen_kw)
                ):
                    preds[i] = p
        lora.activate(trained_with)
        if router is not None and dist.is_main:
            write_json(dest / "routing.json", routing_summary(routing))
    results = results_dict(preds, time.perf_counter() - start)
    if dist.is_main:
        write_jsonl(dest / "predictions.jsonl", prediction_rows(preds))
        write_jsonl(dest / "predict_eval_predictions.jsonl", release_prediction_rows(preds, [t.labels for t in tasks]))
        write_json(dest / "predict_results.json", results)  # last: its presence marks the evaluation done
    dist.barrier()
    return results


def _predict_routed(lora, tok, task: TaskData, router, expected, dist, gen_kw):
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
            (answered,) = predict_tasks(lora.model, tok, [part], dist=dist, **gen_kw)
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


def example_router(method, lora, task_index: int, tok, seq2seq: bool, max_source: int, compat: str = "clean"):
    """For methods that route by the input: prompts -> the adapters answering each (token ids as the model
    reads them in evaluation). None for the others, whose evaluation is unchanged."""
    if not method.routes_by_input:
        return None

    def router(prompts: list[str]) -> list[list[str]]:
        if not prompts:
            return []
        sources = [e.source for e in encode_prompts(tok, prompts, seq2seq, max_source, compat)]
        return method.route_examples(lora, task_index, sources)

    return router


def task_context(lora, examples, settings, tok, seq2seq, device, amp) -> TaskContext:
    keep = not seq2seq and accepts_logits_to_keep(lora.model)

    def loss(batch_examples):
        batch = {k: v.to(device) for k, v in collate_train(batch_examples, tok.pad_token_id, seq2seq).items()}
        with autocast(device, amp):
            return task_loss(lora.model, batch, seq2seq, keep)

    return TaskContext(examples, settings.batch_size, loss)


def train_or_reuse(
    lora, method, t, settings, tasks, tdir, tok, loaded, cfg, device, amp, dist, runlog: RunLog | None = None
) -> dict:
    """Train task t (resuming its step checkpoint if any), or reload its adapter if it finished earlier."""
    task = tasks[settings.name]
    examples = method.train_examples(t, [tasks[s.name].splits["train"] for s in cfg.tasks])
    train_data = encode(tok, examples, loaded.seq2seq, cfg.max_source_length, cfg.max_target_length, cfg.compat)
    adapter = method.begin_task(lora, t, settings)
    ctx = task_context(lora, train_data, settings, tok, loaded.seq2seq, device, amp)
    stats_path = tdir / "train_stats.json"
    done = stats_path.is_file()
    dist.barrier()  # all ranks decide before rank 0 can write the stats (with nothing to train it would race ahead)
    if done:
        if (tdir / "adapter").is_dir():
            lora.load_adapter_weights(adapter, tdir / "adapter")
        method.end_task(lora, t, settings, ctx)
        if dist.is_main:  # a crash between the stats and the clean-up leaves it behind
            shutil.rmtree(tdir / "checkpoint", ignore_errors=True)
        log(f"task {t + 1}/{len(cfg.tasks)} {task.name}: trained earlier, adapter reloaded")
        return _read_json(stats_path)
    checkpoint = tdir / "checkpoint" / ckpt.STATE_FILE
    entry = {
        "task": task.name,
        "adapter": adapter,
        "train_steps": 0,
        "train_examples": 0,
        "train_loss": None,
        "mean_penalty": None,
        "train_seconds": 0.0,
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
        stats = train_task(
            lora,
            method,
            train_data,
            settings,
            pad_id=tok.pad_token_id,
            seq2seq=loaded.seq2seq,
            device=device,
            amp_dtype=amp,
            seed=cfg.seed + t,
            desc=f"train {task.name}",
            dist=dist,
            checkpoint=checkpoint,
            save_every=cfg.save_every,
            compile_model=cfg.compile,
            log=runlog.task_log(t, task.name, tdir) if runlog is not None else None,
            compat=cfg.compat,
            max_grad_norm=cfg.max_grad_norm,
        )
        entry.update(
            train_steps=stats.steps,
            train_examples=stats.examples,
            train_loss=round(stats.final_loss, 6),
            mean_penalty=round(stats.mean_penalty, 6),
            train_seconds=round(stats.seconds, 2),
        )
    else:
        log(f"task {t + 1}/{len(cfg.tasks)} {task.name}: nothing to train at this point for {cfg.method}")
    method.end_task(lora, t, settings, ctx)
    if dist.is_main:
        if train_data:
            lora.save_adapter(adapter, tdir / "adapter")
        write_json(stats_path, entry)  # after the adapter: its presence marks the training done
        shutil.rmtree(tdir / "checkpoint", ignore_errors=True)
    dist.barrier()
    return entry


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
    method = get_method(cfg.method)(cfg)
    if dist.sharded and (method.full_finetune or method.prompt_tuning):
        raise NloraError(
            f"{dist.sharder}: method {cfg.method} trains more than LoRA factors; with sharded base "
            "weights nlora runs the LoRA methods (nlora methods), or use a DDP config"
        )
    device = dist.device or pick_device(cfg.device)
    amp = autocast_dtype(cfg.precision, device)
    instructions = load_instructions(cfg.instructions)
    # All data is read and checked before the model loads or any directory is written.
    tasks = load_tasks(
        cfg.data_dir,
        cfg.task_names,
        instructions,
        cfg.max_train_per_task,
        cfg.max_test_per_task,
        cfg.seed,
        cfg.unknown_labels,
    )
    resuming = plan_run_dir(cfg, overwrite, dist, held)
    dist.barrier()  # every rank looks at the directory before rank 0 changes it, so all agree on resuming
    out = Path(cfg.output_dir)
    if resuming and (out / "summary.json").is_file():
        log(f"{out} holds a complete run; nothing to do (--overwrite to run again)")
        return _read_json(out / "summary.json")
    log(f"loading model {cfg.model}")
    loaded = load_model(
        cfg.model, trust_remote_code=cfg.trust_remote_code, allow_pickle_weights=cfg.allow_pickle_weights
    )
    targets = cfg.lora.target_modules or default_target_modules(loaded.model)
    check_target_modules(loaded.model, targets)
    method.check(loaded.model, targets)
    if not resuming:  # only now, with data, model and method checked, is anything written
        make_run_dir(cfg, overwrite, dist, held)

    model, tok = dist.shard_model(loaded.model).to(device), loaded.tokenizer
    lora = ContinualLoRA(model, cfg.lora, targets, loaded.seq2seq, sharded=dist.sharded)
    if dist.sharded:
        log(f"{dist.sharder}: this rank holds {100 * dist.held_share(model):.0f}% of the base weights")
    log(
        f"{'resuming ' if resuming else ''}{cfg.method} on {len(tasks)} tasks ({', '.join(cfg.task_names)}), "
        f"model {cfg.model}, device {device}"
        f"{f' x {dist.world} processes' + (f' ({dist.sharder})' if dist.sharded else '') if dist.active else ''}, "
        f"{'bf16 autocast' if amp else 'fp32'}, LoRA r={cfg.lora.r} on {targets}"
    )

    n = len(cfg.tasks)
    matrix: list[list[float | None]] = [[None] * n for _ in range(n)]
    per_task = []
    gen_kw = dict(
        seq2seq=loaded.seq2seq,
        device=device,
        amp_dtype=amp,
        batch_size=cfg.eval_batch_size or default_eval_batch(device),
        max_source=cfg.max_source_length,
        max_new_tokens=cfg.max_target_length,
        mode=cfg.eval_mode,
        compat=cfg.compat,
    )
    all_tasks = [tasks[s.name] for s in cfg.tasks]
    zero_shot = None
    if cfg.full_matrix:  # the starting model on every task: the b[j] of FWT
        log("evaluating the starting model on every task (--full-matrix)")
        results = evaluate_and_write(model, tok, all_tasks, out / "zero_shot", gen_kw, dist, reuse=True)
        zero_shot = [results[f"predict_exact_match_for_{t.name}"] for t in all_tasks]
    runlog = RunLog(out, cfg, dist.is_main)  # train_log.jsonl per task, and the --report-to trackers
    for t, settings in enumerate(cfg.tasks):
        task, tdir = tasks[settings.name], task_dir(out, t, settings.name)
        seed_everything(cfg.seed + t)  # per task, so a resumed run replays every remaining task exactly
        entry = train_or_reuse(lora, method, t, settings, tasks, tdir, tok, loaded, cfg, device, amp, dist, runlog)
        runlog.task_finished(entry["train_steps"])
        if not method.evaluate_after(t, n):
            per_task.append({**entry, "eval_seconds": None})
            continue
        evaluated = evaluated_tasks(cfg, t, n)
        fresh = not (tdir / "predict_results.json").is_file()  # a resumed run's earlier evaluations are not re-logged
        results = evaluate_and_write(
            lora.model,
            tok,
            [all_tasks[j] for j in evaluated],
            tdir,
            gen_kw,
            dist,
            reuse=True,
            routes=route_positions(method, t, evaluated),
            lora=lora,
            router=example_router(method, lora, t, tok, loaded.seq2seq, cfg.max_source_length, cfg.compat),
        )
        for j in evaluated:
            matrix[t][j] = results[f"predict_exact_match_for_{all_tasks[j].name}"]
        if fresh:
            runlog.log_eval({all_tasks[j].name: matrix[t][j] for j in evaluated})
        loss = "-" if entry["train_loss"] is None else f"{entry['train_loss']:.4f}"
        routed = _read_json(tdir / "routing.json") if (tdir / "routing.json").is_file() else None  # route
        log(
            f"after {task.name}: loss {loss}, exact match "
            + ", ".join(f"{all_tasks[j].name} {matrix[t][j]:.1f}" for j in evaluated)
            + (
                f"; routed as the task id would: {routed['accuracy']:.1f}%"
                if routed and routed["accuracy"] is not None
                else ""
            )
        )
        per_task.append(
            {
                **entry,
                "eval_seconds": results["predict_runtime"],
                **({"routing_accuracy": routed["accuracy"]} if routed else {}),
            }
        )

    summary = {
        "tasks": cfg.task_names,
        "method": cfg.method,
        "model": cfg.model,
        "preset": cfg.preset,
        "accuracy_matrix": matrix,
        "aa": metrics.average_accuracy(matrix),
        "bwt": metrics.backward_transfer(matrix),
        "fwt": metrics.forward_transfer(matrix, zero_shot) if zero_shot else None,
        "zero_shot": zero_shot,
        "wall_time_s": round(time.perf_counter() - started, 2),
        "resumed": bool(resuming),
        "per_task": per_task,
        "seed": cfg.seed,
        "device": str(device),
        "processes": dist.world,
        "fsdp": dist.sharder == "FSDP",
        "sharding": dist.sharder or None,
        "precision": "bf16" if amp else "fp32",
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
    runlog.finish(summary)
    if dist.is_main:
        write_json(out / "summary.json", summary)
        log(
            f"done in {summary['wall_time_s']:.0f}s: AA {summary['aa']:.2f}"
            + (f", BWT {summary['bwt']:.2f}" if summary["bwt"] is not None else "")
            + f" -> {out / 'summary.json'}"
        )
    dist.barrier()
    return summary


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
    run_dir = Path(run_dir)
    lock = rundir.DirectoryLock(run_dir).acquire() if run_dir.is_dir() else None
    try:
        return _evaluate_run(run_dir, task_names, after_task, data_dir, max_test, eval_batch_size, device)
    finally:
        if lock is not None:
            lock.release()


def _evaluate_run(
    run_dir: Path,
    task_names: list[str],
    after_task: int | None,
    data_dir: str | None,
    max_test: int | None,
    eval_batch_size: int | None,
    device: str | None,
) -> tuple[Path, dict]:
    from .analysis import check_run_dir, read_run_config
    from .io import check_saved_weights, error_line

    for flag, value in (("--max-test-per-task", max_test), ("--eval-batch-size", eval_batch_size)):
        if value is not None and value < 1:  # 0 test examples would be scored as 0.0 exact match
            raise NloraError(f"{flag} must be >= 1, got {value}")
    if not task_names:
        raise NloraError("--tasks names no task")
    check_run_dir(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise NloraError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = read_run_config(run_dir / "config.yaml")
    method = get_method(cfg.method)(cfg)
    trained = [i for i, s in enumerate(cfg.tasks) if (task_dir(run_dir, i, s.name) / "adapter").is_dir()]
    k = (trained[-1] + 1 if trained else 0) if after_task is None else after_task
    needed = method.eval_adapters(k - 1) if k >= 1 else []
    if not trained or k < 1 or k > len(cfg.tasks) or any(i not in trained for i in needed):
        raise NloraError(
            f"--after-task {k}: {run_dir} has no saved model after that task (adapters saved after "
            f"tasks {', '.join(str(i + 1) for i in trained) or 'none'})"
        )
    dev = pick_device(device or cfg.device)
    amp = autocast_dtype(cfg.precision, dev)
    tasks = load_tasks(
        data_dir or cfg.data_dir,
        task_names,
        load_instructions(cfg.instructions),
        None,
        max_test if max_test is not None else cfg.max_test_per_task,
        cfg.seed,
        cfg.unknown_labels,
        splits=("test",),
    )
    for i in needed:  # damaged adapter files are found before the model loads
        check_saved_weights(task_dir(run_dir, i, cfg.tasks[i].name) / "adapter")
    loaded = load_model(
        cfg.model, trust_remote_code=cfg.trust_remote_code, allow_pickle_weights=cfg.allow_pickle_weights
    )
    targets = cfg.lora.target_modules or default_target_modules(loaded.model)
    lora = ContinualLoRA(loaded.model.to(dev), cfg.lora, targets, loaded.seq2seq)
    for i in needed:
        method.start(lora, method.adapter_name(i))
        adapter_dir = task_dir(run_dir, i, cfg.tasks[i].name) / "adapter"
        try:
            lora.load_adapter_weights(method.adapter_name(i), adapter_dir)
        except (RuntimeError, KeyError, ValueError) as e:  # tensors of other shapes or names than the model's
            raise NloraError(f"{adapter_dir}: does not fit model {cfg.model} ({error_line(e)})") from None
    lora.model.to(dev)
    index = {s.name: i for i, s in enumerate(cfg.tasks)}
    evaluated = [min(index.get(name, k - 1), k - 1) for name in task_names]  # unseen tasks: the newest model
    gen_kw = dict(
        seq2seq=loaded.seq2seq,
        device=dev,
        amp_dtype=amp,
        batch_size=eval_batch_size or cfg.eval_batch_size or default_eval_batch(dev),
        max_source=cfg.max_source_length,
        max_new_tokens=cfg.max_target_length,
        mode=cfg.eval_mode,
        compat=cfg.compat,
    )
    dest = run_dir / "eval" / f"after-{k:02d}" / re.sub(r"[^A-Za-z0-9_.+-]", "_", "+".join(task_names))
    rundir.record(run_dir, "eval")
    log(f"evaluating {run_dir} after task {k} ({cfg.tasks[k - 1].name}) on {', '.join(task_names)}")
    results = evaluate_and_write(
        lora.model,
        loaded.tokenizer,
        [tasks[t] for t in task_names],
        dest,
        gen_kw,
        routes=route_positions(method, k - 1, evaluated),
        lora=lora,
        router=example_router(method, lora, k - 1, loaded.tokenizer, loaded.seq2seq, cfg.max_source_length, cfg.compat),
    )
    return dest, results
