"""A fair leaderboard on a real model (issue 18), built from compact records that outlive a session.

    python benchmarks/leaderboard.py plan                                   # what exists, what is missing
    python benchmarks/leaderboard.py select --sequence 4task                # each method's knob, on validation
    python benchmarks/leaderboard.py run --sequence 4task --methods all --seeds 1,2,3
    python benchmarks/leaderboard.py run --sequence 4task --methods n-lora,o-lora --seeds 1,2,3 --epochs 3
    python benchmarks/leaderboard.py table                                  # docs/leaderboard.md + figures

Every finished run (and every grid point of a selection) leaves one small JSON record under
benchmarks/records/<budget tag>/<sequence>/<method>/seed-<n>.json (selection: .../<budget tag>/selection/
<sequence>/<method>/<knob>-<value>.json and choice.json; the knob is the method's main coefficient, lambda, or for
prompt and full fine-tuning methods the learning rate, LR_KNOB): settings, the hyperparameter and where it came
from, AA, BWT, FWT, the accuracy matrix, ACR and nuclear norm where they apply, routing accuracy, bytes saved per
task, machine, wall time, nlora commit, torch version. No adapters. The budget tag names everything that changes
what is trained (model, examples, epochs, batch, lr, precision, rank), so different budgets never mix. `run` and
`select` run only what has no record yet; their run directories (under runs/leaderboard/, ignored by git) are
ordinary `nlora run` directories, so an interrupted run resumes where it stopped. `table` reads only the records.
Commit the records as they appear (or pass --commit), and the next session continues from them. Two copies of one
`run` or `select` command (e.g. --threads 1 each on 2 cores) share its runs: a run directory another process holds
is skipped. A run that fails is reported at the end and the others go on.

This file is the command line and the runs (select, run, record) with their records; the rest lives beside it,
one concern per module: leaderboard_spec.py (sequences, budgets and tags, grids, the plan's seeds, record paths),
leaderboard_standings.py (records grouped per method, the best and its paired differences, the plan's expected
records), leaderboard_table.py (the document and its figures) and leaderboard_pacing.py (what runs cost, --until).

Hyperparameters are chosen on seed 1 of the 4-task sequence, on a validation split carved from each task's
training data (common.carve_validation: compared by content, never a test row, never a row that is also
trained on), by validation AA, then BWT. A best value on an end of a geometric grid adds the next value beyond that
end (up to EDGE_STEPS per end), so a choice is never one the grid merely stopped at; `run` waits for that.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch

from nlora.dist import machine_name
from nlora.errors import NloraError
from nlora.io import write_json
from nlora.methods import REGISTRY
from nlora.recipe import cpu_time_parts

sys.path.insert(0, str(Path(__file__).resolve().parent))
import leaderboard_pacing as pacing  # noqa: E402
import leaderboard_spec as spec  # noqa: E402
import leaderboard_standings as standings  # noqa: E402
import leaderboard_table as table  # noqa: E402
from common import SHARED, carve_validation, run_one  # noqa: E402

# What a task directory holds besides what the method stores (evaluation and logs).
NOT_STORED = {
    "predictions.jsonl",
    "predict_eval_predictions.jsonl",
    "predict_results.json",
    "train_log.jsonl",
    "train_stats.json",
    "routing.json",
}


# ----------------------------------------------------------------------------------------------- runs' inputs


def run_args(s: dict, args) -> SimpleNamespace:
    """The namespace common.run_one reads."""
    return SimpleNamespace(
        **{k: s[k] for k in ("model", "max_train", "max_test", "epochs", "batch_size", "lr", "precision")},
        lora_r=s.get("lora_r"),
        lora_alpha=s.get("lora_alpha"),
        nlora_form=s.get("nlora_form"),
        eval_scope="needed",
        save_every=args.save_every,
        device=args.device,
        eval_batch_size=None,
    )


def run_inputs(s: dict, args, hp: dict) -> tuple[SimpleNamespace, float | None]:
    """common.run_one's namespace and lambda for a run at hyperparameter ``hp``: an "lr" sets the run's learning
    rate (the method's coefficient at its default), a "lambda" the coefficient (the budget's lr)."""
    ns = run_args(s, args)
    if hp["name"] == "lr":
        ns.lr = hp["value"]
        return ns, None
    return ns, hp["value"]


# ---------------------------------------------------------------------------------------------------- records


def _git(*cmd: str) -> str | None:
    try:
        return subprocess.run(["git", *cmd], cwd=spec.ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def code_changed() -> bool | None:
    """Whether tracked files of the checkout differ from its commit, records aside (a choice.json this very runner
    rewrote is not a code change); None without git."""
    out = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/records")
    return None if out is None else bool(out)


def source_commit() -> tuple[str | None, bool | None]:
    """The nlora commit a record names, and whether the tree differed from it (None: not known). A tree copied
    without git (tools/device/leaderboard.sh on a lent GPU) is named by NLORA_COMMIT, set by whoever copied it."""
    commit = _git("rev-parse", "HEAD")
    if commit:
        return commit, code_changed()
    return os.environ.get("NLORA_COMMIT") or None, None


def stored_bytes(task_dir: Path) -> int:
    """What a task directory keeps for the method (adapter, method state), without evaluation files, logs and
    step checkpoints."""
    total = 0
    for f in task_dir.rglob("*"):
        rel = f.relative_to(task_dir)
        if f.is_file() and rel.parts[0] != "checkpoint" and f.name not in NOT_STORED:
            total += f.stat().st_size
    return total


def trains_lora(method: str) -> bool:
    cls = REGISTRY[method]
    if hasattr(cls, "bank"):  # "lora", "prompt" or "full"
        return cls.bank == "lora"
    return not getattr(cls, "full_finetune", False) and not getattr(cls, "prompt_tuning", False)


def default_lambda(method: str) -> float | None:
    """The default of the method's main coefficient: the option the ``lambda`` override sets (None: none)."""
    cls = REGISTRY[method]
    if hasattr(cls, "default_lambda"):
        return cls.default_lambda
    from nlora.methods.options import option_specs

    return next((o.default for o in option_specs(cls.Options) if o.alias == "lambda"), None)


