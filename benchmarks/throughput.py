"""Training and evaluation throughput: nlora against the usual HF PEFT stack, in one process, same examples.

    python benchmarks/throughput.py --shape smollm2          # CPU: SmolLM2-135M shapes, random weights
    python benchmarks/throughput.py --shape tiny             # CPU, seconds (t5-tiny: the T5 code path)
    python benchmarks/throughput.py --shape t5-large         # GPU
    python benchmarks/throughput.py --shape llama-7b         # GPU

One JSON line per case: both figures, their ratio, and the machine. Cases:
- train: our step (length-grouped batches, answer-only logits, N-LoRA penalty, bf16 autocast where asked)
  against plain PEFT LoRA in eager mode with the reference's padding (every batch padded to 512 tokens, full
  logits, the model's own loss) at fp32 and at the same precision as ours;
- scaling: our step time with 4 and 15 earlier tasks' adapters against 1 (folded, and PEFT-stacked for
  contrast);
- eval: our greedy generation (merged weights, length-sorted, bf16 where asked, stop when all finished)
  against the reference style (fp32, LoRA branches, unsorted, batch 16; T5 512); eval-score: label scoring
  (--eval-mode score, three candidates) against the same reference generation. --profile prints the top
  operators of both generation paths.
Speed does not depend on the weights, so models are random-initialised at the named shapes. Prompt lengths
come from ../shared/CL_Benchmark (tokenised with the SmolLM2 tokenizer when nlora[demo] is installed, else
UTF-8 bytes / 4), or a synthetic log-normal when the data is absent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import statistics
import time
from pathlib import Path

import torch

from nlora.adapters import ContinualLoRA
from nlora.batching import Encoded, batch_order, collate_prompts, collate_train
from nlora.config import LoraSettings, TaskSettings, resolve
from nlora.dist import machine_name
from nlora.methods import get_method
from nlora.logits import autocast, task_loss

SHARED = Path(__file__).resolve().parents[2] / "shared" / "CL_Benchmark"
SHAPES = {
    "tiny": ("llama", dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2)),
    "t5-tiny": ("t5", dict(vocab_size=512, d_model=64, d_ff=128, d_kv=16, num_layers=2, num_heads=4,
                           feed_forward_proj="relu")),
    "smollm2": ("llama", dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                              num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)),
    "llama-7b": ("llama", dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                               num_attention_heads=32, num_key_value_heads=32)),
    "t5-large": ("t5", dict(vocab_size=32128, d_model=1024, d_ff=4096, d_kv=64, num_layers=24, num_heads=16,
                            feed_forward_proj="relu")),
}
TASKS = ("TC/agnews", "SC/amazon", "NLI/MNLI", "QQP/QQP")
MAX_SOURCE = 512


def build_model(shape: str, device: torch.device):
    kind, kw = SHAPES[shape]
    torch.manual_seed(0)
    if kind == "t5":
        from transformers import T5Config, T5ForConditionalGeneration

        cfg = T5Config(**kw, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0)
        return T5ForConditionalGeneration(cfg).to(device), True
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**kw, max_position_embeddings=2048, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    return LlamaForCausalLM(cfg).to(device), False


def prompt_lengths(n: int, seed: int) -> tuple[list[int], str]:
    rng = random.Random(seed)
    if SHARED.is_dir():
        texts = []
        for task in TASKS:
            path = SHARED / task / "train.json"
            if path.is_file():
                rows = json.loads(path.read_text())
                texts += [r["sentence"] for r in rng.sample(rows, min(len(rows), n))]
        texts = rng.sample(texts, min(n, len(texts)))
        try:
            from transformers import AutoTokenizer

            from nlora.models import embedded_model_path

            gguf = Path(embedded_model_path("smollm2"))
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, trust_remote_code=False)
            # + ~40 tokens of task header, instruction and options
            return [min(MAX_SOURCE, len(tok(t)["input_ids"]) + 40) for t in texts], "CL_Benchmark, SmolLM2 tokenizer"
        except Exception:
            return [min(MAX_SOURCE, len(t.encode()) // 4 + 40) for t in texts], "CL_Benchmark, bytes/4"
    return [min(MAX_SOURCE, int(rng.lognormvariate(4.6, 0.6))) for _ in range(n)], "synthetic log-normal"


def examples(lengths: list[int], vocab: int, seed: int) -> list[Encoded]:
    g = torch.Generator().manual_seed(seed)
    return [Encoded(torch.randint(3, vocab, (n,), generator=g).tolist(), torch.randint(3, vocab, (2,), generator=g)
                    .tolist() + [1]) for n in lengths]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int) -> float:
    """Median seconds of fn() over repeats, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def make_lora(model, seq2seq, adapters: int, fold: bool):
    cfg = resolve(overrides={"model": "m", "data_dir": "d", "output_dir": "o", "task_names": ["t"],
                             "method": "n-lora", "lambda": 2e-4, "fold_adapters": fold})
    targets = ["q", "v"] if seq2seq else ["q_proj", "v_proj"]
    lora = ContinualLoRA(model, LoraSettings(), targets, seq2seq)
    method = get_method("n-lora")(cfg)
    settings = TaskSettings("t", lr=1e-3, epochs=1, batch_size=8, grad_accum=1, lam=2e-4)
    for t in range(adapters):
        method.begin_task(lora, t, settings)
    return lora, method, settings


