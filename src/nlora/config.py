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


def setting(default: Any = dataclasses.MISSING, help: str = "", **cli) -> Any:
    """A settings field with what `nlora run`'s flag is made from (cli.py builds the flags from these).

    ``cli`` keys: ``flag`` (spelling, default --field-name), ``dest`` (the override key, default the field name),
    ``choices``, ``default_help`` (what the default means, where the value alone says too little), ``negate``
    (a boolean flag that sets False, e.g. --no-fold), ``hidden`` (no flag)."""
    factory = cli.pop("factory", None)
    meta = {"help": help, **cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class LoraSettings:
    r: int = setting(8, "LoRA rank", flag="--lora-r")
    alpha: float = setting(32, "LoRA alpha", flag="--lora-alpha")
    dropout: float = setting(0.1, "LoRA dropout", flag="--lora-dropout")
    target_modules: list[str] | None = setting(
        None, "modules to adapt, comma-separated", default_help="the architecture's query/value projections"
    )


@dataclass
class TaskSettings:
    name: str = setting(hidden=True)
    lr: float = setting(1e-3, "learning rate for every task")
    epochs: float = setting(1.0, "epochs for every task")
    batch_size: int = setting(8, "training batch size for every task")
    grad_accum: int = setting(1, "gradient accumulation steps for every task")
    # the task's values of its method's per-task options ({option key: value}, e.g. {"lambda": 0.4})
    method_options: dict[str, Any] = setting(factory=dict, hidden=True)
    # set when the run's global_batch derived batch_size and grad_accum
    global_batch: int | None = setting(None, hidden=True)


@dataclass
class RunConfig:
    model: str = setting(help="HF model folder, hub name, or a .gguf file")
    data_dir: str = setting(help="CL_Benchmark folder (<Category>/<dataset>/{train,test}.json, labels.json)")
    output_dir: str = setting(help="run directory to create")
    tasks: list[TaskSettings] = setting(
        flag="--tasks", dest="task_names", help="task order as dataset names, e.g. agnews,amazon"
    )
    method: str = setting("n-lora", "continual method (see `nlora methods`)")
    # the method's run-level options ({option key: value}; per-task ones are in each task's method_options)
    method_options: dict[str, Any] = setting(factory=dict, hidden=True)
    seed: int = setting(42, "random seed")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    precision: str = setting("auto", "auto: bf16 autocast on GPU, fp32 on CPU", choices=("auto", "fp32", "bf16"))
    max_train_per_task: int | None = setting(None, "cap on training examples per task (seeded sample)")
    max_test_per_task: int | None = setting(None, "cap on test examples per task (seeded sample)")
    max_source_length: int = setting(512, "prompt token limit")
    max_target_length: int = setting(50, "answer / new-token limit")
    eval_batch_size: int | None = setting(
        None, "evaluation batch size, halved on out-of-memory", default_help="128 on a GPU, 32 on a CPU"
    )
    eval_mode: str = setting(
        "generate",
        "generate: the reference's greedy decoding; score: the likeliest label",
        choices=("generate", "score"),
    )
    instructions: str | None = setting(None, "instruction JSON overriding the built-in one")
    unknown_labels: str = setting(
        "error",
        "examples whose label is not in labels.json: error, drop, or keep (reference)",
        choices=("error", "drop", "keep"),
    )
    full_matrix: bool = setting(
        False, "also evaluate not-yet-seen tasks and the starting model, so FWT can be computed"
    )
    eval_scope: str = setting(
        "seen",
        "seen: every seen task after each task (the reference's matrix); needed: only the task just trained, and "
        "all tasks after the last -- what AA and BWT use, O(n) evaluations instead of O(n^2)",
        choices=("seen", "needed"),
    )
    compile: bool = setting(False, "torch.compile the training forward pass (compiles once per task; pays off on GPUs)")
    fold_adapters: bool = setting(
        True,
        "keep earlier tasks' adapters as separate LoRA branches instead of folding them into fp32 base weights "
        "(folded, steps do not slow down as tasks accumulate)",
        flag="--no-fold",
        negate=True,
    )
    save_every: int = setting(100, "optimizer steps between step checkpoints (0: none); resuming needs no more")
    log_every: int = setting(1, "optimizer steps per line of each task's train_log.jsonl and per tracker point")
    report_to: list[str] = setting(
        factory=list,
        help="experiment trackers through Accelerate, comma-separated: tensorboard (pip install "
        "'nlora[tensorboard]'), wandb (WANDB_MODE=offline: no network), mlflow, ... or none",
    )
    trust_remote_code: bool = setting(
        False,
        "let a model folder whose config.json has auto_map run its own Python code (otherwise refused, and an "
        "architecture transformers knows uses transformers' own code)",
    )
    allow_pickle_weights: bool = setting(
        False,
        "load a model whose weights exist only as pytorch_model.bin (a pickle, loaded with torch's weights_only "
        "loader; otherwise refused: safetensors only)",
    )
    compat: str = setting(
        "clean",
        "clean: head+tail truncation, exact answer masks; reference (every preset): the N-LoRA release's "
        "truncation and token handling (docs/presets.md)",
        choices=("clean", "reference"),
    )
    max_grad_norm: float | None = setting(1.0, "clip the gradient norm at this, as the release (0: no clipping)")
    global_batch: int | None = setting(
        None,
        "examples per optimizer step whatever the number of processes: each task's batch_size is then the "
        "per-process micro-batch cap and grad_accum is derived",
    )
    preset: str | None = setting(None, hidden=True)  # --preset, beside --config (cli.py)
    description: str | None = setting(None, hidden=True)
    lora: LoraSettings = setting(factory=LoraSettings, hidden=True)  # flags from LoraSettings' own fields

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Inverse of to_dict (a run directory's config.yaml); one written before methods had options
        (top-level ``nlora_form``, per-task ``lam`` / ``lam2``) is converted (ValueError if it cannot be)."""
        d = _upgrade_saved(d)
        tasks = [TaskSettings(**t) for t in d["tasks"]]
        return cls(**{**d, "tasks": tasks, "lora": LoraSettings(**d["lora"])})


def _upgrade_saved(d: dict[str, Any]) -> dict[str, Any]:
    """A run directory's config.yaml of an earlier version in today's form, as resolve would have made it:
    ``nlora_form`` becomes n-lora's option ``form``, each task's ``lam`` / ``lam2`` the options ``--lambda`` /
    ``--lambda2`` set (None: the option's default), as the run used them."""
    tasks = d["tasks"]
    if "method_options" in d and "nlora_form" not in d and not any("lam" in t or "lam2" in t for t in tasks):
        return d
    from .methods import REGISTRY
    from .methods.options import option_specs

    name = d.get("method", "n-lora")
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}")
    specs = option_specs(REGISTRY[name].Options)
    by_alias = {s.alias: s for s in specs if s.alias}
    run_level = {s.key: s.default for s in specs if not s.per_task}
    if "nlora_form" in by_alias and d.get("nlora_form") is not None:
        run_level[by_alias["nlora_form"].key] = d["nlora_form"]
    run_wide: dict[str, set] = {}  # values tasks gave a run-wide option (replay's fraction): must agree
    new_tasks = []
    for t in tasks:
        t = dict(t)
        given = {"lambda": t.pop("lam", None), "lambda2": t.pop("lam2", None)}
        per_task = {s.key: s.default for s in specs if s.per_task}
        for alias, value in given.items():
            spec = by_alias.get(alias)
            if value is None or spec is None:  # the option's default, or a method without one (ignored)
                continue
            if spec.per_task:
                per_task[spec.key] = value
            else:
                run_wide.setdefault(spec.key, set()).add(value)
        new_tasks.append({**t, "method_options": per_task})
    for key, values in run_wide.items():
        if len(values) > 1:
            raise ValueError(f"its tasks give {name}'s run-wide option {key} different values")
        run_level[key] = values.pop()
    out = {k: v for k, v in d.items() if k != "nlora_form"}
    return {**out, "method_options": run_level, "tasks": new_tasks}


TOP_KEYS = {f.name for f in dataclasses.fields(RunConfig)} - {"tasks", "lora", "method", "method_options"}


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


# Per-task training settings: a top-level value is the default for every task, a task entry overrides it, and
# a command-line flag overrides both. A task entry may also set its own values of the method's per-task options
# (``method: {lambda: 0.2}``, or ``lambda`` / ``lambda2``), with the same precedence.
TASK_KEYS = ("lr", "epochs", "batch_size", "grad_accum")
TASK_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TaskSettings) if f.name in TASK_KEYS}
TASK_TYPES = {k: v for k, v in typing.get_type_hints(TaskSettings).items() if k in TASK_KEYS}
# Run-level names of earlier versions for a method option (methods/options.py ALIASES): lambda and lambda2
# are the method's main and second coefficient, nlora_form n-lora's form.
ALIAS_TYPES = {"lambda": float | None, "lambda2": float | None, "nlora_form": str | None}
TASK_ENTRY_KEYS = {"name", *TASK_KEYS, "lambda", "lambda2", "method"}
LAYER_KEYS = TOP_KEYS | set(TASK_KEYS) | set(ALIAS_TYPES) | {"tasks", "lora", "method"}


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
    """Every value of one layer (preset, config file or command line) checked against its field's type (a
    method's options are checked once the method is known: _resolve_method)."""
    hints = typing.get_type_hints(RunConfig)
    out = dict(layer)
    for key, value in layer.items():
        if key in TASK_TYPES:
            out[key] = checked_value(value, TASK_TYPES[key], key, where)
        elif key in ALIAS_TYPES:
            out[key] = checked_value(value, ALIAS_TYPES[key], key, where)
        elif key == "method":
            if not (isinstance(value, str) or isinstance(value, dict) and isinstance(value.get("name", ""), str)):
                raise NloraError(
                    f"{where}: setting 'method' must be a method name or a mapping of 'name' and the method's "
                    f"options (e.g. {{name: n-lora, lambda: 0.4}}), got {value!r}"
                )
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


