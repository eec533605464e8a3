"""The LoRA bank on upstream PEFT: one adapter per task, earlier ones frozen but kept in the forward pass
(or folded into the base weights); the only module that reads PEFT's LoRA layers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.tuners.lora import LoraLayer

from ..config import LoraSettings
from ..dropout import swap_dropout
from ..errors import NloraError
from ..families import ModelFamily, as_family
from .files import MethodState, load_peft_adapter, save_peft_adapter


@dataclass
class LayerFactors:
    """One adapted layer's factors for one adapter: delta W = scaling * B @ A (B: out x r, A: r x in)."""

    module: str
    A: torch.Tensor
    B: torch.Tensor
    scaling: float


@dataclass(frozen=True)
class AdaptedLayer:
    """One layer's share of one adapter: y = layer(x) + scaling * B(A(dropout(x))).

    ``layer`` is the adapted module (a forward pre-hook on it sees x); ``A`` (in -> r) and ``B`` (r -> out)
    are the adapter's own linear maps (hooks on them see A x and B A x; their ``weight`` is the factor)."""

    name: str
    layer: torch.nn.Module
    A: torch.nn.Linear
    B: torch.nn.Linear
    scaling: float


class LoraBank:
    """Owns the PEFT model and the order of adapters; only the newest adapter trains."""

    kind = "lora"

    def __init__(
        self,
        base_model,
        lora: LoraSettings,
        target_modules: list[str],
        family: ModelFamily | bool,  # the model's family (an older caller's seq2seq flag also works)
        sharded: bool = False,
    ):
        self.base_model = base_model
        self.sharded = sharded  # base weights sharded by FSDP: no rank holds them whole to fold into
        self.lora_config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(target_modules),
            task_type=TaskType(as_family(family).peft_task_type),
            bias="none",
        )
        self.model: PeftModel | None = None
        self.adapters: list[str] = []  # in creation order, folded ones included (snapshots not)
        self.folded: dict[str, list[LayerFactors]] = {}  # name -> detached copies of its factors
        self.state = MethodState()
        self.mergeable = True  # False: adapters scaled per example (gates) must not be merged for evaluation

    # ------------------------------------------------------------------ which adapters exist, run and train

    @property
    def current(self) -> str:
        return self.adapters[-1]

    def start(self, name: str) -> None:
        """Add a fresh adapter ``name`` (or keep training it if it exists); freeze all others."""
        if self.model is None or name not in self.adapters:
            self._create(name)
        if name not in self.adapters:
            self.adapters.append(name)
        # set_adapter with a list activates every adapter (they all add to the output) ...
        self.model.base_model.set_adapter(self.live_adapters())
        # ... and marks them all trainable, so freeze every adapter but ``name`` again.
        self._train_only(name)

    def activate(self, names: list[str]) -> None:
        """Only ``names`` take part in the forward pass; only the newest adapter stays trainable."""
        self.model.base_model.set_adapter(list(names))
        self._train_only(self.current)

    def _create(self, name: str) -> None:
        """PEFT's new adapter ``name`` (the PEFT model itself on the first), its dropout drawing its mask the fast
        way on the CPU (``nlora.dropout``); every adapter of the bank is made here."""
        if self.model is None:
            self.model = get_peft_model(self.base_model, self.lora_config, adapter_name=name)
        else:
            self.model.add_adapter(name, self.lora_config)
        for _, layer in self._peft_layers():
            if name in layer.lora_dropout:
                swap_dropout(layer.lora_dropout, name)

    def _train_only(self, name: str) -> None:
        for pname, p in self.model.named_parameters():
            p.requires_grad = f".{name}." in pname and "lora_" in pname

    def active(self) -> list[str]:
        return list(self.model.base_model.active_adapters)

    def live_adapters(self) -> list[str]:
        return [a for a in self.adapters if a not in self.folded]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def freeze_A(self, name: str) -> None:
        """Keep adapter ``name``'s A factors fixed (designed, not learnt); undone by ``start``/``activate``."""
        for view in self.adapted_layers(name):
            view.A.weight.requires_grad = False

    @property
    def extras(self) -> dict[str, torch.nn.Module]:
        return self.state.modules

    def attach_extra(self, adapter: str, module: torch.nn.Module) -> torch.nn.Module:
        """Register ``module`` as adapter ``adapter``'s method state (parameters named ``cl_extras.<adapter>.*``,
        frozen unless the method says otherwise); it is saved and loaded with the adapter."""
        return self.state.attach(self.model, adapter, module)

    # ------------------------------------------------------------------ the adapters' layers and factors

    def _peft_layers(self) -> list[tuple[str, LoraLayer]]:
        return [(n, m) for n, m in self.model.named_modules() if isinstance(m, LoraLayer)]

    def adapted_layers(self, adapter: str) -> list[AdaptedLayer]:
        """The layers holding live adapter ``adapter``, in model order."""
        return [
            AdaptedLayer(name, layer, layer.lora_A[adapter], layer.lora_B[adapter], float(layer.scaling[adapter]))
            for name, layer in self._peft_layers()
            if adapter in layer.lora_A
        ]

    def factors(self, adapter: str) -> list[LayerFactors]:
        """Adapter ``adapter``'s factors per layer: the live Parameters, or the copies kept when it was folded."""
        if adapter in self.folded:
            return self.folded[adapter]
        return [LayerFactors(v.name, v.A.weight, v.B.weight, v.scaling) for v in self.adapted_layers(adapter)]

    # ------------------------------------------------------------------ folding and merging

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

    @contextmanager
    def merged(self, names: list[str]) -> Iterator[None]:
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
        layers = [layer for _, layer in self._peft_layers() if any(n in layer.lora_A for n in names)]
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

    @contextmanager
    def without_adapters(self) -> Iterator[None]:
        """The base model alone: no adapter branch in the forward pass (folded updates stay in the weights)."""
        with self.model.disable_adapter():
            yield

    # ------------------------------------------------------------------ snapshots (a frozen teacher)

    def snapshot(self, source: str, name: str) -> str:
        """Copy adapter ``source``'s factors into adapter ``name`` (created on first use, then overwritten),
        outside the adapter order: never active, trained, folded or saved; run it with ``using(name)``."""
        previous = self.active()
        if name not in self.model.peft_config:
            self._create(name)
        with torch.no_grad():
            for _, layer in self._peft_layers():
                if source in layer.lora_A:
                    layer.lora_A[name].weight.copy_(layer.lora_A[source].weight)
                    layer.lora_B[name].weight.copy_(layer.lora_B[source].weight)
        self.activate(previous)
        return name

    @contextmanager
    def using(self, name: str) -> Iterator[None]:
        """Run the model as snapshot ``name`` alone, in eval mode; the active adapters, what trains and the
        train/eval mode come back afterwards."""
        previous, was_training = self.active(), self.model.training
        self.model.base_model.set_adapter([name])
        self.model.eval()
        try:
            yield
        finally:
            self.activate(previous)
            self.model.train(was_training)

    # ------------------------------------------------------------------ files

    def save(self, adapter: str, dest: Path) -> None:
        """Write ``adapter`` in PEFT format (adapter_config.json + adapter_model.safetensors), atomically."""

        save_peft_adapter(self.model, self.state, adapter, dest)

    def load(self, adapter: str, src: Path) -> None:
        """Put the weights saved by ``save`` back into the existing adapter ``adapter``."""
        _, result = load_peft_adapter(self.model, self.state, adapter, src)
        if getattr(result, "unexpected_keys", None):
            raise NloraError(f"{src}: adapter does not fit this model (unexpected {result.unexpected_keys[0]})")
