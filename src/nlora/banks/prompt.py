"""The prompt bank on PEFT prompt tuning: soft prompts (trainable embeddings read before every input), one
active at a time, the model frozen; the only module that reads PEFT's prompt encoder."""

from __future__ import annotations

import copy
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import PeftModel, PromptTuningConfig, TaskType, get_peft_model

from ..errors import NloraError
from ..families import ModelFamily, as_family
from .files import MethodState, load_peft_adapter, save_peft_adapter


class PromptBank:
    """Owns the PEFT prompt-tuning model and the order of its prompts; only the active prompt trains."""

    kind = "prompt"

    def __init__(self, base_model, family: ModelFamily | bool):
        self.base_model = base_model
        self.task_type = TaskType(as_family(family).peft_task_type)  # an older caller may pass the seq2seq flag
        self.model: PeftModel | None = None
        self.adapters: list[str] = []  # prompts in creation order (snapshots not)
        self.state = MethodState()

    @property
    def current(self) -> str:
        return self.adapters[-1]

    def start(self, name: str, virtual_tokens: int) -> None:
        """Prompt ``name`` of ``virtual_tokens`` trainable embeddings before every input (made active; created
        unless it exists)."""
        if self.model is None:
            self.model = get_peft_model(self.base_model, self._config(virtual_tokens), adapter_name=name)
        elif name not in self.model.peft_config:  # one more prompt (progprompt: one per task)
            self.model.add_adapter(name, self._config(virtual_tokens))
        if name not in self.adapters:
            self.adapters.append(name)
        self.model.set_adapter(name)
        self._train_only_current()

    def _config(self, virtual_tokens: int) -> PromptTuningConfig:
        # One set of virtual tokens, also for encoder-decoders: prompt tuning feeds only the encoder, and PEFT's
        # default of one set per transformer stack leaves the decoder's set unused.
        return PromptTuningConfig(
            task_type=self.task_type, num_virtual_tokens=virtual_tokens, num_transformer_submodules=1
        )

    def _train_only_current(self) -> None:
        for pname, p in self.model.named_parameters():
            p.requires_grad = pname.startswith(f"prompt_encoder.{self.current}.")

    def activate(self, names: list[str]) -> None:
        """One soft prompt at a time: the last of ``names`` (none: nothing changes)."""
        if names:
            self.model.set_adapter(names[-1])
            self._train_only_current()

    def active(self) -> list[str]:
        return [self.model.active_adapter]

    def live_adapters(self) -> list[str]:
        return list(self.adapters)  # prompts are never folded

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @contextmanager
    def merged(self, names: list[str]) -> Iterator[None]:
        """Nothing to merge: a prompt is read, not added to weights."""
        yield

    @property
    def extras(self) -> dict[str, torch.nn.Module]:
        return self.state.modules

    def attach_extra(self, adapter: str, module: torch.nn.Module) -> torch.nn.Module:
        return self.state.attach(self.model, adapter, module)

    # ------------------------------------------------------------------ the prompts themselves

    def prompt_embedding(self, name: str) -> torch.nn.Parameter:
        """The soft prompt ``name``: virtual tokens x hidden size."""
        return self.model.prompt_encoder[name].embedding.weight

    @property
    def word_embeddings(self) -> torch.nn.Embedding:
        """The frozen input embeddings PEFT embeds the input ids with."""
        return self.model.word_embeddings

    def replace_prompt(self, name: str, embedding: torch.nn.Embedding) -> None:
        """Store prompt ``name``'s rows in ``embedding`` (it may hold more rows than a call reads: a pool)."""
        self.model.prompt_encoder[name].embedding = embedding

    def serve_prompts(self, select: Callable[[int], torch.Tensor]) -> None:
        """Each call's prompt is ``select(batch_size)`` (batch x tokens x d) instead of the active prompt's
        rows; every stored row of a prompt is saved (PEFT would save only the first ``virtual_tokens``)."""
        self.model.get_prompt = lambda batch_size, task_ids=None, max_cache_len=None: select(batch_size)
        self.model.get_prompt_embedding_to_save = types.MethodType(
            lambda peft_model, adapter_name: peft_model.prompt_encoder[adapter_name].embedding.weight.detach().cpu(),
            self.model,
        )

    # ------------------------------------------------------------------ snapshots

    def snapshot(self, source: str, name: str) -> str:
        """Copy prompt ``source`` into prompt ``name`` (created on first use), outside the prompt order."""
        previous = self.active()
        if name not in self.model.peft_config:
            self.model.add_adapter(name, copy.deepcopy(self.model.peft_config[source]))
        with torch.no_grad():
            self.prompt_embedding(name).copy_(self.prompt_embedding(source))
        self.activate(previous)
        return name

    @contextmanager
    def using(self, name: str) -> Iterator[None]:
        """Run the model with prompt ``name``, in eval mode; the active prompt and the mode come back after."""
        previous, was_training = self.active(), self.model.training
        self.model.set_adapter(name)
        self.model.eval()
        try:
            yield
        finally:
            self.activate(previous)
            self.model.train(was_training)

    # ------------------------------------------------------------------ files

    def save(self, adapter: str, dest: Path) -> None:
        """Write prompt ``adapter`` in PEFT format, atomically."""

        save_peft_adapter(self.model, self.state, adapter, dest)

    def load(self, adapter: str, src: Path) -> None:
        """Put the prompt saved by ``save`` back into the existing prompt ``adapter``."""
        saved, _ = load_peft_adapter(self.model, self.state, adapter, src)
        # PEFT loads the prompt itself and reports its key as unexpected: check the values instead
        if not torch.equal(self.prompt_embedding(adapter).detach().cpu(), saved["prompt_embeddings"].to(torch.float32)):
            raise NloraError(f"{src}: the soft prompt did not load")
