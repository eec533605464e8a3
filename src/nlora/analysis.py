"""Adapter analysis from saved files only (no model forward): collision, orthogonality, nuclear norm, sparsity.

Each task's update is held as low-rank factors, delta W_t = U_t V_t (U: out x k, V: k x in, scaling folded into U):
for a fresh adapter per task that is (s B_t, A_t); for a single adapter trained through all tasks (seq-lora) it
is the change over task t, s B_t A_t - s B_{t-1} A_{t-1} = [s B_t, -s B_{t-1}] [A_t; A_{t-1}], still low rank.
Metrics that allow it use the factors (k x k products); the rest walk the dense update in row chunks.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

import torch

from .errors import NloraError
from .io import error_line, read_json, read_safetensors

DEFAULT_THRESHOLD = 1e-4
CURVE = [10.0**e for e in range(-7, 0)]  # 1e-7 ... 1e-1
CHUNK_ELEMENTS = 1 << 24  # dense rows handled at once, summed over tasks: 64 MB in fp32


@dataclass
class Update:
    U: torch.Tensor  # out x k (scaling folded in)
    V: torch.Tensor  # k x in
    A: torch.Tensor  # the task's own LoRA A (r x in), for O-LoRA's measure


def check_threshold(threshold) -> float:
    """A collision threshold on |dW|: a finite number > 0 (NaN would count nothing and report no collisions)."""
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, Real)
        or not (math.isfinite(threshold) and threshold > 0)
    ):
        raise NloraError(f"--threshold must be a finite number > 0, got {threshold}")
    return float(threshold)


def _number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def read_adapter(adapter_dir: Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    cfg_path, weights = adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise NloraError(f"adapter files missing in {adapter_dir}")
    cfg = read_json(cfg_path)
    if not isinstance(cfg, dict) or not (_number(cfg.get("r")) and cfg["r"] > 0 and _number(cfg.get("lora_alpha"))):
        raise NloraError(f"{cfg_path}: not a LoRA adapter config (needs numbers 'r' > 0 and 'lora_alpha')")
    r, alpha = cfg["r"], cfg["lora_alpha"]
    scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    tensors = read_safetensors(weights, "adapter weights")
    layers = {}
    for key, a in tensors.items():
        if key.endswith("lora_A.weight"):
            name = key[: -len(".lora_A.weight")]
            b = tensors.get(f"{name}.lora_B.weight")
            if b is None or a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
                raise NloraError(f"{weights}: {name} has no matching pair of LoRA A and B matrices")
            layers[name] = (a.double(), b.double())
    if not layers:
        raise NloraError(f"{weights}: no LoRA A/B tensors found")
    return layers, scaling


def check_run_dir(run_dir: Path) -> None:
    if not run_dir.exists():
        raise NloraError(f"run directory not found: {run_dir}")
    if not run_dir.is_dir():
        raise NloraError(f"run directory {run_dir} is not a directory")


def read_run_config(path: Path):
    """A run directory's config.yaml as a RunConfig; unreadable or not an nlora config is one NloraError."""
    from .config import RunConfig, load_yaml

    data = load_yaml(path)
    try:
        cfg = RunConfig.from_dict(data)
    except (TypeError, KeyError, AttributeError, ValueError) as e:
        raise NloraError(f"{path}: not an nlora run config ({e.__class__.__name__}: {error_line(e)})") from None
    if not (
        isinstance(cfg.model, str)
        and isinstance(cfg.method, str)
        and cfg.tasks
        and all(isinstance(t.name, str) for t in cfg.tasks)
    ):
        raise NloraError(f"{path}: not an nlora run config (needs text 'model', 'method' and task names)")
    return cfg


