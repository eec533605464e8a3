"""Run configuration: defaults <- preset YAML <- user YAML <- command-line flags, resolved once."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
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
    lam: float | None = None  # the method's main coefficient (N-LoRA lambda, O-LoRA lambda1)
    lam2: float | None = None  # O-LoRA lambda2
    global_batch: int | None = None  # set when the run's global_batch derived batch_size and grad_accum


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
    log_every: int = 1  # optimizer steps per line of tasks/NN-<task>/train_log.jsonl (and per tracker point)
    report_to: list[str] = field(default_factory=list)  # Accelerate trackers: tensorboard, wandb, ... (none: [])
    trust_remote_code: bool = False  # run Python code shipped in a model folder (its config's auto_map)
    allow_pickle_weights: bool = False  # load pytorch_model.bin weights (weights_only) where no safetensors exist
    compat: str = "clean"  # reference: the N-LoRA release's truncation and token quirks (docs/presets.md)
    max_grad_norm: float | None = 1.0  # gradient-norm clipping, as the release; 0 or None: none
    # examples per optimizer step whatever the number of processes: each task's batch_size is then the
    # per-process micro-batch cap and grad_accum is derived (None: batch_size x grad_accum as given)
    global_batch: int | None = None
    preset: str | None = None
    description: str | None = None
    lora: LoraSettings = field(default_factory=LoraSettings)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
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


MAX_CONFIG_BYTES = 1 << 20  # a run config is a few KB; anything near this is not one
MAX_CONFIG_NODES = 100_000  # bounds what YAML aliases can multiply (an "alias bomb" expands exponentially)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise NloraError(f"config file not found: {path}")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise NloraError(f"{path}: {path.stat().st_size} bytes is too large for a config file")
        data = yaml.safe_load(path.read_text("utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise NloraError(f"{path}: malformed YAML{where}") from None
    except UnicodeDecodeError as e:
        raise NloraError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise NloraError(f"{path}: nested too deeply to be a config file") from None
    except OSError as e:
        raise NloraError(f"{path}: cannot read ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise NloraError(f"{path}: expected a mapping of settings at top level")
    _check_size(data, path)
    return data


def _check_size(data, path: Path) -> None:
    """Refuse structures whose expansion exceeds MAX_CONFIG_NODES (shared aliases are counted each time they
    are reached, as every later step would walk them), without walking more than that many nodes."""
    seen, stack = 0, [data]
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_CONFIG_NODES:
            raise NloraError(f"{path}: expands to over {MAX_CONFIG_NODES} values (YAML aliases?); not a config file")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _check_keys(data: dict, allowed: set[str], where: str) -> None:
    bad = sorted(set(data) - allowed)
    if bad:
        raise NloraError(f"{where}: unknown setting(s) {', '.join(bad)} (allowed: {', '.join(sorted(allowed))})")


TASK_TYPES = {
    "lr": float,
    "epochs": float,
    "batch_size": int,
    "grad_accum": int,
    "lambda": float | None,
    "lambda2": float | None,
}


def _describe(hint) -> str:
    if isinstance(hint, types.UnionType):
        return " or ".join(_describe(a) for a in hint.__args__ if a is not type(None)) + " (or null)"
    return {
        bool: "true or false",
        int: "a whole number",
        float: "a number",
        str: "text",
        list[str]: "a list of names",
    }.get(hint, str(hint))


def checked_value(value, hint, key: str, where: str):
    """``value`` checked against the field's type ``hint``, or one NloraError naming where, field and value.

    Strict on purpose: YAML's "false" (a string) is not false, "0" is not a number, 16.5 is not a whole
    number. Floats accept whole numbers and numeric text (YAML 1.1 reads 1e-3 as text) but not NaN or
    infinity; a list of names accepts "a,b" text."""
    if isinstance(hint, types.UnionType):
        if value is None and type(None) in hint.__args__:
            return None
        hint = next(a for a in hint.__args__ if a is not type(None))
    ok = True
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                ok = False
        ok = ok and isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise NloraError(f"{where}: setting '{key}' must be a finite number, got {value!r}")
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    elif hint == list[str]:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        ok = isinstance(value, list) and all(isinstance(v, str) and v for v in value)
    if not ok:
        raise NloraError(f"{where}: setting '{key}' must be {_describe(hint)}, got {value!r}")
    return value


def _check_types(layer: dict, where: str) -> dict:
    """Every value of one layer (preset, config file or command line) checked against its field's type."""
    hints = typing.get_type_hints(RunConfig)
    out = dict(layer)
    for key, value in layer.items():
        if key in TASK_TYPES:
            out[key] = checked_value(value, TASK_TYPES[key], key, where)
        elif key == "lora":
            if not isinstance(value, dict):
                raise NloraError(
                    f"{where}: setting 'lora' must be a mapping of r, alpha, dropout, target_modules; got {value!r}"
                )
            lora_hints = typing.get_type_hints(LoraSettings)
            out["lora"] = {
                k: checked_value(v, lora_hints[k], f"lora.{k}", where) if k in lora_hints else v
                for k, v in value.items()
            }
        elif key == "tasks":
            if not isinstance(value, list):
                raise NloraError(f"{where}: setting 'tasks' must be a list of task names or entries, got {value!r}")
        elif key in hints and key != "task_names":
            out[key] = checked_value(value, hints[key], key, where)
    return out


