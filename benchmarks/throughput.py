"""Speed and peak memory of nlora's own code paths against the release's settings, in one process, same examples.

    python benchmarks/throughput.py --shape smollm2                 # CPU: SmolLM2-135M shapes, random weights
    python benchmarks/throughput.py --shape smollm2 --cases e2e     # CPU: a whole 3-task run on SmolLM2, both ways
    python benchmarks/throughput.py --shape tiny                    # CPU, seconds (the tests run this)
    python benchmarks/throughput.py --shape t5-large                # GPU
    python benchmarks/throughput.py --shape llama-7b                # GPU

"Ours" is what a user runs: ``nlora.train.train_task`` (with the tokenisation the recipe does before it) and
``nlora.evaluate.predict_tasks`` (on merged weights, as the recipe calls it), at the defaults a user gets
(``precision auto``: fp32 on a CPU, bf16 autocast on a GPU; n-lora, batch 8, gradient clipping 1.0; eval batch
32 on a CPU, 128 on a GPU), and the same with ``--precision bf16`` where that is not the default. Baselines,
written here as a user would write them with PEFT (never nlora's helpers):
- ``reference``: the release's way. Random batches padded to the longest in the batch, the model's own loss over
  full logits, fp32, PEFT LoRA in eager mode, earlier tasks' adapters live (stacked into one frozen LoRA of rank
  8 x earlier tasks, as the release keeps them), N-LoRA's L1 penalty, clipping 1.0; evaluation by HF generate in
  dataset order, batch 16 (T5: 512), with the LoRA branches live;
- ``peft-bf16``: the same under bf16 autocast (a competent PEFT user);
- ``reference-pad512`` (``--cases train-pad512``): every batch padded to 512 tokens, the previous benchmark's
  baseline, kept only as a labelled extra.

Cases (``--cases``): ``train`` (per step), ``scaling`` (step time after 15 earlier tasks against task 1),
``eval`` (generation and label scoring against the reference's generation), ``e2e`` (a whole ``nlora run``
through ``nlora.recipe.run`` against the same run done the release's way, real SmolLM2 and real CL_Benchmark
data; skipped when either is absent). Timed variants are interleaved (A, B, A, B, ...) after one warm-up each,
and each figure is the median over ``--repeats``. One JSON line per case: every variant's time, the ratios,
peak memory (CPU: the process's peak RSS while the variant ran, and that peak above the RSS it started from;
GPU: max_memory_allocated), the machine and the load average (the machine may be shared). ``--profile`` adds
the top operators of each variant.

Speed does not depend on the weights, so the component cases use random weights at the named shapes, the
SmolLM2 tokenizer (ByT5 bytes for the tiny shapes) and real prompts (../shared/CL_Benchmark, or --data-dir;
synthetic prompts of CL_Benchmark-like lengths without it). Random weights never emit EOS, so generation is
capped at ``--new-tokens`` (default 5: a label and EOS, where a trained model stops) for every variant alike.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gc
import json
import math
import os
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

import nlora.evaluate as nlora_evaluate
import nlora.recipe as nlora_recipe
import nlora.train as nlora_train
from nlora.adapters import LoraBank
from nlora.config import TaskSettings, resolve
from nlora.data import Example, TaskData, load_tasks, resolve_task_dirs
from nlora.dist import machine_name
from nlora.errors import NloraError
from nlora.families import family_of
from nlora.methods import build_method
from nlora.metrics import exact_match
from nlora.models import LoadedModel, autocast_dtype, default_target_modules
from nlora.prompts import ANSWER_MARKER, build_prompt, load_instructions
from nlora.runtime import Runtime, default_eval_batch, make_runtime

SHARED = Path(__file__).resolve().parents[2] / "shared" / "CL_Benchmark"
SHAPES = {
    "tiny": (
        "llama",
        dict(
            vocab_size=384,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        ),
    ),
    "t5-tiny": (
        "t5",
        dict(vocab_size=384, d_model=64, d_ff=128, d_kv=16, num_layers=2, num_heads=4, feed_forward_proj="relu"),
    ),
    "smollm2": (
        "llama",
        dict(
            vocab_size=49152,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            tie_word_embeddings=True,
        ),
    ),
    "llama-7b": (
        "llama",
        dict(
            vocab_size=32000,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
        ),
    ),
    "t5-large": (
        "t5",
        dict(vocab_size=32128, d_model=1024, d_ff=4096, d_kv=64, num_layers=24, num_heads=16, feed_forward_proj="relu"),
    ),
}
TASKS = "agnews,amazon,MNLI,QQP"
E2E_TASKS = "agnews,MNLI,QQP"
MAX_SOURCE, MAX_TARGET = 512, 50  # nlora's defaults and the release's
REFERENCE_EVAL_BATCH = {"llama": 16, "t5": 512}  # the release's per-device eval batch (reference_runs.json)
RECORDS: list[dict] = []  # every line emitted, for callers (benchmarks/paper.py)


def emit(rec: dict) -> None:
    RECORDS.append(rec)
    print(json.dumps(rec), flush=True)


# ----------------------------------------------------------------------------------------------- measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _return_free_memory() -> None:
    """glibc keeps freed memory for reuse; hand it back to the OS (elsewhere: nothing)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory while a block runs. GPU: max_memory_allocated. CPU: the process's peak RSS (VmHWM, reset
    through /proc/self/clear_refs where Linux allows; else ru_maxrss, the peak since the process started)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mib = self.above_start_mib = None
        self.exact = True

    def __enter__(self):
        sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        gc.collect()
        _return_free_memory()  # what an earlier variant freed must not hide this one's use
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # peak RSS := current RSS
        except OSError:
            self.exact = False
        self.start = (_rss_kib("VmRSS") or 0) * 1024
        return self

    def __exit__(self, *exc):
        sync(self.device)
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            hwm = _rss_kib("VmHWM") if self.exact else None
            peak = (hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        self.peak_mib = round(peak / 2**20, 1)
        self.above_start_mib = round(max(0, peak - self.start) / 2**20, 1)
        return False


def interleaved(variants: dict, device: torch.device, repeats: int, warmups: dict | None = None) -> dict:
    """Each variant once as warm-up (``warmups[name]`` if given, a smaller call), then ``repeats`` rounds of
    A, B, C, ... in turn. Returns per variant: median seconds, every time, and the peak memory over its runs."""
    for name, fn in variants.items():
        (warmups or {}).get(name, fn)()
    times = {name: [] for name in variants}
    mem = {name: [0.0, 0.0] for name in variants}
    for r in range(repeats):
        names = list(variants) if r % 2 == 0 else list(variants)[::-1]  # no variant always runs first
        for name in names:
            with PeakMemory(device) as pm:
                start = time.perf_counter()
                variants[name]()
                sync(device)
                times[name].append(time.perf_counter() - start)
            mem[name] = [max(mem[name][0], pm.peak_mib), max(mem[name][1], pm.above_start_mib)]
    return {
        name: {
            "median_s": statistics.median(ts),
            # to the microsecond: a pass at tiny shapes takes a few ms, where whole ms moved a ratio of two
            # medians by several percent (1.09 from the listed times against 1.12 from the measured ones)
            "times_s": [round(t, 6) for t in ts],
            "peak_mib": mem[name][0],
            "above_start_mib": mem[name][1],
        }
        for name, ts in times.items()
    }


def memory_field(device: torch.device) -> str:
    return "peak_gpu_allocated_mib" if device.type == "cuda" else "peak_rss_mib"


def common_info(args, device: torch.device) -> dict:
    return {
        "shape": args.shape,
        "device": machine_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b > 0 else float("nan")


def profile_top(fn, device: torch.device, top: int = 10) -> dict:
    """The operators taking most self time in one call of fn."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: -getattr(e, key))[:top]
    return {e.key: round(getattr(e, key) / 1000, 1) for e in events}


# ---------------------------------------------------------------------------------------------- model, data


def build_model(shape: str, device: torch.device, vocab: int | None = None):
    """A random-initialised model at the named shape (seeded: every copy starts identical)."""
    kind, kw = SHAPES[shape]
    kw = {**kw, "vocab_size": vocab or kw["vocab_size"]}
    torch.manual_seed(0)
    if kind == "t5":
        from transformers import T5Config, T5ForConditionalGeneration

        cfg = T5Config(**kw, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0)
        return T5ForConditionalGeneration(cfg).to(device), True
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**kw, max_position_embeddings=2048, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    return LlamaForCausalLM(cfg).to(device), False


def load_tokenizer(shape: str):
    """ByT5 bytes for the tiny shapes (no files); the SmolLM2 tokenizer otherwise (its vocabulary then sizes
    the model: 49152 for every shape but tiny, so prompts have real token counts)."""
    if shape in ("tiny", "t5-tiny"):
        from transformers import ByT5Tokenizer

        return ByT5Tokenizer(), "ByT5 bytes"
    from nlora.models import load_model

    tok = load_model("smollm2").tokenizer
    return tok, "SmolLM2 tokenizer"


def bench_tasks(
    data_dir: Path | None, names: list[str], n_train: int, n_test: int, seed: int
) -> tuple[list[TaskData], str]:
    """The tasks' train and test examples as nlora reads them (same prompts as a run); synthetic prompts of
    CL_Benchmark-like lengths when the data is absent."""
    if data_dir is not None and data_dir.is_dir():
        tasks = load_tasks(
            data_dir,
            names,
            load_instructions(None),
            max_train=n_train,
            max_test=n_test,
            seed=seed,
            unknown_labels="drop",
        )
        return [tasks[n] for n in names], str(data_dir)
    rng = random.Random(seed)
    words = [
        "the",
        "of",
        "market",
        "team",
        "price",
        "game",
        "said",
        "new",
        "year",
        "first",
        "film",
        "good",
        "bad",
        "product",
        "quality",
    ]
    out = []

    def example(name: str, labels: list[str]) -> Example:
        sentence = " ".join(rng.choice(words) for _ in range(int(rng.lognormvariate(4.0, 0.5))))
        return Example(build_prompt("TC", name, sentence, labels, "Pick the option.\n"), rng.choice(labels))

    for name, labels in (
        ("agnews", ["World", "Sports", "Business", "Science or Technology"]),
        ("MNLI", ["neutral", "entailment", "contradiction"]),
    ):
        out.append(
            TaskData(
                name,
                "TC",
                labels,
                {
                    "train": [example(name, labels) for _ in range(n_train)],
                    "test": [example(name, labels) for _ in range(n_test)],
                },
            )
        )
    return out, "synthetic (no CL_Benchmark)"


def user_config(**overrides):
    """The RunConfig a user gets from `nlora run` with no options but the required ones."""
    return resolve(overrides={"model": "m", "data_dir": "d", "output_dir": "o", "task_names": ["t"], **overrides})


# --------------------------------------------------------------------------------------------- ours


class Ours:
    """nlora's real code: LoraBank + the default method (n-lora), train_task and predict_tasks."""

    def __init__(
        self,
        model,
        tok,
        device,
        amp,
        earlier: int = 0,
        batch: int | None = None,
        compile=False,
        cast_frozen=True,
    ):
        self.cfg = cfg = user_config()
        self.compile = compile  # --compile: torch.compile the training forward
        self.tok, self.device, self.amp = tok, device, amp
        self.family = family_of(model)
        self.lora = LoraBank(model, cfg.lora, default_target_modules(model), self.family)
        self.method = build_method(cfg)
        base = cfg.tasks[0]
        self.settings = TaskSettings(
            name=base.name,
            lr=base.lr,
            epochs=base.epochs,
            batch_size=batch or base.batch_size,
            grad_accum=base.grad_accum,
            method_options=base.method_options,
        )
        for t in range(earlier + 1):  # as the recipe: begin_task folds the finished tasks' adapters
            self.method.begin_task(self.lora, t, self.settings)
        if cast_frozen:  # as the recipe: under bf16 autocast, frozen linear weights stored in bf16 (False: ablation)
            nlora_recipe.store_frozen_weights(self.runtime(cfg.max_target_length), self.method, self.lora)

    def train(self, examples: list[Example]) -> None:
        cfg = self.cfg
        rt = self.runtime(cfg.max_target_length)
        data = rt.encode(examples)
        loop = nlora_train.TrainLoop(seed=cfg.seed, max_grad_norm=cfg.max_grad_norm, compile_model=self.compile)
        nlora_train.train_task(rt, self.lora, self.method, data, self.settings, loop)

    def runtime(self, max_target: int, mode: str = "generate", share_prefix: bool = True) -> Runtime:
        """The recipe's own Runtime for this config (``make_runtime``), at this benchmark's precision;
        ``max_target``: the answer tokens trained on, or generated at most."""
        cfg = dataclasses.replace(
            self.cfg,
            precision="bf16" if self.amp == torch.bfloat16 else "fp32",
            max_target_length=max_target,
            eval_mode=mode,
        )
        loaded = LoadedModel(model=self.lora.model, tokenizer=self.tok, family=self.family, name="benchmark")
        return dataclasses.replace(make_runtime(cfg, loaded, self.device), share_prefix=share_prefix)

    def predict(self, tasks: list[TaskData], mode: str, new_tokens: int, share_prefix: bool = True) -> list:
        """As the recipe's evaluate_and_write: predict_tasks on weights merged with the active adapters
        (``share_prefix`` False: the ablation without the shared prompt prefix)."""
        cfg = self.cfg
        with self.lora.merged(self.lora.active()):
            rt = self.runtime(new_tokens if mode == "generate" else cfg.max_target_length, mode, share_prefix)
            return nlora_evaluate.predict_tasks(self.lora.model, rt, tasks)


# --------------------------------------------------------------------------------------------- reference


class Reference:
    """The release's settings written with PEFT as a user would: one PEFT model; the finished tasks' LoRAs kept
    live as one frozen LoRA of rank 8 x (tasks so far) (the release stacks them so), a fresh trainable LoRA for
    the current task; random batches padded to the longest; the model's own loss; N-LoRA's L1 term; AdamW,
    clipping 1.0; HF generate for evaluation. ``pad_to``: pad every batch to that many tokens instead."""

    def __init__(self, model, seq2seq: bool, tok, device, amp, lam: float = 0.4, pad_to: int | None = None):
        from peft import LoraConfig, TaskType, get_peft_model

        self.tok, self.seq2seq, self.device, self.amp, self.lam, self.pad_to = tok, seq2seq, device, amp, lam, pad_to
        self.targets = default_target_modules(model)
        self.task_type = TaskType.SEQ_2_SEQ_LM if seq2seq else TaskType.CAUSAL_LM
        self._config = lambda r: LoraConfig(
            r=r, lora_alpha=4 * r, lora_dropout=0.1, target_modules=self.targets, task_type=self.task_type
        )
        self.model = get_peft_model(model, self._config(8), adapter_name="task0")
        self.finished: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = []  # per task: module -> (A, B)
        self.current = "task0"
        self._activate()

    def _layers(self):
        from peft.tuners.lora import LoraLayer

        return [(n, m) for n, m in self.model.named_modules() if isinstance(m, LoraLayer)]

    def _activate(self) -> None:
        names = (["previous"] if self.finished else []) + [self.current]
        self.model.set_adapter(self.current)  # the PeftModel's own record of its active adapter
        self.model.base_model.set_adapter(names)  # every named LoRA adds to the output
        for n, p in self.model.named_parameters():
            p.requires_grad = f".{self.current}." in n and "lora_" in n
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]

    def next_task(self) -> None:
        """Finish the current task: its factors join the stacked frozen LoRA; a fresh LoRA trains next."""
        self.finished.append(
            {
                n: (m.lora_A[self.current].weight.detach().clone(), m.lora_B[self.current].weight.detach().clone())
                for n, m in self._layers()
            }
        )
        t = len(self.finished)
        if "previous" in self.model.peft_config:
            self.model.delete_adapter("previous")
        self.model.delete_adapter(self.current)
        self.model.add_adapter("previous", self._config(8 * t))
        with torch.no_grad():
            for n, m in self._layers():
                m.lora_A["previous"].weight.copy_(torch.cat([f[n][0] for f in self.finished], 0))
                m.lora_B["previous"].weight.copy_(torch.cat([f[n][1] for f in self.finished], 1))
        self.current = f"task{t}"
        self.model.add_adapter(self.current, self._config(8))
        self._activate()

    def _rows(self, examples: list[Example]) -> list[tuple[list[int], list[int]]]:
        """(input ids, labels) per example; decoder-only: BOS + prompt + label + EOS, loss on label + EOS."""
        tok = self.tok
        if self.seq2seq:
            src = tok([e.prompt for e in examples], max_length=MAX_SOURCE, truncation=True)["input_ids"]
            lab = tok([e.label for e in examples], max_length=MAX_TARGET, truncation=True)["input_ids"]
            return list(zip(src, lab))
        bos = tok.bos_token or ""
        prompts = tok([bos + e.prompt for e in examples], max_length=MAX_SOURCE, truncation=True)["input_ids"]
        labels = tok([e.label for e in examples], add_special_tokens=False)["input_ids"]
        answers = [lab[: MAX_TARGET - 1] + [tok.eos_token_id] for lab in labels]
        return [(p + a, [-100] * len(p) + a) for p, a in zip(prompts, answers)]

    def _collate(self, rows) -> dict[str, torch.Tensor]:
        pad = self.tok.pad_token_id
        if self.seq2seq:  # the source padded on the right, labels with -100
            width = self.pad_to or max(len(s) for s, _ in rows)
            lw = max(len(lab) for _, lab in rows)
            ids = [s + [pad] * (width - len(s)) for s, _ in rows]
            mask = [[1] * len(s) + [0] * (width - len(s)) for s, _ in rows]
            labels = [lab + [-100] * (lw - len(lab)) for _, lab in rows]
        else:  # left padding, as the release's decoder collator
            width = max(self.pad_to or 0, max(len(s) for s, _ in rows))
            ids = [[pad] * (width - len(s)) + s for s, _ in rows]
            mask = [[0] * (width - len(s)) + [1] * len(s) for s, _ in rows]
            labels = [[-100] * (width - len(s)) + lab for s, lab in rows]
        return {
            k: torch.tensor(v, device=self.device)
            for k, v in (("input_ids", ids), ("attention_mask", mask), ("labels", labels))
        }

    def l1(self) -> torch.Tensor:
        """N-LoRA's term on the current task's update: lambda * sum over layers |s B A|."""
        total = torch.zeros((), device=self.device)
        for _, m in self._layers():
            total = (
                total
                + (m.scaling[self.current] * m.lora_B[self.current].weight @ m.lora_A[self.current].weight).abs().sum()
            )
        return self.lam * total

    def train(self, examples: list[Example], batch: int = 8, lr: float = 1e-3, seed: int = 42) -> None:
        rows = self._rows(examples)
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)  # HF Trainer's random sampler, no grouping by length
        opt = torch.optim.AdamW(self.trainable, lr=lr, weight_decay=0.0)
        self.model.train()
        for s in range(0, len(order), batch):
            b = self._collate([rows[i] for i in order[s : s + batch]])
            with torch.autocast(self.device.type, dtype=self.amp) if self.amp else contextlib.nullcontext():
                loss = self.model(**b).loss
            (loss + self.l1()).backward()
            torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def predict(self, tasks: list[TaskData], new_tokens: int, batch: int) -> list[list[str]]:
        """HF generate over each test set in file order, LoRA branches live; the answer as the release reads it."""
        tok = self.tok
        self.model.eval()
        side, tok.padding_side = tok.padding_side, ("right" if self.seq2seq else "left")
        out = []
        try:
            for task in tasks:
                prompts = [e.prompt if self.seq2seq else (tok.bos_token or "") + e.prompt for e in task.splits["test"]]
                answers = []
                for s in range(0, len(prompts), batch):
                    enc = tok(
                        prompts[s : s + batch],
                        max_length=MAX_SOURCE,
                        truncation=True,
                        padding="longest",
                        return_tensors="pt",
                    ).to(self.device)
                    with torch.autocast(self.device.type, dtype=self.amp) if self.amp else contextlib.nullcontext():
                        gen = self.model.generate(
                            **enc,
                            max_new_tokens=new_tokens,
                            do_sample=False,
                            num_beams=1,
                            pad_token_id=tok.pad_token_id,
                            eos_token_id=tok.eos_token_id,
                        )
                    texts = tok.batch_decode(gen, skip_special_tokens=True)
                    answers += [t.strip() if self.seq2seq else t.split(ANSWER_MARKER)[-1].strip() for t in texts]
                out.append(answers)
        finally:
            tok.padding_side = side
        return out