@dataclass
class MethodLayer:
    """What one layer (a preset, a config file, the command line or a task entry) says about the method."""

    where: str
    name: str | None = None
    options: dict = field(default_factory=dict)  # {option key: value}: `method:` mapping, --method-arg
    aliases: dict = field(default_factory=dict)  # lambda / lambda2 / nlora_form: set the option marked with them
    text: bool = False  # option values are command-line text, typed by the option's field
    source: str | None = None  # where a task entry's values came from (the file), for range errors


def _method_layer(layer: dict, where: str) -> MethodLayer:
    value = layer.get("method")
    options = dict(value) if isinstance(value, dict) else {}
    name = options.pop("name", None) if isinstance(value, dict) else value
    aliases = {k: layer[k] for k in ALIAS_TYPES if layer.get(k) is not None}
    return MethodLayer(where, name, options, aliases)


def _merge(base: dict, layer: dict, where: str, method_layers: list[MethodLayer]) -> dict:
    _check_keys(layer, LAYER_KEYS, where)
    layer = _check_types(layer, where)
    method_layers.append(_method_layer(layer, where))
    out = {**base, **{k: v for k, v in layer.items() if k not in ("lora", "method", *ALIAS_TYPES)}}
    if "tasks" in layer:  # where the task entries come from, and whose method their `method:` mappings are for
        out["tasks_layer"], out["tasks_where"] = len(method_layers) - 1, where
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
        task_where = f"{where}: task {entry['name']}"
        _check_keys(entry, TASK_ENTRY_KEYS, task_where)
        method = entry.pop("method", {})
        if not isinstance(method, dict) or "name" in method:
            raise NloraError(
                f"{task_where}: 'method' in a task entry is a mapping of the method's per-task options "
                f"(e.g. {{lambda: 0.2}}), got {method!r}"
            )
        entry = {"name": entry["name"], **_check_types({k: v for k, v in entry.items() if k != "name"}, task_where)}
        aliases = {k: entry.pop(k) for k in ("lambda", "lambda2") if k in entry}
        aliases = {k: v for k, v in aliases.items() if v is not None}
        entry["method"] = MethodLayer(task_where, None, method, aliases, source=where)
        entries.append(entry)
    return entries