def our_epoch(lora, method, settings, data, seq2seq, device, amp, batch):
    """One pass over data with our step; returns a closure for timing."""
    order = batch_order([len(e.source) + len(e.target) for e in data], batch, 0)
    opt = torch.optim.AdamW(lora.trainable_parameters(), lr=1e-4)
    keep = not seq2seq

    def run():
        lora.model.train()
        for idx in order:
            b = {k: v.to(device) for k, v in collate_train([data[i] for i in idx], 0, seq2seq).items()}
            with autocast(device, amp):
                loss = task_loss(lora.model, b, seq2seq, keep)
            (loss + method.penalty(lora, settings)).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    return run


def baseline_epoch(peft_model, data, seq2seq, device, amp, batch):
    """Plain PEFT LoRA, eager, every batch padded to 512, full logits and the model's loss."""
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    batches = [list(range(s, min(s + batch, len(data)))) for s in range(0, len(data), batch)]

    def collate(idx):
        if seq2seq:
            ids = [data[i].source + [0] * (MAX_SOURCE - len(data[i].source)) for i in idx]
            mask = [[1] * len(data[i].source) + [0] * (MAX_SOURCE - len(data[i].source)) for i in idx]
            lab = [data[i].target + [-100] * (8 - len(data[i].target)) for i in idx]
        else:
            full = [data[i].source + data[i].target for i in idx]
            width = MAX_SOURCE + 8
            ids = [[0] * (width - len(f)) + f for f in full]
            mask = [[0] * (width - len(f)) + [1] * len(f) for f in full]
            lab = [[-100] * (width - len(data[i].target)) + data[i].target for i in idx]
        return {"input_ids": torch.tensor(ids, device=device), "attention_mask": torch.tensor(mask, device=device),
                "labels": torch.tensor(lab, device=device)}

    def run():
        peft_model.train()
        for idx in batches:
            with autocast(device, amp):
                loss = peft_model(**collate(idx)).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    return run


RECORDS: list[dict] = []  # every line emitted, for callers (benchmarks/paper.py)


def emit(rec: dict) -> None:
    RECORDS.append(rec)
    print(json.dumps(rec), flush=True)


def bench_train(shape, device, data, amp, batch, repeats, base_info):
    from peft import LoraConfig, TaskType, get_peft_model

    model, seq2seq = build_model(shape, device)
    lora, method, settings = make_lora(model, seq2seq, 1, fold=True)
    ours = timed(our_epoch(lora, method, settings, data, seq2seq, device, amp, batch), device, repeats)
    del lora, model
    for base_amp in sorted({None, amp}, key=lambda a: a is not None):
        model, _ = build_model(shape, device)
        peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1,
                                                      target_modules=["q", "v"] if seq2seq else ["q_proj", "v_proj"],
                                                      task_type=TaskType.SEQ_2_SEQ_LM if seq2seq else TaskType.CAUSAL_LM))
        base = timed(baseline_epoch(peft_model, data, seq2seq, device, base_amp, batch), device, repeats)
        del peft_model, model
        emit({**base_info, "case": "train", "ours_precision": "bf16" if amp else "fp32",
              "baseline_precision": "bf16" if base_amp else "fp32", "batch": batch, "examples": len(data),
              "ours_examples_per_s": round(len(data) / ours, 2), "baseline_examples_per_s": round(len(data) / base, 2),
              "speedup": round(base / ours, 2)})


def bench_scaling(shape, device, data, amp, batch, repeats, base_info):
    step_data = data[:batch * 2]
    for fold in (True, False):
        times = {}
        for earlier in (1, 4, 15):
            model, seq2seq = build_model(shape, device)
            lora, method, settings = make_lora(model, seq2seq, earlier + 1, fold=fold)
            times[earlier] = timed(our_epoch(lora, method, settings, step_data, seq2seq, device, amp, batch),
                                   device, repeats) / math.ceil(len(step_data) / batch)
            del lora, model
        emit({**base_info, "case": "scaling", "folded": fold, "precision": "bf16" if amp else "fp32",
              "step_s": {str(k): round(v, 4) for k, v in times.items()},
              "ratio_15_vs_1": round(times[15] / times[1], 3), "ratio_4_vs_1": round(times[4] / times[1], 3)})