# --------------------------------------------------------------------------------------------- cases


def training_examples(tasks: list[TaskData], n: int, seed: int) -> list[Example]:
    """n training examples drawn from all the tasks (their mix of prompt lengths)."""
    pool = [e for t in tasks for e in t.splits["train"]]
    return random.Random(seed).sample(pool, min(n, len(pool)))


def bench_train(args, device, tok, tasks, info, pad512: bool = False) -> None:
    examples = training_examples(tasks, args.examples, 0)
    vocab = len(tok) if args.shape not in ("tiny", "t5-tiny") else None
    default_amp = autocast_dtype("auto", device)
    runners, warm = {}, {}
    ours_variants = {"ours": default_amp}
    if args.also_bf16 and default_amp is None:
        ours_variants["ours-bf16"] = torch.bfloat16
    if args.ablate_frozen_cast:  # the same code keeping frozen weights in fp32, where autocast is on
        ours_variants.update({f"{k}-nocast": amp for k, amp in ours_variants.items() if amp is not None})
    if args.also_compile:
        ours_variants["ours-compile"] = default_amp
    for name, amp in ours_variants.items():
        model, _ = build_model(args.shape, device, vocab)
        o = Ours(
            model,
            tok,
            device,
            amp,
            batch=args.batch,
            compile=name == "ours-compile",
            cast_frozen=not name.endswith("-nocast"),
        )
        runners[name], warm[name] = (lambda o=o: o.train(examples)), (lambda o=o: o.train(examples[: args.batch]))
    base_variants = {"reference": None, "peft-bf16": torch.bfloat16}
    if args.no_bf16_baseline:
        del base_variants["peft-bf16"]
    if pad512:
        base_variants = {"reference-pad512": None}
    for name, amp in base_variants.items():
        model, seq2seq = build_model(args.shape, device, vocab)
        r = Reference(model, seq2seq, tok, device, amp, pad_to=MAX_SOURCE if pad512 else None)
        runners[name] = lambda r=r: r.train(examples, args.batch)
        warm[name] = lambda r=r: r.train(examples[: args.batch], args.batch)
    res = interleaved(runners, device, args.repeats, warm)
    steps = math.ceil(len(examples) / args.batch)
    rec = {
        **info,
        "case": "train-pad512" if pad512 else "train",
        "load_avg": load_avg(),
        "examples": len(examples),
        "batch": args.batch,
        "steps_per_pass": steps,
        "repeats": args.repeats,
        "s_per_step": {k: round(v["median_s"] / steps, 4) for k, v in res.items()},
        "examples_per_s": {k: round(len(examples) / v["median_s"], 2) for k, v in res.items()},
        "pass_times_s": {k: v["times_s"] for k, v in res.items()},
        memory_field(device): {k: v["peak_mib"] for k, v in res.items()},
        "above_start_mib": {k: v["above_start_mib"] for k, v in res.items()},
    }
    bases = [b for b in ("reference", "peft-bf16", "reference-pad512") if b in res]
    rec["speedup"] = {
        f"{o} vs {b}": ratio(res[b]["median_s"], res[o]["median_s"]) for o in ours_variants for b in bases
    }
    # the fields benchmarks/paper.py reads: ours at the user's defaults
    rec["ours_examples_per_s"] = rec["examples_per_s"]["ours"]
    rec["baseline_examples_per_s"] = rec["examples_per_s"][bases[0]]
    emit(rec)
    if args.profile:
        for name, fn in runners.items():
            emit(
                {
                    **info,
                    "case": f"profile-{rec['case']}-{name}",
                    "load_avg": load_avg(),
                    "top_ops_self_ms": profile_top(fn, device),
                }
            )


