"""Run configuration: defaults <- preset YAML <- user YAML <- command-line flags, resolved once."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import NloraError

# Per-task knobs: a top-level value is the default for every task, a task entry overrides it,
# and a command-line flag overrides both.
TASK_KEYS = ("lr", "epochs", "batch_size", "grad_accum", "lambda", "lambda2")
TASK_DEFAULTS = {"lr": 1e-3, "epochs": 1.0, "batch_size": 8, "grad_accum": 1, "lambda": None, "lambda2": None}


@dataclass
class LoraSettings:
    r: int = 8
    alpha: float = 32
    dropout: float = 0.1
    target_modules: list[str] | None = None  # None: the architecture's query/value projections


@dataclass
class TaskSettings:
    name: str
    lr: float
    epochs: float
    batch_size: int
    grad_accum: int
    lam: float | None = None   # the method's main coefficient (N-LoRA lambda, O-LoRA lambda1)
    lam2: float | None = None  # O-LoRA lambda2


@dataclass
class RunConfig:
    model: str
    data_dir: str
    output_dir: str
    tasks: list[TaskSettings]
    method: str = "n-lora"
    nlora_form: str = "paper"
    seed: int = 42
    device: str = "auto"
    precision: str = "auto"
    max_train_per_task: int | None = None
    max_test_per_task: int | None = None
    max_source_length: int = 512
    max_target_length: int = 50
    eval_batch_size: int | None = None  # None: 128 on a GPU, 32 on a CPU; halved on out-of-memory
    eval_mode: str = "generate"  # generate (the reference's) or score (likeliest label)
    instructions: str | None = None
    unknown_labels: str = "error"
    full_matrix: bool = False  # also evaluate not-yet-seen tasks and the starting model (for FWT)
    # seen: every seen task after each task (the reference's matrix); needed: only the task just trained,
    # and every task after the last -- all that AA and BWT use, O(n) evaluations instead of O(n^2)
    eval_scope: str = "seen"
    compile: bool = False  # torch.compile the training forward (dynamic shapes); pays off on GPUs
    fold_adapters: bool = True  # fold finished tasks' adapters into fp32 base weights (flat step cost)
    save_every: int = 100  # optimizer steps between step checkpoints (0: none); resuming needs no more
    preset: str | None = None
    description: str | None = None
    lora: LoraSettings = field(default_factory=LoraSettings)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        """Inverse of to_dict (a run directory's config.yaml)."""
        return cls(**{**d, "tasks": [TaskSettings(**t) for t in d["tasks"]], "lora": LoraSettings(**d["lora"])})


TOP_KEYS = {f.name for f in dataclasses.fields(RunConfig)} - {"tasks", "lora"}


def preset_names() -> list[str]:
    root = resources.files("nlora.presets")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict:
    if name not in preset_names():
        raise NloraError(f"unknown preset '{name}' (available: {', '.join(preset_names())})")
    text = resources.files("nlora.presets").joinpath(f"{name}.yaml").read_text("utf-8")
    data = yaml.safe_load(text)
    data["preset"] = name
    return data


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise NloraError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text("utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise NloraError(f"{path}: malformed YAML{where}") from None
    if not isinstance(data, dict):
        raise NloraError(f"{path}: expected a mapping of settings at top level")
    return data


def _check_keys(data: dict, allowed: set[str], where: str) -> None:
    bad = sorted(set(data) - allowed)
    if bad:
        raise NloraError(f"{where}: unknown setting(s) {', '.join(bad)} (allowed: {', '.join(sorted(allowed))})")


def _merge(base: dict, layer: dict, where: str) -> dict:
    _check_keys(layer, TOP_KEYS | set(TASK_KEYS) | {"tasks", "lora"}, where)
    out = {**base, **{k: v for k, v in layer.items() if k not in ("lora",)}}
    if "lora" in layer:
        _check_keys(layer["lora"], {f.name for f in dataclasses.fields(LoraSettings)}, f"{where}: lora")
        out["lora"] = {**base.get("lora", {}), **layer["lora"]}
    return out


def _task_entries(tasks: list, where: str) -> list[dict]:
    entries = []
    for t in tasks:
        entry = {"name": t} if isinstance(t, str) else dict(t)
        if "name" not in entry:
            raise NloraError(f"{where}: every task entry needs a 'name'")
        _check_keys(entry, {"name", *TASK_KEYS}, f"{where}: task {entry['name']}")
        entries.append(entry)
    return entries


def _number(value, key: str, cast):
    try:
        return cast(value)
    except (TypeError, ValueError):
        raise NloraError(f"setting '{key}' must be a number, got {value!r}") from None


def resolve(preset: str | None = None, config_file: str | None = None, overrides: dict | None = None) -> RunConfig:
    """Merge the layers and check the result; raises NloraError naming the bad field."""
    merged: dict = {"lora": {}}
    if preset:
        merged = _merge(merged, load_preset(preset), f"preset {preset}")
    if config_file:
        merged = _merge(merged, load_yaml(config_file), str(config_file))
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    task_flags = {k: overrides.pop(k) for k in TASK_KEYS if k in overrides}
    lora_flags = {k: overrides.pop(k) for k in ("r", "alpha", "dropout", "target_modules") if k in overrides}
    new_order = overrides.pop("task_names", None)
    merged = _merge(merged, overrides, "command line")
    if lora_flags:
        merged["lora"] = {**merged["lora"], **lora_flags}

    entries = _task_entries(merged.get("tasks") or [], "config")
    known = {e["name"]: e for e in entries}
    order = new_order if new_order is not None else [e["name"] for e in entries]
    if not order:
        raise NloraError("no tasks given: use --tasks a,b,c, a preset, or a config file with 'tasks'")
    if len(set(order)) != len(order):
        raise NloraError(f"task list has duplicates: {', '.join(order)}")
    defaults = {k: merged.get(k, TASK_DEFAULTS[k]) for k in TASK_KEYS}
    tasks = []
    for name in order:
        s = {**defaults, **known.get(name, {}), **task_flags}
        tasks.append(TaskSettings(
            name=name, lr=_number(s["lr"], "lr", float), epochs=_number(s["epochs"], "epochs", float),
            batch_size=_number(s["batch_size"], "batch_size", int), grad_accum=_number(s["grad_accum"], "grad_accum", int),
            lam=None if s["lambda"] is None else _number(s["lambda"], "lambda", float),
            lam2=None if s["lambda2"] is None else _number(s["lambda2"], "lambda2", float),
        ))
    for key in ("model", "data_dir", "output_dir"):
        if not merged.get(key):
            raise NloraError(f"missing required setting '{key}' (flag --{key.replace('_', '-')})")
    top = {k: merged[k] for k in TOP_KEYS if k in merged}
    cfg = RunConfig(tasks=tasks, lora=LoraSettings(**merged["lora"]), **top)
    _validate(cfg)
    return cfg


def _validate(cfg: RunConfig) -> None:
    for t in cfg.tasks:
        if t.lr <= 0 or t.epochs <= 0 or t.batch_size < 1 or t.grad_accum < 1:
            raise NloraError(f"task {t.name}: lr and epochs must be > 0, batch_size and grad_accum >= 1")
    if cfg.nlora_form not in ("paper", "reference"):
        raise NloraError(f"nlora_form must be 'paper' or 'reference', got {cfg.nlora_form!r}")
    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise NloraError(f"precision must be auto, fp32 or bf16, got {cfg.precision!r}")
    if cfg.device not in ("auto", "cpu", "cuda") and not str(cfg.device).startswith("cuda:"):
        raise NloraError(f"device must be auto, cpu or cuda, got {cfg.device!r}")
    for key in ("max_train_per_task", "max_test_per_task"):
        v = getattr(cfg, key)
        if v is not None and int(v) < 1:
            raise NloraError(f"{key} must be >= 1, got {v}")
    if cfg.unknown_labels not in ("error", "drop", "keep"):
        raise NloraError(f"unknown_labels must be error, drop or keep, got {cfg.unknown_labels!r}")
    if cfg.eval_batch_size is not None and cfg.eval_batch_size < 1:
        raise NloraError(f"eval_batch_size must be >= 1, got {cfg.eval_batch_size}")
    if cfg.eval_mode not in ("generate", "score"):
        raise NloraError(f"eval_mode must be generate or score, got {cfg.eval_mode!r}")
    if cfg.eval_scope not in ("seen", "needed"):
        raise NloraError(f"eval_scope must be seen or needed, got {cfg.eval_scope!r}")
    if cfg.eval_scope == "needed" and cfg.full_matrix:
        raise NloraError("eval_scope needed and full_matrix contradict each other: pick one")
    if cfg.save_every < 0:
        raise NloraError(f"save_every must be >= 0 (0: no step checkpoints), got {cfg.save_every}")
    if cfg.lora.r < 1:
        raise NloraError(f"lora rank must be >= 1, got {cfg.lora.r}")


def save_config(cfg: RunConfig, path: Path) -> None:
    from .io import write_text

    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