def analysable(method: str, n_tasks: int) -> bool:
    """ACR and nuclear norm apply to LoRA methods that train one update per task in sequence."""
    return n_tasks > 1 and method != "mtl" and trains_lora(method)


def make_record(
    kind: str, summary: dict, run_dir: Path, *, settings: dict, tag: str, seq: str, method: str, seed: int, hp: dict
) -> dict:
    """The compact record of a finished run (``kind`` "run" or "selection") from its summary and run directory, at
    the budget ``settings`` (tagged ``tag``) with the hyperparameter ``hp`` it used."""
    from nlora.report import analyze

    cls = REGISTRY[method]
    analysis, analysis_error = None, None
    if analysable(method, len(summary["tasks"])):
        try:
            analysis = analyze(run_dir)
        except Exception as e:  # recorded; the run's accuracy stands without it
            analysis_error = f"{type(e).__name__}: {e}"
    task_dirs = sorted(p for p in (run_dir / "tasks").iterdir() if p.is_dir())
    routing = None
    if task_dirs and (task_dirs[-1] / "routing.json").is_file():
        r = spec.read(task_dirs[-1] / "routing.json") or {}
        routing = {
            "accuracy": r.get("accuracy"),
            "per_task": {t: x.get("accuracy") for t, x in (r.get("tasks") or {}).items()},
        }
    per_task = summary.get("per_task") or []
    train_s = sum(p.get("train_seconds") or 0.0 for p in per_task)
    eval_s = sum(p.get("eval_seconds") or 0.0 for p in per_task)
    train_cpu, eval_cpu = cpu_time_parts(per_task)
    resumed = bool(summary.get("resumed"))
    commit, dirty = source_commit()
    return {
        "kind": kind,
        "budget_tag": tag,
        "sequence": seq,
        "tasks": summary["tasks"],
        "method": method,
        "seed": seed,
        "settings": {**settings, "eval_scope": "needed", "unknown_labels": "drop"},
        "hyperparameter": hp,
        "needs_task_id": cls.needs_task_id,
        "routes_by_input": cls.routes_by_input,
        "gated_by_input": method in spec.GATED_BY_INPUT,
        "uses_replay": cls.uses_replay,
        "aa": summary["aa"],
        "bwt": summary["bwt"],
        "fwt": summary.get("fwt"),
        "accuracy_matrix": summary["accuracy_matrix"],
        "acr": analysis["acr"] if analysis else None,
        "nuclear_norm_mean": analysis["nuclear_norm"]["mean"] if analysis else None,
        "analysis_error": analysis_error,
        "routing": routing,
        "routing_accuracy_per_step": [p.get("routing_accuracy") for p in per_task] if routing else None,
        "stored_bytes_per_task": [stored_bytes(d) for d in task_dirs],
        "train_steps_per_task": [p.get("train_steps") for p in per_task],
        "train_examples_per_task": [p.get("train_examples") for p in per_task],
        "final_loss_per_task": [p.get("train_loss") for p in per_task],
        # a resumed run's summary times only its last session: then the per-task seconds (a lower bound) count
        "wall_time_s": summary["wall_time_s"] if not resumed else round(train_s + eval_s, 2),
        "wall_time_basis": "summary" if not resumed else "sum of per-task train and eval seconds (run resumed)",
        # the process CPU time of training and evaluation across resumes: pauses and other load do not count
        "cpu_time_s": summary.get("cpu_time_s"),
        "train_cpu_seconds": None if train_cpu is None else round(train_cpu, 2),
        "eval_cpu_seconds": None if eval_cpu is None else round(eval_cpu, 2),
        "train_seconds": round(train_s, 2),
        "eval_seconds": round(eval_s, 2),
        "resumed": resumed,
        "machine": machine_name(summary.get("device") or "cpu"),
        "device_type": torch.device(summary.get("device") or "cpu").type,
        "threads": torch.get_num_threads(),
        "load_avg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "precision_used": summary.get("precision"),
        "nlora_commit": commit,
        "nlora_tree_dirty": dirty,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "run_dir": str(run_dir),
    }