def bench_eval(shape, device, data, amp, batch_ours, batch_ref, repeats, base_info, new_tokens=5, profile=False):
    from nlora.evaluate import sequence_logprobs

    model, seq2seq = build_model(shape, device)
    lora, _, _ = make_lora(model, seq2seq, 1, fold=True)
    prompts = [Encoded(e.source, []) for e in data]
    gen_kw = dict(max_new_tokens=new_tokens, do_sample=False, num_beams=1, pad_token_id=0, eos_token_id=1)
    labels = [[5, 6, 1], [7, 1], [8, 9, 1]]  # three candidate answers, EOS included

    @torch.no_grad()
    def generate(order, bs, amp_dtype, merged):
        lora.model.eval()
        with lora.merged(lora.active()) if merged else contextlib.nullcontext():
            for s in range(0, len(order), bs):
                rows = [prompts[i] for i in order[s:s + bs]]
                b = {k: v.to(device) for k, v in collate_prompts(rows, 0, seq2seq).items()}
                with autocast(device, amp_dtype):
                    lora.model.generate(**b, **gen_kw)

    @torch.no_grad()
    def score(order, bs):
        lora.model.eval()
        per = max(1, bs // len(labels))
        with lora.merged(lora.active()):
            for s in range(0, len(order), per):
                rows = [Encoded(prompts[i].source, lab) for i in order[s:s + per] for lab in labels]
                b = {k: v.to(device) for k, v in collate_train(rows, 0, seq2seq).items()}
                with autocast(device, amp):
                    sequence_logprobs(lora.model, b, seq2seq)

    by_length = sorted(range(len(prompts)), key=lambda i: -len(prompts[i].source))
    cases = {"ours": lambda: generate(by_length, batch_ours, amp, True),
             "reference": lambda: generate(list(range(len(prompts))), batch_ref, None, False),
             "score": lambda: score(by_length, batch_ours)}
    secs = {name: timed(fn, device, repeats) for name, fn in cases.items()}
    common = {**base_info, "ours_precision": "bf16" if amp else "fp32", "baseline_precision": "fp32",
              "ours_batch": batch_ours, "baseline_batch": batch_ref, "prompts": len(prompts)}
    n = len(prompts)
    emit({**common, "case": "eval", "new_tokens": new_tokens, "ours_prompts_per_s": round(n / secs["ours"], 2),
          "baseline_prompts_per_s": round(n / secs["reference"], 2), "speedup": round(secs["reference"] / secs["ours"], 2)})
    emit({**common, "case": "eval-score", "labels": len(labels), "ours_prompts_per_s": round(n / secs["score"], 2),
          "baseline_prompts_per_s": round(n / secs["reference"], 2), "speedup": round(secs["reference"] / secs["score"], 2)})
    if profile:
        from torch.profiler import ProfilerActivity, profile as torch_profile

        for name in ("ours", "reference"):
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with torch_profile(activities=acts) as prof:
                cases[name]()
            top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]
            emit({**base_info, "case": f"profile-eval-{name}",
                  "top_ops_self_cpu_ms": {e.key: round(e.self_cpu_time_total / 1000, 1) for e in top}})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--examples", type=int, help="training examples per timed pass (default by shape)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="ours; baseline runs both")
    p.add_argument("--cases", default="train,scaling,eval")
    p.add_argument("--profile", action="store_true", help="also print the top operators of both eval paths")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.shape in ("t5-large", "llama-7b") and device.type != "cuda":
        emit({"shape": args.shape, "skipped": "needs a GPU (random-init shapes of this size are GPU cases)"})
        return
    n = args.examples or {"tiny": 64, "t5-tiny": 64, "smollm2": 32}.get(args.shape, 256)
    lengths, source = prompt_lengths(n, 0)
    vocab = SHAPES[args.shape][1].get("vocab_size", 512)
    data = examples(lengths, vocab, 0)
    amp = torch.bfloat16 if args.precision == "bf16" else None
    info = {"shape": args.shape, "device": machine_name(device), "torch": torch.__version__, "lengths": source,
            "median_prompt_tokens": statistics.median(lengths)}
    cases = args.cases.split(",")
    if "train" in cases:
        bench_train(args.shape, device, data, amp, args.batch, args.repeats, info)
    if "scaling" in cases:
        bench_scaling(args.shape, device, data, amp, args.batch, args.repeats, info)
    if "eval" in cases:
        ref_batch = 512 if SHAPES[args.shape][0] == "t5" else 16
        bench_eval(args.shape, device, data, amp, max(64, ref_batch), min(ref_batch, n), args.repeats, info,
                   profile=args.profile)


if __name__ == "__main__":
    main()