def read_summary(path: Path) -> dict:
    """A run's summary.json, checked to have the fields analyze and report read."""
    s = read_json(path)
    problem = None
    if not isinstance(s, dict):
        problem = "expected a JSON object"
    elif not (isinstance(s.get("tasks"), list) and s["tasks"] and all(isinstance(t, str) for t in s["tasks"])):
        problem = "'tasks' must be a non-empty list of task names"
    elif not isinstance(s.get("method"), str) or not isinstance(s.get("model"), str):
        problem = "'method' and 'model' must be text"
    else:
        n, m = len(s["tasks"]), s.get("accuracy_matrix")
        if not (
            isinstance(m, list)
            and len(m) == n
            and all(isinstance(row, list) and len(row) == n and all(v is None or _number(v) for v in row) for row in m)
        ):
            problem = f"'accuracy_matrix' must be {n} rows of {n} numbers (or nulls)"
        elif not all(k in s for k in ("aa", "bwt", "wall_time_s")):
            problem = "no 'aa', 'bwt' or 'wall_time_s'"
        elif not all(s.get(k) is None or _number(s[k]) for k in ("aa", "bwt", "fwt", "wall_time_s")):
            problem = "'aa', 'bwt', 'fwt' and 'wall_time_s' must be numbers (or null)"
    if problem:
        raise NloraError(f"{path}: not an nlora run summary ({problem})")
    return s


def run_layout(run_dir: Path) -> tuple[list[str], str, list[Path]]:
    """Tasks, method and adapter folders of a run directory (complete or not)."""
    summary, config = run_dir / "summary.json", run_dir / "config.yaml"
    if summary.is_file():
        s = read_summary(summary)
        tasks, method = s["tasks"], s["method"]
    elif config.is_file():
        c = read_run_config(config)
        tasks, method = c.task_names, c.method
    else:
        raise NloraError(f"{run_dir} is not a run directory (no summary.json or config.yaml)")
    from .methods import REGISTRY

    if method in REGISTRY and REGISTRY[method].bank != "lora":
        raise NloraError(f"{run_dir}: method {method} trains no LoRA adapters; the analysis needs a LoRA method")
    dirs = sorted((run_dir / "tasks").glob("[0-9][0-9]-*/adapter"))
    if not dirs:
        raise NloraError(f"{run_dir}: no trained adapters under tasks/")
    by_dir = {f"{i + 1:02d}-": name for i, name in enumerate(tasks)}  # mtl saves only its last position
    return [by_dir.get(d.parent.name[:3], d.parent.name[3:]) for d in dirs], method, dirs


def natural_key(name: str) -> list:
    """Model order: 'layers.2' before 'layers.10'."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def task_updates(adapter_dirs: list[Path], cumulative: bool) -> tuple[list[str], list[dict[str, Update]]]:
    """Per task, per layer, the task's own update as factors."""
    loaded = [read_adapter(d) for d in adapter_dirs]
    layers = sorted(loaded[0][0], key=natural_key)
    for d, (factors, _) in zip(adapter_dirs[1:], loaded[1:]):  # updates are compared layer by layer
        first = loaded[0][0]
        if set(factors) != set(first) or any(
            factors[n][0].shape[1] != first[n][0].shape[1] or factors[n][1].shape[0] != first[n][1].shape[0]
            for n in layers
        ):
            raise NloraError(
                f"{d}: adapts other layers (or other shapes) than {adapter_dirs[0]}; not one run's adapters"
            )
    updates, prev = [], None
    for factors, s in loaded:
        per_layer = {}
        for name in layers:
            A, B = factors[name]
            U, V = s * B, A
            if cumulative and prev is not None:
                A0, B0, s0 = prev[0][name][0], prev[0][name][1], prev[1]
                U, V = torch.cat([U, -s0 * B0], 1), torch.cat([V, A0], 0)
            per_layer[name] = Update(U, V, A)
        updates.append(per_layer)
        prev = (factors, s)
    return layers, updates


def update_inner(u: Update, w: Update) -> float:
    """||dW_i^T dW_j||_F^2 from k x k products: tr(M^T (V_i V_i^T) M (V_j V_j^T)) with M = U_i^T U_j."""
    M = u.U.T @ w.U
    return float(torch.trace(M.T @ (u.V @ u.V.T) @ M @ (w.V @ w.V.T)))


def nuclear_norm(u: Update) -> float:
    """Sum of singular values of U V, from the k x k core of two thin QR factorisations."""
    _, Ru = torch.linalg.qr(u.U)
    _, Rv = torch.linalg.qr(u.V.T)
    return float(torch.linalg.svdvals(Ru @ Rv.T).sum())