def save_record(path: Path, record: dict, commit: bool) -> None:
    write_json(path, record)
    print(f"[leaderboard] record {path}", flush=True)
    if commit:  # only this file: whatever else is staged or changed stays as it is
        where = str(path.parent)
        msg = f"leaderboard record: {record['budget_tag']} {record['sequence']} {record['method']} {path.stem}"
        for cmd in (["add", "--", path.name], ["commit", "-q", "-m", msg, "--", path.name]):
            done = subprocess.run(["git", *cmd], cwd=where, capture_output=True, text=True)
            if done.returncode:
                print(f"[leaderboard] git {cmd[0]} failed: {done.stderr.strip()}", flush=True)
                return


def attempt(args, run: str, out: Path, fn: Callable[[], dict]) -> dict | None:
    """fn(), the run named ``run`` in directory ``out``, or None when it fails: the error is printed and counted
    (args.failures), and the loop goes on to the next run, so one broken method does not stop a night of runs. A
    run directory another process is running is skipped without counting, so two copies of one command share its
    runs. Ctrl-C still stops."""
    try:
        return fn()
    except Exception as e:
        if isinstance(e, NloraError) and "is in use by" in str(e):
            print(f"[leaderboard] {run}: another process is running it, skipped", flush=True)
            return None
        args.failures.append(f"{run} -> {out}: {type(e).__name__}: {e}")
        print(f"[leaderboard] FAILED {args.failures[-1]}", flush=True)
        return None


# -------------------------------------------------------------------------------------------------- selection


def validation_data(args, s: dict, tag: str, seq: str) -> Path:
    dest = Path(args.runs) / tag / "valdata" / seq
    if (dest / "validation.json").is_file():  # carved earlier (the same rows: the carving is deterministic)
        return dest
    tasks = spec.SEQUENCES[seq].split(",")
    return carve_validation(
        Path(args.data_dir), tasks, dest, spec.VAL_ROWS, spec.VAL_SPLIT_SEED, max_share=spec.VAL_MAX_SHARE
    )


