"""inflora's and gainlora's covariance passes, as runs call them against what they did before, in one process.

Both methods run a forward-only pass over a task's training rows before and after it trains
(``methods.inflora.layer_covariances``); the hooks read layer inputs only. This times that function three ways,
alternating them: as it ran before (the head asked for every position's logits, each adapted layer's fp64 x^T x
computed on its own), with the head asked for one position only (where the model takes ``logits_to_keep``), and
as runs call it now (also one product per distinct input tensor, shared by the layers that read it: q_proj and
v_proj of a block). It checks that all three give the same covariances bit for bit. Runs on the CPU; prints one
JSON line with the machine.

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
from nlora.methods import inflora  # noqa: E402
from nlora.models import default_target_modules, load_model  # noqa: E402
from nlora.prompts import load_instructions  # noqa: E402
from nlora.runtime import Runtime  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--data-dir", default=str(SHARED))
    p.add_argument("--task", default="amazon", help="the task whose training rows are probed")
    p.add_argument("--rows", type=int, default=48, help="training rows per pass")
    p.add_argument("--batch-size", type=int, default=8)
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
    rows = load_tasks(args.data_dir, [args.task], load_instructions(), max_train=args.rows, max_test=1)
    # encoded as a run encodes its training rows (its default prompt and answer limits)
    data = Runtime(loaded.tokenizer, loaded.family, torch.device("cpu")).encode(rows[args.task].splits["train"])
    family = type(loaded.family)
    one_position = family.keeps_logits
    shared_products = inflora.InputProducts

    class ProductPerLayer(shared_products):
        def cached(self, x, role):
            return None

    def timed(every_position: bool, product_per_layer: bool):
        family.keeps_logits = (lambda self, model: False) if every_position else one_position
        inflora.InputProducts = ProductPerLayer if product_per_layer else shared_products
        try:
            start = time.perf_counter()
            covs = inflora.layer_covariances(lora, "task0", data, args.batch_size)
            return time.perf_counter() - start, covs
        finally:
            family.keeps_logits, inflora.InputProducts = one_position, shared_products

    kinds = {  # name: (every position's logits, each layer its own product)
        "before": (True, True),
        "one position": (False, True),
        "as run": (False, False),
    }
    seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
    covs = {}
    for _ in range(args.repeats):
        for kind, how in kinds.items():
            dt, covs[kind] = timed(*how)
            seconds[kind].append(round(dt, 3))
    before = covs["before"]
    same = all(
        sorted(before) == sorted(other) and all(torch.equal(before[n], other[n]) for n in before)
        for other in covs.values()
    )
    best = {k: min(v) for k, v in seconds.items()}
    result = {
        "machine": machine_name("cpu"),  # the model stays where load_model puts it: the CPU
        "torch": torch.__version__,
        "model": args.model,
        "task": args.task,
        "rows": len(data),
        "batch": args.batch_size,
        "layers": len(before),
        "head_kept_to_one_position": bool(one_position(loaded.family, lora.model)),
        "pass_s": seconds,
        "speedup": {kind: round(best["before"] / best[kind], 2) for kind in ("one position", "as run")},
        "covariances_bit_identical": same,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