def bench_scaling(args, device, tok, tasks, info) -> None:
    """Step time of the task after 15 finished ones against task 1: ours (folded) and the reference (stacked)."""
    examples = training_examples(tasks, 2 * args.batch, 1)
    vocab = len(tok) if args.shape not in ("tiny", "t5-tiny") else None
    amp = autocast_dtype("auto", device)
    runners = {}
    for earlier in (0, 15):
        model, _ = build_model(args.shape, device, vocab)
        o = Ours(model, tok, device, amp, earlier=earlier, batch=args.batch)
        runners[f"ours-task{earlier + 1}"] = lambda o=o: o.train(examples)
    for earlier in (0, 15):
        model, seq2seq = build_model(args.shape, device, vocab)
        r = Reference(model, seq2seq, tok, device, None)
        for _ in range(earlier):
            r.next_task()
        runners[f"reference-task{earlier + 1}"] = lambda r=r: r.train(examples, args.batch)
    res = interleaved(runners, device, args.repeats)
    steps = math.ceil(len(examples) / args.batch)
    emit(
        {
            **info,
            "case": "scaling",
            "load_avg": load_avg(),
            "batch": args.batch,
            "steps_per_pass": steps,
            "repeats": args.repeats,
            "ours_precision": "bf16" if amp else "fp32",
            "s_per_step": {k: round(v["median_s"] / steps, 4) for k, v in res.items()},
            "pass_times_s": {k: v["times_s"] for k, v in res.items()},
            "ratio_task16_vs_task1": {
                "ours (folded)": ratio(res["ours-task16"]["median_s"], res["ours-task1"]["median_s"]),
                "reference (stacked, live)": ratio(
                    res["reference-task16"]["median_s"], res["reference-task1"]["median_s"]
                ),
            },
            memory_field(device): {k: v["peak_mib"] for k, v in res.items()},
        }
    )