def cmd_select(args) -> None:
    s, seq = spec.settings_of(args), args.sequence
    tag = spec.budget_tag(s)
    methods = [m for m in expand_methods(args.methods, args.records, tag) if m in spec.GRIDS]
    val = None
    pace = pacing.Pace(args, s)
    for method in methods:
        knob = spec.knob_of(method)
        tried: set[float] = set()  # once per call: a failed run is not retried at once
        while True:  # the grid, then one value beyond an end at a time while the best lies on it
            values, points = spec.selection_values(args.records, tag, seq, method)
            recorded = {p["value"] for p in points}
            missing = [v for v in values if v not in tried and v not in recorded]
            tried.update(missing)
            for value in missing:
                what = f"{tag} selection {seq} {method} {knob} {value:g}"
                if not pacing.fits_before_until(
                    args, pace, spec.point_path(args.records, tag, seq, method, value), seq, method, s["epochs"], what
                ):
                    continue
                val = val or validation_data(args, s, tag, seq)
                out = Path(args.runs) / tag / "selection" / seq / method / f"{knob}-{value:g}"
                source = "grid point"
                if value not in spec.GRIDS[method]:
                    source = "beyond the grid's end, where its best was"
                    print(
                        f"[leaderboard] {method}: the best {knob} lies on the grid's end, {value:g} added", flush=True
                    )
                hp = {"name": knob, "value": value, "source": source}
                ns, lam = run_inputs(s, args, hp)
                summary = attempt(
                    args,
                    f"{method} seed {spec.SELECT_SEED}",
                    out,
                    partial(run_one, ns, method, spec.SEQUENCES[seq], spec.SELECT_SEED, out, val, lam),
                )
                if summary is None:
                    continue
                rec = make_record(
                    "selection", summary, out, settings=s, tag=tag, seq=seq, method=method, seed=spec.SELECT_SEED, hp=hp
                )
                rec["validation"] = spec.read(val / "validation.json")
                save_record(spec.point_path(args.records, tag, seq, method, value), rec, args.commit)
            if not missing:  # all recorded, or what is left failed or runs in another process
                break
        values, points = spec.selection_values(args.records, tag, seq, method)
        if len(points) < len(values):
            print(f"[leaderboard] {method}: selection incomplete, no choice written", flush=True)
            continue
        chosen = spec.choose(points)
        choice = {
            "method": method,
            "budget_tag": tag,
            "sequence": seq,
            "seed": spec.SELECT_SEED,
            "rule": "highest validation AA, then BWT, then the smaller value; a best value on an end of a geometric "
            f"grid adds the next value beyond it (up to {spec.EDGE_STEPS} per end)",
            "grid": spec.GRIDS[method],
            "validation": {
                "rows_per_task": spec.VAL_ROWS,
                "max_share": spec.VAL_MAX_SHARE,
                "split_seed": spec.VAL_SPLIT_SEED,
            },
            "knob": knob,
            "points": points,
            "chosen": chosen,
        }
        path = spec.selection_dir(args.records, tag, seq, method) / "choice.json"
        if spec.read(path) != {**choice, "kind": "choice"}:  # an unchanged choice is not rewritten (nor recommitted)
            save_record(path, {**choice, "kind": "choice"}, args.commit)
        print(
            f"[leaderboard] {method}: {knob} {chosen:g} ("
            + ", ".join(f"{p['value']:g} -> AA {p['aa']:.2f}" for p in points)
            + ")",
            flush=True,
        )


def hyperparameter(args, s: dict, tag: str, seq: str, method: str) -> dict | None:
    """The knob value a run uses (its lambda, or its lr for LR_KNOB methods) and where it came from; None when a
    selection is needed and missing."""
    knob = spec.knob_of(method)
    if method in args.fixed_lambda:
        return {"name": knob, "value": args.fixed_lambda[method], "source": "command line"}
    if method not in spec.GRIDS:
        default = default_lambda(method)
        src = "no coefficient" if default is None else "method default (no grid)"
        return {"name": "lambda", "value": default, "source": src}
    # --epochs runs reuse their budget's choice
    base = spec.budget_tag(dict(s, epochs=spec.BUDGETS[args.budget]["epochs"]))
    for t in dict.fromkeys([tag, base]):
        for q in dict.fromkeys([seq, spec.SELECT_SEQUENCE]):
            path = spec.selection_dir(args.records, t, q, method) / "choice.json"
            choice = spec.read(path)
            if choice and spec.beyond_edge(method, choice["points"]) is not None:
                # written before selection went on beyond a grid's end, where its best lies: not final yet
                print(f"[leaderboard] {method}: {path} is not final, its best lies on its grid's end", flush=True)
                return None
            if choice:
                return {
                    "name": knob,
                    "value": choice["chosen"],
                    "source": str(path.relative_to(args.records)),
                }
    if args.allow_default:
        value = s["lr"] if knob == "lr" else default_lambda(method)
        return {"name": knob, "value": value, "source": "method default (no selection)"}
    return None


