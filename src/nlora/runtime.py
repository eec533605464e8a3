"""What every step of a run shares, built once and passed whole: the tokenizer, the model family, where and in
which precision it runs, the process group, and the encoding and evaluation settings.

Training (``train.train_task``), evaluation (``evaluate.predict_tasks``) and the recipe take a ``Runtime``
instead of a dozen positional settings; ``make_runtime`` is the one place a run's settings become one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .dist import Dist
from .families import ModelFamily
from .logits import autocast
from .models import LoadedModel, autocast_dtype


@dataclass
class Runtime:
    tokenizer: object
    family: ModelFamily
    device: torch.device
    amp_dtype: torch.dtype | None = None  # autocast dtype; None: fp32, no autocast
    dist: Dist = field(default_factory=Dist)
    max_source: int = 512  # prompt tokens kept (the cut is compat's)
    max_target: int = 50  # answer tokens trained on, and generated at most
    compat: str = "clean"  # the encoding: nlora's or the release's (batching)
    eval_mode: str = "generate"  # or "score": the most likely label
    eval_batch_size: int = 32  # prompts per evaluation batch (halved on out-of-memory)
    # run a batch's shared prompt prefix once in evaluation (scoring.py; same results up to float rounding)
    share_prefix: bool = True

    def shares_prefix(self) -> bool:
        """Whether evaluation runs a batch's shared prompt prefix once: not under sharding (every rank must
        make the same passes) nor under ``--compat reference`` (the release's batches, as it made them)."""
        return self.share_prefix and not self.dist.sharded and self.compat != "reference"

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def autocast(self):
        return autocast(self.device, self.amp_dtype)

    def on_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in batch.items()}

    def encode(self, examples: list) -> list:
        """Training pairs, encoded as the run's settings say."""
        return self.family.encode(self.tokenizer, examples, self.max_source, self.max_target, self.compat)

    def encode_prompts(self, prompts: list[str]) -> list:
        """Prompts as the model reads them in evaluation."""
        return self.family.encode_prompts(self.tokenizer, prompts, self.max_source, self.compat)

    def collate_train(self, examples: list) -> dict[str, torch.Tensor]:
        """A training batch, padded for the family, on the device."""
        return self.on_device(self.family.collate_train(examples, self.pad_id))

    def keeps_logits(self, model) -> bool:
        """Whether ``model``'s forward is asked for the answer positions' logits only: the one place this is
        decided (training, label scoring, method losses)."""
        return self.family.keeps_logits(model)


def default_eval_batch(device: torch.device) -> int:
    """Large on a GPU (evaluation is memory-light per example); out-of-memory halves it as needed."""
    return 128 if device.type == "cuda" else 32


def make_runtime(
    cfg, loaded: LoadedModel, device: torch.device, dist: Dist | None = None, eval_batch_size: int | None = None
) -> Runtime:
    """The run's Runtime from its config (``RunConfig``) and loaded model; ``eval_batch_size`` overrides the
    config's (``nlora eval --eval-batch-size``)."""
    return Runtime(
        tokenizer=loaded.tokenizer,
        family=loaded.family,
        device=device,
        amp_dtype=autocast_dtype(cfg.precision, device),
        dist=dist or Dist(),
        max_source=cfg.max_source_length,
        max_target=cfg.max_target_length,
        compat=cfg.compat,
        eval_mode=cfg.eval_mode,
        eval_batch_size=eval_batch_size or cfg.eval_batch_size or default_eval_batch(device),
    )