def bench_eval(args, device, tok, tasks, info) -> None:
    vocab = len(tok) if args.shape not in ("tiny", "t5-tiny") else None
    default_amp = autocast_dtype("auto", device)
    ours_amps = {"": default_amp}
    if args.also_bf16 and default_amp is None:
        ours_amps["-bf16"] = torch.bfloat16
    if args.ablate_frozen_cast:
        ours_amps.update({f"{k}-nocast": amp for k, amp in ours_amps.items() if amp is not None})
    runners = {}
    for suffix, amp in ours_amps.items():
        model, _ = build_model(args.shape, device, vocab)
        o = Ours(model, tok, device, amp, cast_frozen=not suffix.endswith("-nocast"))
        runners[f"ours-generate{suffix}"] = lambda o=o: o.predict(tasks, "generate", args.new_tokens)
        runners[f"ours-score{suffix}"] = lambda o=o: o.predict(tasks, "score", args.new_tokens)
        if args.ablate_prefix and not suffix:  # the same code with the shared prompt prefix switched off
            runners["ours-generate-noprefix"] = lambda o=o: o.predict(tasks, "generate", args.new_tokens, False)
            runners["ours-score-noprefix"] = lambda o=o: o.predict(tasks, "score", args.new_tokens, False)
    ref_batch = REFERENCE_EVAL_BATCH[SHAPES[args.shape][0]]
    for name, amp in (("reference", None), ("peft-bf16", torch.bfloat16))[: 1 if args.no_bf16_baseline else 2]:
        model, seq2seq = build_model(args.shape, device, vocab)
        r = Reference(model, seq2seq, tok, device, amp)
        runners[name] = lambda r=r: r.predict(tasks, args.new_tokens, ref_batch)
    res = interleaved(runners, device, args.repeats)
    n = sum(len(t.splits["test"]) for t in tasks)
    ours_default = "ours-generate" if "ours-generate" in res else next(iter(res))
    rec = {
        **info,
        "case": "eval",
        "load_avg": load_avg(),
        "test_prompts": n,
        "tasks": [t.name for t in tasks],
        "labels_per_task": [len(t.labels) for t in tasks],
        "new_tokens": args.new_tokens,
        "ours_batch": user_config().eval_batch_size or default_eval_batch(device),
        "reference_batch": ref_batch,
        "repeats": args.repeats,
        "prompts_per_s": {k: round(n / v["median_s"], 2) for k, v in res.items()},
        "pass_times_s": {k: v["times_s"] for k, v in res.items()},
        "speedup": {
            f"{k} vs {b}": ratio(res[b]["median_s"], v["median_s"])
            for k, v in res.items()
            if k.startswith("ours")
            for b in ("reference", "peft-bf16")
            if b in res
        },
        memory_field(device): {k: v["peak_mib"] for k, v in res.items()},
        "above_start_mib": {k: v["above_start_mib"] for k, v in res.items()},
    }
    rec["ours_prompts_per_s"] = rec["prompts_per_s"][ours_default]  # read by benchmarks/paper.py
    rec["baseline_prompts_per_s"] = rec["prompts_per_s"]["reference"]
    emit(rec)
    if args.profile:
        for name, fn in runners.items():
            emit(
                {
                    **info,
                    "case": f"profile-eval-{name}",
                    "load_avg": load_avg(),
                    "top_ops_self_ms": profile_top(fn, device),
                }
            )