def _merge(base: dict, layer: dict, where: str) -> dict:
    _check_keys(layer, TOP_KEYS | set(TASK_KEYS) | {"tasks", "lora"}, where)
    layer = _check_types(layer, where)
    out = {**base, **{k: v for k, v in layer.items() if k not in ("lora",)}}
    if "lora" in layer:
        _check_keys(layer["lora"], {f.name for f in dataclasses.fields(LoraSettings)}, f"{where}: lora")
        out["lora"] = {**base.get("lora", {}), **layer["lora"]}
    return out


def _task_entries(tasks: list, where: str) -> list[dict]:
    entries = []
    for t in tasks:
        if not isinstance(t, (str, dict)):
            raise NloraError(f"{where}: a task entry must be a name or a mapping with 'name', got {t!r}")
        entry = {"name": t} if isinstance(t, str) else dict(t)
        if not isinstance(entry.get("name"), str) or not entry["name"]:
            raise NloraError(f"{where}: every task entry needs a 'name' (text), got {t!r}")
        _check_keys(entry, {"name", *TASK_KEYS}, f"{where}: task {entry['name']}")
        entry = {
            "name": entry["name"],
            **_check_types({k: v for k, v in entry.items() if k != "name"}, f"{where}: task {entry['name']}"),
        }
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
    task_flags = _check_types({k: overrides.pop(k) for k in TASK_KEYS if k in overrides}, "command line")
    lora_flags = {k: overrides.pop(k) for k in ("r", "alpha", "dropout", "target_modules") if k in overrides}
    if lora_flags:
        lora_flags = _check_types({"lora": lora_flags}, "command line")["lora"]
    new_order = overrides.pop("task_names", None)
    if ({"batch_size", "grad_accum"} & set(task_flags)) and "global_batch" not in overrides:
        overrides["global_batch"] = None  # explicit batch flags replace a preset's global batch
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
        tasks.append(
            TaskSettings(
                name=name,
                lr=_number(s["lr"], "lr", float),
                epochs=_number(s["epochs"], "epochs", float),
                batch_size=_number(s["batch_size"], "batch_size", int),
                grad_accum=_number(s["grad_accum"], "grad_accum", int),
                lam=None if s["lambda"] is None else _number(s["lambda"], "lambda", float),
                lam2=None if s["lambda2"] is None else _number(s["lambda2"], "lambda2", float),
            )
        )
    for key in ("model", "data_dir", "output_dir"):
        if not merged.get(key):
            raise NloraError(f"missing required setting '{key}' (flag --{key.replace('_', '-')})")
    top = {k: merged[k] for k in TOP_KEYS if k in merged}
    cfg = RunConfig(tasks=tasks, lora=LoraSettings(**merged["lora"]), **top)
    _validate(cfg)
    return cfg