def _option_text(text: str, spec):
    """A --method-arg value typed as its option's field: text for text options, else read as YAML (true,
    10, 0.5; YAML 1.1 leaves 1e-3 as text, which checked_value reads as a number)."""
    if spec.hint is str or (isinstance(spec.hint, types.UnionType) and str in spec.hint.__args__):
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _layer_options(cls, layer: MethodLayer, with_options: bool = True) -> dict[str, tuple]:
    """{option key: (value, where)} that one layer sets for method ``cls``, each value type- and choice-checked.
    An alias the method has no option for is ignored (as before options existed); an unknown key is an error."""
    from .methods.options import describe_keys, find_spec, option_specs

    out: dict[str, tuple] = {}
    named: dict[str, str] = {}  # option key -> the name it was given as in this layer
    given = [(k, v, True) for k, v in layer.aliases.items()]
    given += [(k, v, False) for k, v in layer.options.items()] if with_options else []
    for key, value, is_alias in given:
        if is_alias:
            spec = next((s for s in option_specs(cls.Options) if s.alias == key), None)
            if spec is None:
                continue
        else:
            spec = find_spec(cls.Options, key)
            if spec is None:
                raise NloraError(
                    f"{layer.where}: method {cls.name} has no option '{key}' (its options: "
                    f"{describe_keys(cls.Options)}; see nlora methods {cls.name})"
                )
            if layer.text:
                value = _option_text(value, spec)
        # how the user wrote it, for the error when one layer sets an option twice
        written = repr(key) if not layer.text else f"--{key.replace('_', '-')}" if is_alias else f"--method-arg {key}"
        if spec.key in named:
            raise NloraError(f"{layer.where}: {named[spec.key]} and {written} both set {cls.name}'s option {spec.key}")
        named[spec.key] = written
        value = checked_value(value, spec.hint, key, layer.where)
        if spec.choices and value not in spec.choices:
            allowed = [str(c) for c in spec.choices]
            raise NloraError(
                f"{layer.where}: {cls.name} option {spec.key} must be {', '.join(allowed[:-1])} or {allowed[-1]}, "
                f"got {value!r}"
            )
        out[spec.key] = (value, layer.source or layer.where)
    return out


