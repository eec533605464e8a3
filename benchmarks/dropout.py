"""The LoRA branches' dropout as runs use it (``nlora.dropout.CpuDropout``) against ``torch.nn.Dropout``, in one
process, on the CPU.

Two cases, each alternating the two kinds: one branch's dropout, forward and backward, on an input of a
training batch's shape (batch x tokens x the model's width); and a whole forward and backward of the model with
LoRA (rank 8 on the default target modules, dropout 0.1) and ``--live`` adapters live in the forward pass
(1: every method that folds; GainLoRA keeps one per finished task), the loss over the last ``--answer``
positions as runs ask the head for the answer's logits only (T5: a decoder of that length). It also
counts how often each kind kept an entry over the timed draws (both should keep 1 - p). Prints one JSON line
with the machine.

    python benchmarks/dropout.py --model smollm2 --threads 2 --live 1,4
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from peft.tuners.lora import LoraLayer

from nlora.adapters import ContinualLoRA
from nlora.config import LoraSettings
from nlora.dist import machine_name
from nlora.dropout import CpuDropout
from nlora.models import default_target_modules, load_model

KINDS = {"torch nn.Dropout": torch.nn.Dropout, "nlora CpuDropout": CpuDropout}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=150, help="tokens per row (the 4-task prompts' typical length)")
    p.add_argument("--answer", type=int, default=4, help="answer tokens the loss reads")
    p.add_argument("--p", type=float, default=0.1, help="dropout rate (nlora's default LoRA dropout)")
    p.add_argument("--live", default="1,4", help="comma-separated: adapters live in the forward pass")
    p.add_argument("--steps", type=int, default=3, help="timed passes per kind and round")
    p.add_argument("--repeats", type=int, default=2, help="rounds, alternating the kinds; the median counts")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return p.parse_args(argv)


def timed(run, steps: int) -> float:
    run()  # warm-up outside the timing
    begin = time.perf_counter()
    for _ in range(steps):
        run()
    return (time.perf_counter() - begin) / steps


def summary(seconds: dict[str, list[float]]) -> dict:
    median = {kind: statistics.median(v) for kind, v in seconds.items()}
    old, new = median["torch nn.Dropout"], median["nlora CpuDropout"]
    return {"seconds": seconds, "speedup": round(old / new, 2), "saved_s": round(old - new, 4)}


def one_branch(shape: tuple[int, ...], p: float, steps: int, repeats: int) -> dict:
    """One dropout's forward and backward on an input of ``shape``, both kinds; also each kind's kept share."""
    x = torch.randn(shape, requires_grad=True)
    grad = torch.randn(shape)
    seconds: dict[str, list[float]] = {kind: [] for kind in KINDS}
    kept = {kind: [0, 0] for kind in KINDS}
    for _ in range(repeats):
        for kind, build in KINDS.items():
            drop = build(p)

            def run(drop=drop):
                drop(x).backward(grad)

            seconds[kind].append(round(timed(run, steps), 5))
            for _ in range(steps):  # untimed draws of the same kind, counted
                with torch.no_grad():
                    y = drop(x)
                kept[kind][0] += int((y != 0).sum())
                kept[kind][1] += y.numel()
    result = summary(seconds)
    result["kept_share"] = {kind: round(k / n, 5) for kind, (k, n) in kept.items()}
    return result


def use_dropout(model: torch.nn.Module, build) -> None:
    """Every LoRA branch's dropout becomes ``build(p)`` at its own rate."""
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for name, old in list(module.lora_dropout.items()):
                if isinstance(old, torch.nn.Dropout):
                    module.lora_dropout[name] = build(old.p)


def model_passes(args, live: int) -> dict:
    """Forward and backward of the LoRA model with ``live`` adapters live (the newest trains), both kinds."""
    loaded = load_model(args.model)
    lora = ContinualLoRA(
        loaded.model, LoraSettings(dropout=args.p), default_target_modules(loaded.model), loaded.family
    )
    for t in range(live):
        lora.start(f"task{t}")
    model = lora.model
    model.train()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(model.config.vocab_size, (args.batch, args.tokens), generator=generator)
    answer = ids[:, -args.answer :]
    if model.config.is_encoder_decoder:
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": answer}
    else:  # the logits of the positions that predict the answer's tokens
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "logits_to_keep": args.answer + 1}

    def loss() -> torch.Tensor:
        if model.config.is_encoder_decoder:
            return model(**batch).loss
        logits = model(**batch).logits[:, :-1]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), answer.reshape(-1))

    seconds: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for _ in range(args.repeats):
        for kind, build in KINDS.items():
            use_dropout(model, build)

            def run():
                loss().backward()
                model.zero_grad(set_to_none=True)

            seconds[kind].append(round(timed(run, args.steps), 4))
    branches = sum(len(m.lora_dropout) for m in model.modules() if isinstance(m, LoraLayer))
    return {"live_adapters": live, "dropout_branches": branches, **summary(seconds)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    width = load_model(args.model).model.config.hidden_size
    shape = (args.batch, args.tokens, width)
    result = {
        "machine": machine_name("cpu"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": args.model,
        "p": args.p,
        "branch": {"shape": list(shape), **one_branch(shape, args.p, args.steps * 10, args.repeats)},
        "forward_and_backward": [model_passes(args, int(n)) for n in args.live.split(",")],
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
