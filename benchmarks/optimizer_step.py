"""AdamW's step as nlora builds it (``nlora.train.adamw``) against torch's default, in one process.

Full fine-tuning (seq-ft, migu) updates every weight of the model each step; on the CPU torch's default AdamW
loops over the tensors in Python with about ten elementwise passes over each, while the fused kernel reads and
writes each once. This times ``optimizer.step()`` both ways over a model's full parameter set and over its LoRA
set (rank 8 on the default target modules, what the LoRA methods train), alternating, with the same random
gradients, and reports how far apart the parameters are after the timed steps (the same update rule, other
rounding). Prints one JSON line with the machine.

    python benchmarks/optimizer_step.py --model smollm2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from nlora.adapters import ContinualLoRA
from nlora.config import LoraSettings
from nlora.dist import machine_name
from nlora.models import default_target_modules, load_model
from nlora.train import adamw

LR = 1e-4


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--steps", type=int, default=5, help="timed steps per optimizer and round")
    p.add_argument("--repeats", type=int, default=2, help="rounds, alternating the two; the median counts")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return p.parse_args(argv)


def compare(params: list[torch.nn.Parameter], steps: int, repeats: int) -> dict:
    """Both optimizers from the same start and gradients: seconds a step, and the parameters' largest gap."""
    start = [p.detach().clone() for p in params]
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=generator) * 1e-3 for p in params]
    builds = {
        "torch default": lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=0.0),
        "nlora": lambda ps: adamw(ps, LR),
    }
    seconds: dict[str, list[float]] = {kind: [] for kind in builds}
    after = {}
    for _ in range(repeats):
        for kind, build in builds.items():
            with torch.no_grad():
                for p, s, g in zip(params, start, grads):
                    p.copy_(s)
                    p.grad = g.clone()
            optimizer = build(params)
            optimizer.step()  # state allocated outside the timing
            begin = time.perf_counter()
            for _ in range(steps):
                optimizer.step()
            seconds[kind].append(round((time.perf_counter() - begin) / steps, 4))
            after[kind] = [p.detach().clone() for p in params]
    gap = max(float((a - b).abs().max()) for a, b in zip(after["torch default"], after["nlora"]))
    moved = max(float((a - s).abs().max()) for a, s in zip(after["nlora"], start))
    median = {kind: statistics.median(v) for kind, v in seconds.items()}
    with torch.no_grad():  # the model as it came
        for p, s in zip(params, start):
            p.copy_(s)
            p.grad = None
    return {
        "parameters": sum(p.numel() for p in params),
        "tensors": len(params),
        "step_s": seconds,
        "speedup": round(median["torch default"] / median["nlora"], 2),
        "max_parameter_gap": float(f"{gap:.2e}"),
        "max_parameter_move": float(f"{moved:.2e}"),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    full = compare([p for p in loaded.model.parameters()], args.steps, args.repeats)
    lora = ContinualLoRA(loaded.model, LoraSettings(dropout=0.0), default_target_modules(loaded.model), loaded.family)
    lora.start("task0")
    adapters = compare(lora.trainable_parameters(), args.steps, args.repeats)
    result = {
        "machine": machine_name("cpu"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": args.model,
        "full fine-tuning": full,
        "lora": adapters,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