# ------------------------------------------------------------------------------------------------------- runs


def expand_methods(names: str, records: Path, tag: str, seq: str = spec.SELECT_SEQUENCE) -> list[str]:
    """'all', 'best5' (the best five of the 4-task table at this budget), 'tied' (the best of SEQ's table and
    the methods not distinguishable from it, ``tied_with_best``) or a comma list."""
    out = []
    for part in names.split(","):
        if part == "all":
            out += sorted(REGISTRY)
        elif part == "tied":
            out += standings.tied_with_best(records, tag, seq)
        elif part.startswith("best"):
            out += standings.best_of(records, tag, spec.SELECT_SEQUENCE, int(part[4:] or spec.TEN_TASK_BEST))
        elif part not in REGISTRY:
            raise SystemExit(f"unknown method {part!r} (nlora methods lists them)")
        else:
            out.append(part)
    return list(dict.fromkeys(out))


def cmd_run(args) -> None:
    s, seq = spec.settings_of(args), args.sequence
    tag = spec.budget_tag(s)
    seeds = [int(x) for x in args.seeds.split(",")]
    tasks = spec.SEQUENCES[seq]
    pace = pacing.Pace(args, s)
    for method in expand_methods(args.methods, args.records, tag, seq):
        for seed in seeds:
            path = spec.run_path(args.records, tag, seq, method, seed)
            if path.is_file():
                print(f"[leaderboard] {tag} {seq} {method} seed {seed}: recorded, skipped", flush=True)
                continue
            hp = hyperparameter(args, s, tag, seq, method)
            if hp is None:
                print(
                    f"[leaderboard] {method}: no selection record for {tag} (run `select` first, or pass "
                    "--lambda / --allow-default); skipped",
                    flush=True,
                )
                break
            what = f"{tag} {seq} {method} seed {seed}"
            if not pacing.fits_before_until(args, pace, path, seq, method, s["epochs"], what):
                continue
            out = Path(args.runs) / tag / seq / method / f"seed-{seed}"
            ns, lam = run_inputs(s, args, hp)
            summary = attempt(
                args,
                f"{method} seed {seed}",
                out,
                partial(run_one, ns, method, tasks, seed, out, Path(args.data_dir), lam),
            )
            if summary is None:
                continue
            record = make_record("run", summary, out, settings=s, tag=tag, seq=seq, method=method, seed=seed, hp=hp)
            save_record(path, record, args.commit)


