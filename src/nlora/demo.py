"""``nlora demo``: watch continual learning happen on a laptop CPU, offline, in a few minutes.

The same model learns three generated tasks in turn twice: with seq-lora (one LoRA trained on and on: it
forgets) and with n-lora (a fresh sparse LoRA per task). Both runs go through the ordinary recipe, so their
run directories, analysis and report are the real thing.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

from . import rundir
from .config import resolve
from .console import log
from .demo_tasks import DEMO_TASKS, write_demo_tasks
from .errors import NloraError
from .models import EMBEDDED, embedded_model_path, load_model
from .recipe import run

# Settings chosen so that every task is learnt alone (100% on its own test set with either method) and the
# later tasks' training is long enough to overwrite the earlier ones without protection.
DEMO_METHODS = {"seq-lora": None, "n-lora": 2e-4}
DEMO_SETTINGS = dict(lr=3e-3, epochs=2.0, batch_size=8, max_target_length=5, eval_batch_size=40, precision="bf16")
DEMO_SIZES = dict(train=160, test=40)


def _prepare(out: Path, overwrite: bool) -> None:
    """Clear an earlier demo's outputs (only what its manifest names) and record this one's, so --overwrite
    never removes a user's files, nor anything from a folder the demo did not make."""
    rundir.check_path_usable(out)
    if not rundir.is_empty(out):
        if rundir.nlora_outputs(out, rundir.DEMO_MANIFEST) is None:
            raise NloraError(
                f"output directory {out} is not empty and holds no nlora demo; nlora never writes into "
                "or deletes from a folder it did not make: choose another --output-dir"
            )
        if not overwrite:
            raise NloraError(
                f"output directory {out} holds an earlier demo; choose another --output-dir or pass --overwrite"
            )
        rundir.clear(out, rundir.DEMO_MANIFEST)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NloraError(f"cannot create output directory {out}: {e.strerror or e}") from None
    rundir.record(out, "data", "report", *DEMO_METHODS, manifest=rundir.DEMO_MANIFEST)


def run_demo(
    output_dir: str = "runs/demo",
    model: str = "smollm2",
    device: str = "cpu",
    seed: int = 42,
    overwrite: bool = False,
    sizes: dict | None = None,
) -> dict[str, dict]:
    """Both runs, their analysis and a report; returns method -> summary."""
    sizes = sizes or DEMO_SIZES
    if model in EMBEDDED:
        embedded_model_path(model)  # a missing extra is one clear line before anything is written
    load_model(model)  # a model that does not load is refused before an earlier demo is cleared (then cached)
    out = Path(output_dir)
    names = list(DEMO_TASKS)
    log(
        f"demo: {model} learns {len(names)} generated tasks in turn ({' -> '.join(names)}; {sizes['train']} "
        f"training examples each, 2 epochs), once with seq-lora and once with n-lora, evaluating every seen task "
        f"after each; about 6 minutes on 2 CPU cores with bf16 instructions, about 20 without. Outputs: {out}/"
    )
    with ExitStack() as held:  # one demo at a time in a folder: the second is refused, not mixed in
        rundir.check_path_usable(out)
        existed = out.is_dir()
        if existed:
            held.callback(rundir.DirectoryLock(out).acquire().release)
        _prepare(out, overwrite)
        if not existed:
            held.callback(rundir.DirectoryLock(out).acquire().release)
        return _both_runs(out, model, device, seed, sizes, names)


def _both_runs(out: Path, model: str, device: str, seed: int, sizes: dict, names: list[str]) -> dict[str, dict]:
    from .report import analyze, build_report

    data = write_demo_tasks(out / "data", sizes["train"], sizes["test"], seed=0)
    summaries = {}
    for method, lam in DEMO_METHODS.items():
        overrides = dict(
            model=model,
            data_dir=str(data),
            output_dir=str(out / method),
            task_names=names,
            method=method,
            seed=seed,
            device=device,
            instructions=str(data / "instructions.json"),
            **DEMO_SETTINGS,
        )
        if lam is not None:
            overrides["lambda"] = lam
        summaries[method] = run(resolve(preset=None, config_file=None, overrides=overrides), overwrite=True)
    for method in DEMO_METHODS:
        analyze(out / method)
    build_report([out / m for m in DEMO_METHODS], out / "report")
    return summaries


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def side_by_side(summaries: dict[str, dict]) -> str:
    """The accuracy matrices of the runs next to each other, with AA and BWT under each."""
    methods = list(summaries)
    tasks = summaries[methods[0]]["tasks"]
    width = max(9, *(len(t) for t in tasks)) + 1
    block = width * len(tasks)
    lines = [
        f"{'exact match (%)':22s}" + " | ".join(f"{m:{block}s}" for m in methods),
        f"{'after task':22s}" + " | ".join("".join(f"{t:>{width}s}" for t in tasks) for _ in methods),
    ]
    for i, task in enumerate(tasks):
        row = " | ".join("".join(f"{_cell(v):>{width}s}" for v in summaries[m]["accuracy_matrix"][i]) for m in methods)
        lines.append(f"{f'{i + 1} {task}':22s}" + row)
    for key in ("aa", "bwt"):
        vals = [summaries[m][key] for m in methods]
        lines.append(f"{key.upper():22s}" + " | ".join(f"{'-' if v is None else f'{v:.2f}':>{block}s}" for v in vals))
    return "\n".join(lines)


def main(output_dir: str, model: str, device: str, seed: int, overwrite: bool) -> None:
    start = time.perf_counter()
    summaries = run_demo(output_dir, model, device, seed, overwrite)
    print()
    print(side_by_side(summaries))
    print()
    seq, nl = summaries["seq-lora"]["bwt"], summaries["n-lora"]["bwt"]
    verdict = (
        ("n-lora forgot less" if nl > seq else "n-lora did not forget less this time") if None not in (seq, nl) else ""
    )
    print(
        f"BWT (how much earlier tasks dropped by the end; 0 = no forgetting): seq-lora {seq:.2f}, n-lora {nl:.2f}"
        f" -> {verdict}"
    )
    out = Path(output_dir)
    print(f"report with plots (accuracy heatmaps, collision rate, nuclear norms): {out / 'report' / 'report.md'}")
    print(f"run directories (adapters, predictions, summary.json): {out / 'seq-lora'}, {out / 'n-lora'}")
    print(f"total {time.perf_counter() - start:.0f} s. Next: the real benchmark, see README 'Run a paper experiment'.")