def reference_run(
    model_name: str,
    data_dir: Path,
    names: list[str],
    n_train: int,
    n_test: int,
    device,
    seed: int = 42,
    batch: int = 8,
    lr: float = 1e-3,
) -> dict:
    """The same continual run in the release's settings: every task trained with the reference loop, then every
    task seen so far evaluated by generation (the release's matrix), fp32, on one PEFT model."""
    from nlora.models import load_model

    start = time.perf_counter()
    # the same sample as the run's (MNLI's test set has '-' labels: dropped by both)
    tasks = load_tasks(
        data_dir, names, load_instructions(None), max_train=n_train, max_test=n_test, seed=seed, unknown_labels="drop"
    )
    loaded = load_model(model_name)
    ref = Reference(loaded.model.to(device), loaded.seq2seq, loaded.tokenizer, device, None)
    ordered = [tasks[n] for n in names]
    ref_batch = REFERENCE_EVAL_BATCH["t5" if loaded.seq2seq else "llama"]
    matrix, train_s, eval_s = [], 0.0, 0.0
    for t, task in enumerate(ordered):
        if t:
            ref.next_task()
        torch.manual_seed(seed + t)
        t0 = time.perf_counter()
        ref.train(task.splits["train"], batch, lr, seed + t)
        seen = ordered[: t + 1]
        t1 = time.perf_counter()
        preds = ref.predict(seen, MAX_TARGET, ref_batch)
        train_s, eval_s = train_s + t1 - t0, eval_s + time.perf_counter() - t1
        matrix.append(
            [
                100 * statistics.mean(exact_match(p, e.label) for p, e in zip(ps, s.splits["test"]))
                for ps, s in zip(preds, seen)
            ]
        )
    return {
        "wall_s": time.perf_counter() - start,
        "aa": statistics.mean(matrix[-1]),
        "matrix": matrix,
        "train_s": train_s,
        "eval_s": eval_s,
    }