def run_dir_record(run_dir: Path, s: dict, tag: str, seq: str) -> dict:
    """The record of a finished run made outside ``run`` (``nlora run`` or benchmarks/accuracy.py), after
    checking that it was run at this budget on this sequence; a mismatch is one NloraError naming the field."""
    import yaml

    from nlora.config import RunConfig
    from nlora.methods.options import option_specs

    cfg_path, summary_path = run_dir / "config.yaml", run_dir / "summary.json"
    if not cfg_path.is_file() or not summary_path.is_file():
        raise NloraError(f"{run_dir}: not a finished run (config.yaml and summary.json needed)")
    cfg = RunConfig.from_dict(yaml.safe_load(cfg_path.read_text("utf-8")))
    first = cfg.tasks[0]
    lora_r, lora_alpha = (s["lora_r"], s["lora_alpha"]) if s.get("lora_r") else (8, 32)
    lrs = {t.lr for t in cfg.tasks}
    # LR_KNOB methods choose their lr: any one lr for the whole run; the others train at the budget's
    lr_wanted = lrs if cfg.method in spec.LR_KNOB and len(lrs) == 1 else {s["lr"]}
    expected = {
        "task names": (cfg.task_names, spec.SEQUENCES[seq].split(",")),
        "model": (cfg.model, s["model"]),
        "max_train_per_task": (cfg.max_train_per_task, s["max_train"]),
        "max_test_per_task": (cfg.max_test_per_task, s["max_test"]),
        "epochs": ({t.epochs for t in cfg.tasks}, {float(s["epochs"])}),
        "batch_size": ({t.batch_size * t.grad_accum for t in cfg.tasks}, {s["batch_size"]}),
        "lr": (lrs, lr_wanted),
        "precision": (cfg.precision, s["precision"]),
        "lora r / alpha": ((cfg.lora.r, cfg.lora.alpha), (lora_r, lora_alpha)),
        "eval_scope": (cfg.eval_scope, "needed"),
        "unknown_labels": (cfg.unknown_labels, "drop"),
        "compat": (cfg.compat, "clean"),
    }
    for name, (got, want) in expected.items():
        if got != want:
            raise NloraError(f"{cfg_path}: {name} is {got}, budget {tag} needs {want}")
    if cfg.method not in REGISTRY:
        raise NloraError(f"{cfg_path}: method {cfg.method!r} is not registered")
    if cfg.method == "n-lora" and cfg.method_options.get("form", "paper") != s.get("nlora_form", "paper"):
        raise NloraError(f"{cfg_path}: n-lora form {cfg.method_options.get('form')}, budget {tag} needs paper")
    summary = json.loads(summary_path.read_text("utf-8"))
    if len(summary.get("per_task") or []) != len(cfg.tasks) or summary.get("aa") is None:
        raise NloraError(f"{summary_path}: the run has not finished every task")
    main_option = next((o for o in option_specs(REGISTRY[cfg.method].Options) if o.alias == "lambda"), None)
    hp = {"name": "lambda", "value": None, "source": "no coefficient"}
    if cfg.method in spec.LR_KNOB:
        (lr,) = lrs
        source = "the budget's lr" if lr == s["lr"] else f"set for the run {run_dir}"
        hp = {"name": "lr", "value": lr, "source": source + " (recorded from a run directory)"}
    elif main_option is not None:
        given = first.method_options.get(main_option.key, cfg.method_options.get(main_option.key))
        value = main_option.default if given is None else given  # newer configs store the resolved value
        source = "method default" if value == main_option.default else f"set for the run {run_dir}"
        hp = {"name": "lambda", "value": value, "source": source + " (recorded from a run directory)"}
    return make_record("run", summary, run_dir, settings=s, tag=tag, seq=seq, method=cfg.method, seed=cfg.seed, hp=hp)


def cmd_record(args) -> None:
    s, seq = spec.settings_of(args), args.sequence
    tag = spec.budget_tag(s)
    for run_dir in args.run_dirs:
        record = run_dir_record(Path(run_dir), s, tag, seq)
        # made by another process, perhaps another checkout: the recorder's commit would say nothing of it
        record.update(made_outside_runner=True, nlora_commit=args.run_commit, nlora_tree_dirty=None)
        path = spec.run_path(args.records, tag, seq, record["method"], record["seed"])
        if path.is_file() and not args.replace:
            print(f"[leaderboard] {path}: recorded already, kept (--replace to write it again)", flush=True)
            continue
        save_record(path, record, args.commit)


# --------------------------------------------------------------------------------------------- plan and table


