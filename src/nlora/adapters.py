"""Continual LoRA on upstream PEFT: one adapter per task, earlier ones frozen but kept in the forward pass."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.tuners.lora import LoraLayer

from .config import LoraSettings
from .errors import NloraError
from .io import read_safetensors


@dataclass
class LayerFactors:
    """One adapted layer's factors for one adapter: delta W = scaling * B @ A (B: out x r, A: r x in)."""

    module: str
    A: torch.Tensor
    B: torch.Tensor
    scaling: float


class ContinualLoRA:
    """Owns the PEFT model and the order of adapters; only the newest adapter trains."""

    def __init__(self, base_model, lora: LoraSettings, target_modules: list[str], seq2seq: bool, sharded: bool = False):
        self.base_model = base_model
        self.sharded = sharded  # base weights sharded by FSDP: no rank holds them whole to fold into
        self.lora_config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(target_modules),
            task_type=TaskType.SEQ_2_SEQ_LM if seq2seq else TaskType.CAUSAL_LM,
            bias="none",
        )
        self.model: PeftModel | None = None
        self.adapters: list[str] = []  # in creation order, folded ones included
        self.folded: dict[str, list[LayerFactors]] = {}  # name -> detached copies of its factors
        self.full = False  # full fine-tuning: no adapters, every weight trains (seq-ft)
        self.prompt = False  # prompt tuning: a soft prompt instead of LoRA (seq-prompt)
        # Method-owned modules that belong to an adapter (gates, keys, prototypes): registered under the model
        # (so they train, move and checkpoint with it) and saved/loaded with the adapter (EXTRA_FILE).
        self.extras: dict[str, torch.nn.Module] = {}
        self.mergeable = True  # False: adapters scaled per example (gates) must not be merged for evaluation

    def start_prompt(self, name: str, virtual_tokens: int) -> None:
        """Prompt tuning through PEFT: ``virtual_tokens`` trainable embeddings before every input."""
        from peft import PromptTuningConfig

        # One set of virtual tokens, also for encoder-decoders: prompt tuning feeds only the encoder, and PEFT's
        # default of one set per transformer stack leaves the decoder's set unused.
        config = PromptTuningConfig(
            task_type=self.lora_config.task_type, num_virtual_tokens=virtual_tokens, num_transformer_submodules=1
        )
        if self.model is None:
            self.model = get_peft_model(self.base_model, config, adapter_name=name)
            self.prompt = True
        elif name not in self.model.peft_config:  # one more prompt (progprompt: one per task)
            self.model.add_adapter(name, config)
        if name not in self.adapters:
            self.adapters.append(name)
        self.model.set_adapter(name)
        self._train_only_current_prompt()

    def _train_only_current_prompt(self) -> None:
        for pname, p in self.model.named_parameters():
            p.requires_grad = pname.startswith(f"prompt_encoder.{self.current}.")

    def prompt_embedding(self, name: str) -> torch.nn.Parameter:
        """The soft prompt ``name``: virtual tokens x hidden size."""
        return self.model.prompt_encoder[name].embedding.weight

    @property
    def current(self) -> str:
        return self.adapters[-1]

    def start_full(self, name: str = "full") -> None:
        """Full fine-tuning: the plain model, every parameter trainable; saved as a whole model."""
        self.full, self.model = True, self.base_model
        if name not in self.adapters:
            self.adapters.append(name)
        for p in self.model.parameters():
            p.requires_grad = True

    def start_adapter(self, name: str) -> None:
        """Add a fresh adapter ``name`` (or keep training it if it exists); freeze all others."""
        if self.model is None:
            self.model = get_peft_model(self.base_model, self.lora_config, adapter_name=name)
        elif name not in self.adapters:
            self.model.add_adapter(name, self.lora_config)
        if name not in self.adapters:
            self.adapters.append(name)
        # set_adapter with a list activates every adapter (they all add to the output) ...
        self.model.base_model.set_adapter(self.live_adapters())
        # ... and marks them all trainable, so freeze every adapter but ``name`` again.
        for pname, p in self.model.named_parameters():
            p.requires_grad = f".{name}." in pname and "lora_" in pname

    def activate(self, names: list[str]) -> None:
        """Only ``names`` take part in the forward pass; only the newest adapter stays trainable."""
        if self.full:
            return
        if self.prompt:  # one soft prompt at a time
            if names:
                self.model.set_adapter(names[-1])
                self._train_only_current_prompt()
            return
        self.model.base_model.set_adapter(list(names))
        for pname, p in self.model.named_parameters():
            p.requires_grad = f".{self.current}." in pname and "lora_" in pname

    def active(self) -> list[str]:
        if self.full:
            return []
        return [self.model.active_adapter] if self.prompt else list(self.model.base_model.active_adapters)

    def live_adapters(self) -> list[str]:
        return [a for a in self.adapters if a not in self.folded]

    def fold(self, name: str) -> None:
        """Add adapter ``name``'s update s*B@A into its layers' base weights and drop the adapter.

        Keeps the cost of a step flat in the number of earlier tasks: the model computes (W + dW) x instead
        of W x + sum over old tasks of s B (A x). Only done for fp32 base weights, so a small dW is never
        rounded into bf16; the factors stay available (``factors``) for regularisers such as O-LoRA's.
        """
        layers = self._fp32_layers([name])
        if layers is None:
            return
        copies = [
            LayerFactors(f.module, f.A.detach().clone(), f.B.detach().clone(), f.scaling) for f in self.factors(name)
        ]
        self._add_updates(layers, [name])
        self.model.base_model.set_adapter([a for a in self.live_adapters() if a != name])
        self.model.delete_adapter(name)
        self.folded[name] = copies

    def attach_extra(self, adapter: str, module: torch.nn.Module) -> torch.nn.Module:
        """Register ``module`` as adapter ``adapter``'s method state (parameters named ``cl_extras.<adapter>.*``,
        frozen unless the method says otherwise); it is saved and loaded with the adapter."""
        if "cl_extras" not in self.model._modules:
            self.model.add_module("cl_extras", torch.nn.ModuleDict())
        device = next(self.model.parameters()).device
        self.model.cl_extras[adapter] = module.to(device)
        self.extras[adapter] = module
        for p in module.parameters():
            p.requires_grad = False
        return module

    @contextmanager
    def merged(self, names: list[str]):
        """Evaluate on merged weights: the named adapters' updates are added to their fp32 base weights and
        the LoRA branches leave the forward pass; the exact weights are restored afterwards (a copy of the
        adapted layers' weights is kept meanwhile). Without fp32 weights, or without adapters, nothing changes."""
        layers = self._fp32_layers(names) if self.mergeable else None
        if not layers:
            yield
            return
        backup = [layer.get_base_layer().weight.detach().clone() for layer in layers]
        try:
            self._add_updates(layers, names)
            with self.model.disable_adapter():
                yield
        finally:
            with torch.no_grad():
                for layer, saved in zip(layers, backup):
                    layer.get_base_layer().weight.copy_(saved)

    def _fp32_layers(self, names: list[str]) -> list[LoraLayer] | None:
        """The layers holding any of ``names``; None unless all their base weights are fp32 (a small dW
        added to bf16 weights would be rounded away)."""
        if self.sharded:
            return None
        layers = [layer for _, layer in self.lora_layers() if any(n in layer.lora_A for n in names)]
        if any(layer.get_base_layer().weight.dtype != torch.float32 for layer in layers):
            return None
        return layers

    @staticmethod
    def _add_updates(layers: list[LoraLayer], names: list[str]) -> None:
        with torch.no_grad():
            for layer in layers:
                weight = layer.get_base_layer().weight
                for n in names:
                    if n in layer.lora_A:
                        weight += layer.get_delta_weight(n)

    def lora_layers(self) -> list[tuple[str, LoraLayer]]:
        return [(n, m) for n, m in self.model.named_modules() if isinstance(m, LoraLayer)]

    def factors(self, adapter: str) -> list[LayerFactors]:
        if adapter in self.folded:
            return self.folded[adapter]
        out = []
        for name, layer in self.lora_layers():
            if adapter in layer.lora_A:
                out.append(
                    LayerFactors(
                        name, layer.lora_A[adapter].weight, layer.lora_B[adapter].weight, float(layer.scaling[adapter])
                    )
                )
        return out

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def load_adapter_weights(self, adapter: str, src: Path) -> None:
        """Put the weights saved by ``save_adapter`` back into the existing adapter ``adapter``."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        if self.full:
            state = {k: v for f in sorted(Path(src).glob("*.safetensors")) for k, v in load_file(str(f)).items()}
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            if unexpected:
                raise NloraError(f"{src}: weights do not fit this model (unexpected {unexpected[0]})")
            return
        if adapter in self.extras:
            load_extra(self.extras[adapter], Path(src) / EXTRA_FILE)
        state = load_file(str(Path(src) / "adapter_model.safetensors"))
        result = set_peft_model_state_dict(self.model, state, adapter_name=adapter)
        if self.prompt:  # PEFT loads the prompt itself and reports its key as unexpected: check the values
            if not torch.equal(
                self.model.prompt_encoder[adapter].embedding.weight.detach().cpu(),
                state["prompt_embeddings"].to(torch.float32),
            ):
                raise NloraError(f"{src}: the soft prompt did not load")
            return
        if getattr(result, "unexpected_keys", None):
            raise NloraError(f"{src}: adapter does not fit this model (unexpected {result.unexpected_keys[0]})")

    def save_adapter(self, adapter: str, dest: Path) -> None:
        """Write ``adapter`` in PEFT format (adapter_config.json + adapter_model.safetensors), atomically."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            if self.full:
                self.model.save_pretrained(str(tmp), safe_serialization=True)
            else:
                self.model.save_pretrained(str(tmp), selected_adapters=[adapter], safe_serialization=True)
            saved = tmp / adapter if (tmp / adapter).is_dir() else tmp
            if adapter in self.extras:
                from safetensors.torch import save_file

                save_file(
                    {k: v.detach().cpu().contiguous() for k, v in self.extras[adapter].state_dict().items()},
                    str(saved / EXTRA_FILE),
                )
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(saved, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


EXTRA_FILE = "method_state.safetensors"


def load_extra(module: torch.nn.Module, path: Path) -> None:
    """Load a method's saved state into ``module``; buffers take the saved shape (a GPM basis grows with
    tasks), parameters must match."""
    state = read_safetensors(path, "the method's saved state")
    for key, value in state.items():
        owner, _, leaf = key.rpartition(".")
        try:
            sub = module.get_submodule(owner) if owner else module
        except AttributeError:
            continue  # not this method's: load_state_dict names it
        if leaf in sub._buffers and sub._buffers[leaf] is not None and sub._buffers[leaf].shape != value.shape:
            sub._buffers[leaf] = value.to(sub._buffers[leaf].device, sub._buffers[leaf].dtype)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise NloraError(f"{path}: does not fit this method's state ({str(e).splitlines()[0]})") from None