def ours_run(
    model_name: str, data_dir: Path, names: list[str], n_train: int, n_test: int, out: Path, **overrides
) -> dict:
    """`nlora run` as a user starts it (nlora.recipe.run: data, model, training, evaluation, files)."""
    start = time.perf_counter()
    cfg = resolve(
        overrides={
            "model": model_name,
            "data_dir": str(data_dir),
            "output_dir": str(out),
            "task_names": names,
            "max_train_per_task": n_train,
            "max_test_per_task": n_test,
            "unknown_labels": "drop",
            **overrides,
        }
    )
    summary = nlora_recipe.run(cfg, overwrite=True)
    return {
        "wall_s": time.perf_counter() - start,
        "aa": summary["aa"],
        "matrix": summary["accuracy_matrix"],
        "train_s": sum(t["train_seconds"] for t in summary["per_task"]),  # as the run measured its parts
        "eval_s": sum(t["eval_seconds"] or 0.0 for t in summary["per_task"]),
    }


def bench_e2e(args, device, info) -> None:
    data_dir = Path(args.data_dir) if args.data_dir else SHARED
    names = args.e2e_tasks.split(",")
    base = {
        **info,
        "case": "e2e",
        "model": args.e2e_model,
        "tasks": names,
        "train_per_task": args.e2e_train,
        "test_per_task": args.e2e_test,
    }
    try:  # absent data or model: say so in the line, measure nothing
        resolve_task_dirs(data_dir, names)
        if args.e2e_model == "smollm2":
            from nlora.models import embedded_model_path

            embedded_model_path("smollm2")
    except NloraError as e:
        emit({**base, "skipped": str(e)})
        return
    # the defaults, and the defaults with label scoring (what we recommend for classification tasks)
    variants = {"ours": {}, "ours-score": {"eval_mode": "score"}}
    if args.e2e_model == "smollm2":
        from nlora.models import load_model

        load_model("smollm2")  # converts the GGUF file into nlora's cache once, before anything is timed
    results, mem = {}, {}
    with tempfile.TemporaryDirectory(prefix="nlora-bench-") as tmp:
        # untimed: the process's first passes (allocator growth, kernel set-up) would count against the first run
        ours_run(args.e2e_model, data_dir, names[:1], args.batch, 2, Path(tmp) / "warm-up", device=args.device)
        reference_run(args.e2e_model, data_dir, names[:1], args.batch, 2, device)
        order = ["ours", "reference"] + [v for v in variants if v != "ours"]
        for r in range(args.e2e_repeats):
            for name in order if r % 2 == 0 else order[::-1]:
                with PeakMemory(device) as pm:
                    if name == "reference":
                        res = reference_run(args.e2e_model, data_dir, names, args.e2e_train, args.e2e_test, device)
                    else:
                        res = ours_run(
                            args.e2e_model,
                            data_dir,
                            names,
                            args.e2e_train,
                            args.e2e_test,
                            Path(tmp) / f"{name}-{r}",
                            device=args.device,
                            **variants[name],
                        )
                results.setdefault(name, []).append(res)
                mem[name] = max(mem.get(name, 0.0), pm.peak_mib)
    wall = {k: statistics.median(x["wall_s"] for x in v) for k, v in results.items()}
    steps = len(names) * math.ceil(args.e2e_train / 8)
    generations = sum(args.e2e_test * (t + 1) for t in range(len(names)))
    emit(
        {
            **base,
            "load_avg": load_avg(),
            "batch": 8,
            "train_steps": steps,
            "test_generations": generations,
            "repeats": args.e2e_repeats,
            "settings": {
                "ours": "nlora run defaults (precision auto, eval generate)",
                "ours-score": "the same with --eval-mode score",
                "reference": "fp32, PEFT, padded to longest, random batches, live adapters, HF generate batch 16",
            },
            "wall_s": {k: round(v, 2) for k, v in wall.items()},
            "speedup": {f"{k} vs reference": ratio(wall["reference"], v) for k, v in wall.items() if k != "reference"},
            "train_s": {k: round(statistics.median(x["train_s"] for x in v), 2) for k, v in results.items()},
            "eval_s": {k: round(statistics.median(x["eval_s"] for x in v), 2) for k, v in results.items()},
            "eval_speedup": {
                f"{k} vs reference": ratio(
                    statistics.median(x["eval_s"] for x in results["reference"]),
                    statistics.median(x["eval_s"] for x in v),
                )
                for k, v in results.items()
                if k != "reference"
            },
            "aa": {k: round(v[-1]["aa"], 2) for k, v in results.items()},
            memory_field(device): mem,
        }
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--cases",
        default="train,scaling,eval,e2e",
        help="comma-separated: train, train-pad512 (labelled extra), scaling, eval, e2e",
    )
    p.add_argument("--data-dir", help="CL_Benchmark folder (default ../shared/CL_Benchmark)")
    p.add_argument("--tasks", default=TASKS, help="tasks whose prompts the component cases use")
    p.add_argument("--examples", type=int, help="training examples per timed pass (default by shape)")
    p.add_argument("--eval-per-task", type=int, help="test prompts per task in the eval case (default by shape)")
    p.add_argument("--batch", type=int, default=8, help="training batch (nlora's default 8)")
    p.add_argument("--new-tokens", type=int, default=5, help="generation cap in the eval case (random weights)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--also-bf16",
        action="store_true",
        help="where ours defaults to fp32 (CPU), also time ours with --precision bf16",
    )
    p.add_argument(
        "--no-bf16-baseline",
        action="store_true",
        help="leave out peft-bf16 in train and eval (a CPU without bf16 instructions, where it is the slowest)",
    )
    p.add_argument("--also-compile", action="store_true", help="train case: also ours with --compile")
    p.add_argument(
        "--ablate-prefix",
        action="store_true",
        help="eval case: also ours with the shared prompt prefix switched off (Runtime.share_prefix)",
    )
    p.add_argument(
        "--ablate-frozen-cast",
        action="store_true",
        help="train and eval: also every bf16 variant of ours with its frozen weights kept in fp32 (nlora.frozen)",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, one per core)")
    p.add_argument("--profile", action="store_true", help="also the top operators of every variant")
    p.add_argument("--e2e-model", default="smollm2")
    p.add_argument("--e2e-tasks", default=E2E_TASKS)
    p.add_argument("--e2e-train", type=int, default=48)
    p.add_argument("--e2e-test", type=int, default=24)
    p.add_argument("--e2e-repeats", type=int, default=1)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cases = args.cases.split(",")
    unknown = set(cases) - {"train", "train-pad512", "scaling", "eval", "e2e"}
    if unknown:
        p.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    info = common_info(args, device)
    if args.shape in ("t5-large", "llama-7b") and device.type != "cuda":
        emit({**info, "skipped": "needs a GPU (random-init shapes of this size are GPU cases)"})
        return
    component = [c for c in cases if c != "e2e"]
    if component:
        tok, tok_source = load_tokenizer(args.shape)
        small = args.shape in ("tiny", "t5-tiny")
        args.examples = args.examples or (16 if small else 32)
        per_task = args.eval_per_task or (4 if small else 8)
        data_dir = Path(args.data_dir) if args.data_dir else SHARED
        names = args.tasks.split(",")
        n_train = max(1, math.ceil(args.examples / len(names)) * 4)
        tasks, source = bench_tasks(data_dir, names, n_train, per_task, 0)
        lengths = [len(x) for x in tok([e.prompt for t in tasks for e in t.splits["train"]])["input_ids"]]
        info = {**info, "prompts": source, "tokenizer": tok_source, "median_prompt_tokens": statistics.median(lengths)}
        if "train" in cases:
            bench_train(args, device, tok, tasks, info)
        if "train-pad512" in cases:
            bench_train(args, device, tok, tasks, info, pad512=True)
        if "scaling" in cases:
            bench_scaling(args, device, tok, tasks, info)
        if "eval" in cases:
            eval_tasks = [TaskData(t.name, t.category, t.labels, {"test": t.splits["test"]}) for t in tasks]
            bench_eval(args, device, tok, eval_tasks, info)
    if "e2e" in cases:
        bench_e2e(args, device, common_info(args, device))


if __name__ == "__main__":
    main()