def cmd_plan(args) -> None:
    s = spec.settings_of(args)
    entries = standings.plan_entries(args.records, s)
    print(f"plan: issue 18 at budget '{args.budget}' ({spec.budget_tag(s)}), records in {args.records}")
    pace = pacing.Pace(args, s)
    rates = pace.rates
    pending = 0.0
    best = standings.best_of(args.records, spec.budget_tag(s), "4task", spec.TEN_TASK_BEST)
    if len(best) < spec.TEN_TASK_BEST:  # the 4-task table does not rank five methods yet
        n = spec.TEN_TASK_BEST - len(best)
        runs = n * len(spec.PLAN_SEEDS["10task"])
        pending = runs * pace.seconds_left("10task", None, s["epochs"], None)
        print(
            f"(10task: {', '.join(spec.TEN_TASK_FIXED)} and the 4-task table's best five, of which {n} are not known "
            f"yet: up to {runs} more runs, ~{pending / 3600:.1f} h, fewer where they overlap)"
        )
    total_missing, total_s = 0, 0.0
    for group in dict.fromkeys(g for g, _ in entries):
        paths = [p for g, p in entries if g == group]
        missing = [p for p in paths if not p.is_file()]
        cost, progress = 0.0, {}
        for p in missing:
            rel = p.relative_to(args.records).parts
            seq = spec.SELECT_SEQUENCE if rel[1] == "selection" else rel[1]
            method = rel[3] if rel[1] == "selection" else rel[2]
            epochs = float(spec.EPOCHS_IN_TAG.search(rel[0]).group(1))
            progress[p] = pace.progress(p)  # read once: for the cost and for the listing below
            cost += pace.seconds_left(seq, method, epochs, progress[p])
        total_missing, total_s = total_missing + len(missing), total_s + cost
        print(
            f"\n{group}: {len(paths) - len(missing)} of {len(paths)} recorded, {len(missing)} missing "
            f"(~{cost / 3600:.1f} h)"
        )
        # started runs first: what the next session resumes
        order = [p for p in missing if progress[p]] + [p for p in missing if not progress[p]]
        for p in order if args.verbose else order[:8]:
            print(f"  missing {p.relative_to(args.records)}" + (f" ({progress[p][0]})" if progress[p] else ""))
        if len(missing) > 8 and not args.verbose:
            print(f"  ... and {len(missing) - 8} more (--verbose lists all)")
    here = " (measured here)"
    pace_text = (
        f"at the pace of this budget's records, as one thread spends it ({len(rates)} method(s) measured: "
        + ", ".join(
            f"{m} {a:.1f} s/step, {b:.2f} s/answer{here if m in pace.measured_here else ''}"
            for m, (a, b) in sorted(rates.items())
        )
        + "; the others at the median of these)"
        if rates
        else f"at {pacing.SEC_PER_STEP:g} s per step and {pacing.SEC_PER_TEST:g} s per test answer (no records at "
        "this budget yet)"
    ) + (
        f"; other machines' records x {pace.scale:g} for this one (--pace-scale), those{here} as they are"
        if pace.scale != 1.0
        else ""
    )
    print(
        f"\n{total_missing} of {len(entries)} records missing: about {total_s / 3600:.1f} h of runs one after "
        + (f"another (+ up to {pending / 3600:.1f} h for the best five on 10task) " if pending else "another ")
        + pace_text
        + "; two runs side by side take about half as long"
    )
    tag = spec.budget_tag(s)
    for seq, seeds in spec.TIE_BREAK_SEEDS.items():
        tied = standings.tied_with_best(args.records, tag, seq)
        todo = [(m, spec.run_path(args.records, tag, seq, m, seed)) for m in tied for seed in seeds]
        todo = [(m, p) for m, p in todo if not p.is_file()]
        if todo:
            cost = sum(pace.seconds_left(seq, m, s["epochs"], pace.progress(p)) for m, p in todo)
            print(
                f"Then, past the plan (the queue's last lines): {seq} seeds {','.join(map(str, seeds))} for "
                f"{tied[0]} and the methods within its seed spread ({', '.join(tied[1:])}): {len(todo)} run(s) "
                f"missing, ~{cost / 3600:.1f} h"
            )


def cmd_table(args) -> None:
    s = None if args.no_plan else spec.settings_of(args)
    text = table.build_table(args.records, Path(args.out), s, None if args.no_plan else Path(args.results))
    print(text)