def _resolve_method(layers: list[MethodLayer], tasks_layer: int | None, entries: list[dict]) -> tuple[str, dict]:
    """The method's name and run-level options; sets each entry's "method_options" (its per-task options).

    Precedence: command line > a task entry (per-task options) > the later file layer > the option's default.
    Options given under one method's name (``method: {name: n-lora, form: reference}``) are dropped when a
    later layer names another method; lambda / lambda2 / nlora_form carry over to whichever method runs."""
    from .methods import get_method
    from .methods.options import option_specs

    names = [layer.name for layer in layers]
    name = next((n for n in reversed(names) if n), "n-lora")
    cls = get_method(name)
    start, current = 0, None  # options of layers before `start` were given for another method
    for i, n in enumerate(names):
        if n:
            start = i if current is not None and n != current else start
            current = n
    *files, command_line = layers
    from_files: dict[str, tuple] = {}
    for i, layer in enumerate(files):
        from_files.update(_layer_options(cls, layer, with_options=i >= start))
    from_cli = _layer_options(cls, command_line)

    def checked(spec, value, where, label):
        if spec.limit is not None:
            _check_limit(value, spec.limit, f"{where + ': ' if where else ''}{label}")
        return value

    run_level = {}
    for spec in option_specs(cls.Options):
        if not spec.per_task:
            value, where = from_cli.get(spec.key) or from_files.get(spec.key) or (spec.default, None)
            run_level[spec.key] = checked(spec, value, where, f"{name} option {spec.key}")
    for entry in entries:
        layer: MethodLayer = entry.pop("method")
        own = _layer_options(cls, layer, with_options=tasks_layer is None or tasks_layer >= start)
        per_task = {}
        for spec in option_specs(cls.Options):
            if not spec.per_task:
                if spec.key in own and spec.key not in from_cli:
                    raise NloraError(
                        f"{layer.where}: {name}'s option {spec.key} is one value for the whole run; set it "
                        f"under the top-level method (method: {{name: {name}, {spec.key}: ...}})"
                    )
                continue
            value, where = (
                from_cli.get(spec.key) or own.get(spec.key) or from_files.get(spec.key) or (spec.default, None)
            )
            per_task[spec.key] = checked(spec, value, where, f"{spec.key} (task {entry['name']})")
        cls.options_from({**run_level, **per_task})  # the options' own checks across fields (__post_init__)
        entry["method_options"] = per_task
    cls.options_from(run_level)
    return name, run_level