def dense_counts(
    updates: list[Update], thresholds: list[float]
) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """Entries above each threshold per task (T x n) and jointly per task pair (T x n x n), and each task's
    ||dW||_1 (n), in one pass over row chunks of the dense updates."""
    n, out_f, in_f = len(updates), updates[0].U.shape[0], updates[0].V.shape[1]
    rows = max(1, CHUNK_ELEMENTS // max(1, n * in_f))
    th = torch.tensor(thresholds, dtype=torch.float64)
    single = torch.zeros(len(thresholds), n, dtype=torch.float64)
    joint = torch.zeros(len(thresholds), n, n, dtype=torch.float64)
    l1 = torch.zeros(n, dtype=torch.float64)
    for r0 in range(0, out_f, rows):
        dense = torch.stack([u.U[r0 : r0 + rows] @ u.V for u in updates]).abs().flatten(1)  # n x chunk
        l1 += dense.sum(1)
        for k, t in enumerate(th):
            above = (dense > t).double()
            single[k] += above.sum(1)
            joint[k] += above @ above.T
    return single, joint, out_f * in_f, l1


def analyze_updates(
    layers: list[str], updates: list[dict[str, Update]], threshold: float, thresholds: list[float]
) -> dict:
    n = len(updates)
    curve = sorted(set(thresholds) | {threshold})
    k_main = curve.index(threshold)
    per_layer, acr_curve_sum = {}, torch.zeros(len(curve), dtype=torch.float64)
    orth_a = torch.zeros(n, n, dtype=torch.float64)
    orth_u = torch.zeros(n, n, dtype=torch.float64)
    collision_sum = torch.zeros(n, n, dtype=torch.float64)
    for name in layers:
        us = [u[name] for u in updates]
        single, joint, numel, l1 = dense_counts(us, curve)
        rates = joint / numel  # T x n x n; diagonal = density
        collision_sum += rates[k_main]
        if n > 1:
            iu = torch.triu_indices(n, n, 1)
            acr_curve_sum += rates[:, iu[0], iu[1]].mean(-1)
        a = torch.tensor([[float(torch.linalg.norm(us[i].A @ us[j].A.T) ** 2) for j in range(n)] for i in range(n)])
        w = torch.tensor([[update_inner(us[i], us[j]) for j in range(n)] for i in range(n)])
        orth_a += a
        orth_u += w
        per_layer[name] = {
            "collision": rates[k_main].tolist(),
            "density": (single[k_main] / numel).tolist(),
            "nuclear_norm": [nuclear_norm(u) for u in us],
            "l1": l1.tolist(),
        }
    L = len(layers)
    off = [(i, j) for i in range(n) for j in range(i + 1, n)]
    nuclear = torch.tensor([per_layer[layer]["nuclear_norm"] for layer in layers])  # L x n
    density = torch.tensor([per_layer[layer]["density"] for layer in layers])
    return {
        "threshold": threshold,
        "num_layers": L,
        "acr": float(sum(collision_sum[i, j] for i, j in off) / (len(off) * L)) if off else None,
        "acr_curve": [
            {"threshold": t, "acr": float(acr_curve_sum[k] / L) if off else None} for k, t in enumerate(curve)
        ],
        "collision_matrix": (collision_sum / L).tolist(),
        "orthogonality_lora_A": {"matrix": orth_a.tolist(), "total": float(sum(orth_a[i, j] for i, j in off))},
        "orthogonality_update": {"matrix": orth_u.tolist(), "total": float(sum(orth_u[i, j] for i, j in off))},
        "nuclear_norm": {"mean": float(nuclear.mean()), "per_task_mean": nuclear.mean(0).tolist()},
        "sparsity": {
            "per_task": (1 - density.mean(0)).tolist(),
            "definition": "share of update entries with |dW| <= threshold",
        },
        "layers": per_layer,
    }


def analyze_run(
    run_dir: str | Path, threshold: float = DEFAULT_THRESHOLD, thresholds: list[float] | None = None
) -> dict:
    from .methods import get_method

    run_dir = Path(run_dir)
    threshold = check_threshold(threshold)
    check_run_dir(run_dir)
    tasks, method, dirs = run_layout(run_dir)
    cumulative = not get_method(method).fresh_adapter_per_task
    layers, updates = task_updates(dirs, cumulative)
    result = {
        "run": str(run_dir),
        "method": method,
        "tasks": tasks,
        "update_definition": "change of the single adapter over each task"
        if cumulative
        else "each task's own adapter s*B*A",
    }
    result.update(analyze_updates(layers, updates, threshold, thresholds or CURVE))
    return result
