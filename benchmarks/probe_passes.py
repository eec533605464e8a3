"""inflora's and gainlora's covariance passes, as runs call them against what they did before, in one process.

Both methods run a forward-only pass over a task's training rows before and after it trains
(``methods.inflora.layer_covariances``); the hooks read layer inputs only. This times that function four ways,
alternating them: as it ran before (rows in file order, the head asked for every position's logits, each adapted
layer's fp64 x^T x computed on its own); with the head asked for one position only (where the model takes
``logits_to_keep``); also one product per distinct input tensor, shared by the layers that read it (q_proj and
v_proj of a block); and as runs call it now, also with the rows sorted by length so batches pad little. The first
three must give the same covariances bit for bit; sorted batches change only the float rounding (other padding
widths, another summation order), reported as the largest difference relative to each layer's largest entry.
Then route's pooled states (``methods.route.pooled_states``, a frozen-base pass over every training prompt
after its task and every test prompt at evaluation), batches of 32 prompts in file order against prompts sorted
by length (as runs call it; each row is its own, so only the float rounding may differ).
Runs on the CPU; prints one JSON line with the machine.

    python benchmarks/probe_passes.py --rows 48 --task amazon        # SmolLM2, ../shared/CL_Benchmark
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED  # noqa: E402

from nlora.adapters import ContinualLoRA  # noqa: E402
from nlora.config import LoraSettings  # noqa: E402
from nlora.data import load_tasks  # noqa: E402
from nlora.dist import machine_name  # noqa: E402
from nlora.methods import inflora, route  # noqa: E402
from nlora.models import default_target_modules, load_model  # noqa: E402
from nlora.prompts import load_instructions  # noqa: E402
from nlora.runtime import Runtime  # noqa: E402


def padding(rows: list[int], batch_size: int) -> float:
    """Tokens the batches hold (rows of these lengths, in this order, padded to each batch's longest) per real
    token."""
    held = sum(max(rows[i : i + batch_size]) * len(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size))
    return round(held / max(sum(rows), 1), 3)


def in_file_order(rows: list) -> list[int]:
    return list(range(len(rows)))


def route_pooling(lora, prompts: list[list[int]], repeats: int) -> dict:
    """route's pooled states over ``prompts``: batches in file order against sorted by length, alternating."""
    by_length, batch = route.pool_order, route.POOL_BATCH
    seconds: dict[str, list[float]] = {"file order": [], "sorted": []}
    pooled = {}
    for _ in range(repeats):
        for kind in seconds:
            route.pool_order = in_file_order if kind == "file order" else by_length
            try:
                start = time.perf_counter()
                pooled[kind] = route.pooled_states(lora, prompts, batch)
                seconds[kind].append(round(time.perf_counter() - start, 3))
            finally:
                route.pool_order = by_length
    lengths = {
        kind: [len(prompts[i]) for i in order(prompts)]
        for kind, order in [("file order", in_file_order), ("sorted", by_length)]
    }
    return {
        "prompts": len(prompts),
        "batch": batch,
        "padded_tokens_per_real_token": {kind: padding(rows, batch) for kind, rows in lengths.items()},
        "pass_s": seconds,
        "speedup": round(min(seconds["file order"]) / min(seconds["sorted"]), 2),
        "max_abs_difference": float(f"{float((pooled['file order'] - pooled['sorted']).abs().max()):.2e}"),
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--data-dir", default=str(SHARED))
    p.add_argument("--task", default="amazon", help="the task whose training rows are probed")
    p.add_argument("--rows", type=int, default=48, help="training rows per pass")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--route-prompts", type=int, default=128, help="training prompts route's pooling reads")
    p.add_argument("--repeats", type=int, default=2, help="passes of each kind, alternating; the fastest counts")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    lora = ContinualLoRA(loaded.model, LoraSettings(dropout=0.0), default_target_modules(loaded.model), loaded.family)
    lora.start("task0")
    most = max(args.rows, args.route_prompts)
    rows = load_tasks(args.data_dir, [args.task], load_instructions(), max_train=most, max_test=1)
    # encoded as a run encodes its training rows (its default prompt and answer limits)
    encoded = Runtime(loaded.tokenizer, loaded.family, torch.device("cpu")).encode(rows[args.task].splits["train"])
    data = encoded[: args.rows]
    family = type(loaded.family)
    one_position, shared_products, by_length = family.keeps_logits, inflora.InputProducts, inflora.probe_order

    class ProductPerLayer(shared_products):
        def cached(self, x, role):
            return None

    def timed(every_position: bool, product_per_layer: bool, file_order: bool):
        family.keeps_logits = (lambda self, model: False) if every_position else one_position
        inflora.InputProducts = ProductPerLayer if product_per_layer else shared_products
        inflora.probe_order = list if file_order else by_length
        try:
            start = time.perf_counter()
            covs = inflora.layer_covariances(lora, "task0", data, args.batch_size)
            return time.perf_counter() - start, covs
        finally:
            family.keeps_logits, inflora.InputProducts, inflora.probe_order = one_position, shared_products, by_length

    kinds = {  # name: (every position's logits, each layer its own product, rows in file order)
        "before": (True, True, True),
        "one position": (False, True, True),
        "shared products": (False, False, True),
        "as run": (False, False, False),
    }
    seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
    covs = {}
    for _ in range(args.repeats):
        for kind, how in kinds.items():
            dt, covs[kind] = timed(*how)
            seconds[kind].append(round(dt, 3))
    before = covs["before"]
    same = all(
        sorted(before) == sorted(covs[kind]) and all(torch.equal(before[n], covs[kind][n]) for n in before)
        for kind in ("one position", "shared products")
    )
    sorted_rows = covs["as run"]
    relative = max(float((sorted_rows[n] - c).abs().max() / c.abs().max()) for n, c in before.items())
    best = {k: min(v) for k, v in seconds.items()}
    orders = [("file order", list), ("sorted", by_length)]
    pooling = route_pooling(lora, [e.source for e in encoded[: args.route_prompts]], args.repeats)
    result = {
        "machine": machine_name("cpu"),  # the model stays where load_model puts it: the CPU
        "torch": torch.__version__,
        "model": args.model,
        "task": args.task,
        "rows": len(data),
        "batch": args.batch_size,
        "layers": len(before),
        "head_kept_to_one_position": bool(one_position(loaded.family, lora.model)),
        "padded_tokens_per_real_token": {
            kind: padding([len(e.source) + len(e.target) for e in order(data)], args.batch_size)
            for kind, order in orders
        },
        "pass_s": seconds,
        "speedup": {kind: round(best["before"] / best[kind], 2) for kind in kinds if kind != "before"},
        "covariances_bit_identical": same,
        "sorted_rows_max_relative_difference": float(f"{relative:.2e}"),
        "route_pooling": pooling,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