# Allowed ranges, in one place: (lowest, highest, lowest excluded, highest excluded); None: unbounded.
# Types are checked by checked_value, before any of these.
LIMITS = {
    "seed": (0, 2**32 - 1, False, False),  # what torch and numpy seeding accept
    "max_train_per_task": (1, None, False, False),
    "max_test_per_task": (1, None, False, False),
    "max_source_length": (8, None, False, False),  # room for the task's name and "Answer:" at least
    "max_target_length": (1, None, False, False),
    "eval_batch_size": (1, None, False, False),
    "save_every": (0, None, False, False),
    "max_grad_norm": (0, None, False, False),
    "global_batch": (1, None, False, False),
}
TASK_LIMITS = {
    "lr": (0, None, True, False),
    "epochs": (0, None, True, False),
    "batch_size": (1, None, False, False),
    "grad_accum": (1, None, False, False),
    "lam": (0, None, False, False),
    "lam2": (0, None, False, False),
}
LORA_LIMITS = {"r": (1, None, False, False), "alpha": (0, None, True, False), "dropout": (0, 1, False, True)}
CHOICES = {
    "nlora_form": ("paper", "reference"),
    "precision": ("auto", "fp32", "bf16"),
    "unknown_labels": ("error", "drop", "keep"),
    "eval_mode": ("generate", "score"),
    "eval_scope": ("seen", "needed"),
    "compat": ("clean", "reference"),
}


def _check_limit(value, limit: tuple, name: str) -> None:
    if value is None:
        return
    low, high, low_open, high_open = limit
    bad = isinstance(value, float) and not math.isfinite(value)
    bad = bad or value < low or (low_open and value == low)
    bad = bad or (high is not None and (value > high or (high_open and value == high)))
    if bad:
        bound = f"{'>' if low_open else '>='} {low}"
        if high is not None:
            bound += f" and {'<' if high_open else '<='} {high}"
        raise NloraError(f"{name} must be {bound}, got {value!r}")


def _validate(cfg: RunConfig) -> None:
    for key, limit in LIMITS.items():
        _check_limit(getattr(cfg, key), limit, key)
    for t in cfg.tasks:
        for key, limit in TASK_LIMITS.items():
            _check_limit(
                getattr(t, key), limit, f"{'lambda' + key[3:] if key.startswith('lam') else key} (task {t.name})"
            )
    for key, limit in LORA_LIMITS.items():
        _check_limit(getattr(cfg.lora, key), limit, f"lora {key}")
    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise NloraError(f"{key} must be {', '.join(allowed[:-1])} or {allowed[-1]}, got {getattr(cfg, key)!r}")
    if cfg.device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", str(cfg.device)):
        raise NloraError(f"device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    if cfg.eval_scope == "needed" and cfg.full_matrix:
        raise NloraError("eval_scope needed and full_matrix contradict each other: pick one")
    if cfg.global_batch and any(t.grad_accum != 1 for t in cfg.tasks if t.global_batch is None):
        raise NloraError("global_batch derives every task's grad_accum: set one or the other, not both")
    if not isinstance(cfg.log_every, int) or cfg.log_every < 1:
        raise NloraError(f"log_every must be an integer >= 1, got {cfg.log_every!r}")
    if isinstance(cfg.report_to, str) or cfg.report_to is None:  # a config file may say `report_to: tensorboard`
        cfg.report_to = [t.strip() for t in (cfg.report_to or "").split(",") if t.strip()]
    if not isinstance(cfg.report_to, list):
        raise NloraError(f"report_to must be a list of tracker names, got {cfg.report_to!r}")
    cfg.report_to = [str(t) for t in cfg.report_to if t != "none"]
    if cfg.report_to:
        from .trainlog import check_report_to

        check_report_to(cfg.report_to)


def save_config(cfg: RunConfig, path: Path) -> None:
    from .io import write_text

    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