# ------------------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """The command line: plan, select, run, record and table, with the flags each takes."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--budget", default="main", choices=sorted(spec.BUDGETS), help="a named budget (BUDGETS)")
    common.add_argument("--records", type=Path, default=spec.RECORDS)
    common.add_argument("--data-dir", default=str(SHARED))
    for flag, kind in (
        ("--model", str),
        ("--max-train", int),
        ("--max-test", int),
        ("--epochs", float),
        ("--batch-size", int),
        ("--lr", float),
        ("--precision", str),
        ("--lora-r", int),
        ("--lora-alpha", float),
    ):
        common.add_argument(flag, type=kind, help="overrides the budget's value (the budget tag changes with it)")
    common.add_argument("--nlora-form", choices=["paper", "reference"])
    running = argparse.ArgumentParser(add_help=False)
    running.add_argument("--runs", type=Path, default=spec.RUNS, help="run directories (not committed)")
    running.add_argument("--device", default="auto")
    running.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    running.add_argument("--save-every", type=int, default=10, help="step checkpoints, so a stopped run loses little")
    running.add_argument("--commit", action="store_true", help="git-commit each record as it is written")
    running.add_argument(
        "--methods",
        default="all",
        help="comma list, 'all', 'best5' (4-task table's best five), or 'tied' (the sequence's best and the "
        "methods within its seed spread)",
    )
    running.add_argument(
        "--until",
        type=pacing.until_time,
        help="HH:MM or an ISO date and time: start no run expected to end after it (estimated from this budget's "
        "CPU records and --threads, with a 20%% margin; with --device cuda from its GPU records' wall time, and "
        "while it has none a run starts); the ones that fit still run",
    )

    pace_help = (
        "this CPU's seconds per step over those of the machines that made the records (default 1): a slower "
        "machine's factor keeps --until and plan's hours true (time a run's first steps, e.g. with `nlora status`, "
        "against the s/step plan lists); a method's records made on this machine count as they are, unscaled"
    )
    running.add_argument("--pace-scale", type=pacing.pace_scale, default=1.0, help=pace_help)

    pl = sub.add_parser("plan", parents=[common], help="records present and missing for issue 18's plan")
    pl.add_argument("--pace-scale", type=pacing.pace_scale, default=1.0, help=pace_help)
    pl.add_argument("--verbose", action="store_true")
    pl.add_argument("--runs", type=Path, default=spec.RUNS, help="run directories, for how far unrecorded runs got")
    se = sub.add_parser(
        "select", parents=[common, running], help="choose each method's lambda (lr: LR_KNOB methods) on validation"
    )
    se.add_argument("--sequence", default=spec.SELECT_SEQUENCE, choices=sorted(spec.SEQUENCES))
    ru = sub.add_parser("run", parents=[common, running], help="run what has no record yet")
    ru.add_argument("--sequence", required=True, choices=sorted(spec.SEQUENCES))
    ru.add_argument("--seeds", default="1,2,3")
    ru.add_argument(
        "--lambda",
        dest="fixed_lambda",
        action="append",
        default=[],
        metavar="METHOD=VALUE",
        help="the method's knob without a selection: its lambda, or its lr for " + ", ".join(sorted(spec.LR_KNOB)),
    )
    ru.add_argument("--allow-default", action="store_true", help="without a selection record, the method default")
    rec = sub.add_parser("record", parents=[common], help="record finished run directories made elsewhere")
    rec.add_argument("run_dirs", nargs="+", help="finished `nlora run` directories at this budget")
    rec.add_argument("--sequence", required=True, choices=sorted(spec.SEQUENCES))
    rec.add_argument("--commit", action="store_true", help="git-commit each record as it is written")
    rec.add_argument("--replace", action="store_true", help="write a record that exists again")
    rec.add_argument("--run-commit", help="the nlora commit the runs were made with (recorded; default: unknown)")
    ta = sub.add_parser("table", parents=[common], help="the leaderboard markdown from the records")
    ta.add_argument("--out", default=str(spec.ROOT / "docs" / "leaderboard.md"))
    ta.add_argument("--no-plan", action="store_true", help="only what is recorded (no missing rows from the plan)")
    ta.add_argument(
        "--results",
        default=str(spec.ROOT / "docs" / "results.md"),
        help="the document whose marked block gets the main budget's tables (left alone without the markers)",
    )
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if getattr(args, "fixed_lambda", None) is not None:
        args.fixed_lambda = {m: float(v) for m, v in (x.split("=", 1) for x in args.fixed_lambda)}
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    args.failures = []
    commands = {"plan": cmd_plan, "select": cmd_select, "run": cmd_run, "record": cmd_record, "table": cmd_table}
    try:
        commands[args.cmd](args)
    except NloraError as e:
        print(f"[leaderboard] error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.failures:
        raise SystemExit(f"[leaderboard] {len(args.failures)} run(s) failed:\n  " + "\n  ".join(args.failures))


if __name__ == "__main__":
    main()