def resolve(preset: str | None = None, config_file: str | None = None, overrides: dict | None = None) -> RunConfig:
    """Merge the layers and check the result; raises NloraError naming the bad field.

    ``overrides`` (the command line): RunConfig / TaskSettings / LoraSettings fields by their flag's dest,
    ``method`` (a name), ``method_args`` ({option key: text} or (key, text) pairs), and the older ``lambda``,
    ``lambda2`` and ``nlora_form``."""
    merged: dict = {"lora": {}}
    method_layers: list[MethodLayer] = []
    if preset:
        merged = _merge(merged, load_preset(preset), f"preset {preset}", method_layers)
    if config_file:
        merged = _merge(merged, load_yaml(config_file), str(config_file), method_layers)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    method_args = dict(overrides.pop("method_args", None) or {})  # {key: text} or [(key, text)] (--method-arg)
    command_line = _check_types(
        {k: overrides.pop(k) for k in ("method", *ALIAS_TYPES) if k in overrides}, "command line"
    )
    if not isinstance(command_line.get("method", ""), str):
        raise NloraError(f"command line: --method takes a method name, got {command_line['method']!r}")
    cli_layer = _method_layer(command_line, "command line")
    cli_layer.options, cli_layer.text = dict(method_args), True
    task_flags = _check_types({k: overrides.pop(k) for k in TASK_KEYS if k in overrides}, "command line")
    lora_flags = {k: overrides.pop(k) for k in ("r", "alpha", "dropout", "target_modules") if k in overrides}
    if lora_flags:
        lora_flags = _check_types({"lora": lora_flags}, "command line")["lora"]
    new_order = overrides.pop("task_names", None)
    if ({"batch_size", "grad_accum"} & set(task_flags)) and "global_batch" not in overrides:
        overrides["global_batch"] = None  # explicit batch flags replace a preset's global batch
    merged = _merge(merged, overrides, "command line", [])
    if lora_flags:
        merged["lora"] = {**merged["lora"], **lora_flags}

    entries = _task_entries(merged.get("tasks") or [], merged.get("tasks_where", "config"))
    known = {e["name"]: e for e in entries}
    order = new_order if new_order is not None else [e["name"] for e in entries]
    if not order:
        raise NloraError("no tasks given: use --tasks a,b,c, a preset, or a config file with 'tasks'")
    if len(set(order)) != len(order):
        raise NloraError(f"task list has duplicates: {', '.join(order)}")
    ordered = [known.get(n) or {"name": n, "method": MethodLayer(f"task {n}")} for n in order]
    method, run_options = _resolve_method([*method_layers, cli_layer], merged.get("tasks_layer"), ordered)
    defaults = {k: merged.get(k, TASK_DEFAULTS[k]) for k in TASK_KEYS}
    tasks = []
    for entry in ordered:
        s = {**defaults, **{k: v for k, v in entry.items() if k in TASK_KEYS}, **task_flags}
        tasks.append(TaskSettings(name=entry["name"], method_options=entry["method_options"], **s))
    for key in ("model", "data_dir", "output_dir"):
        if not merged.get(key):
            raise NloraError(f"missing required setting '{key}' (flag --{key.replace('_', '-')})")
    top = {k: merged[k] for k in TOP_KEYS if k in merged}
    cfg = RunConfig(tasks=tasks, lora=LoraSettings(**merged["lora"]), method=method, method_options=run_options, **top)
    _validate(cfg)
    return cfg


# Allowed ranges, in one place: (lowest, highest, lowest excluded, highest excluded); None: unbounded.
# Types are checked by checked_value, before any of these; a method's options carry their own (option(limit=)).
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
}
LORA_LIMITS = {"r": (1, None, False, False), "alpha": (0, None, True, False), "dropout": (0, 1, False, True)}
# from the fields' declarations (setting(choices=...))
CHOICES = {f.name: f.metadata["choices"] for f in dataclasses.fields(RunConfig) if f.metadata.get("choices")}


def within_limit(value, limit: tuple) -> bool:
    """Whether a number lies inside ``limit`` (lowest, highest or None, lowest excluded, highest excluded)."""
    low, high, low_open, high_open = limit
    bad = isinstance(value, float) and not math.isfinite(value)
    bad = bad or value < low or (low_open and value == low)
    bad = bad or (high is not None and (value > high or (high_open and value == high)))
    return not bad


def _check_limit(value, limit: tuple, name: str) -> None:
    if value is None:
        return
    if not within_limit(value, limit):
        low, high, low_open, high_open = limit
        bound = f"{'>' if low_open else '>='} {low}"
        if high is not None:
            bound += f" and {'<' if high_open else '<='} {high}"
        raise NloraError(f"{name} must be {bound}, got {value!r}")


def _validate(cfg: RunConfig) -> None:
    for key, limit in LIMITS.items():
        _check_limit(getattr(cfg, key), limit, key)
    for t in cfg.tasks:
        for key, limit in TASK_LIMITS.items():
            _check_limit(getattr(t, key), limit, f"{key} (task {t.name})")
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
