"""The full model as a bank: no adapters, every weight trains (full fine-tuning), saved as a whole model."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import NloraError
from .files import EXTRA_FILE, MethodState, write_folder


class FullModel:
    """The plain model under a bank's interface: one "adapter" (the model itself), always active."""

    kind = "full"

    def __init__(self, base_model):
        self.base_model = base_model
        self.model: torch.nn.Module | None = None
        self.adapters: list[str] = []
        self.state = MethodState()
        self.snapshots: dict[str, dict[str, torch.Tensor]] = {}

    @property
    def current(self) -> str:
        return self.adapters[-1]

    def start(self, name: str = "full") -> None:
        """The plain model, every parameter trainable."""
        self.model = self.base_model
        if name not in self.adapters:
            self.adapters.append(name)
        for p in self.model.parameters():
            p.requires_grad = True

    def activate(self, names: list[str]) -> None:
        """Nothing to choose: the one model always runs."""
        return None

    def active(self) -> list[str]:
        return []

    def live_adapters(self) -> list[str]:
        return list(self.adapters)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @contextmanager
    def merged(self, names: list[str]) -> Iterator[None]:
        """Nothing to merge: the weights are the model's own."""
        yield

    @property
    def extras(self) -> dict[str, torch.nn.Module]:
        return self.state.modules

    def attach_extra(self, adapter: str, module: torch.nn.Module) -> torch.nn.Module:
        return self.state.attach(self.model, adapter, module)

    def snapshot(self, source: str, name: str) -> str:
        """A copy of every weight as it is now (``source`` is the model itself), kept as ``name``."""
        self.snapshots[name] = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        return name

    @contextmanager
    def using(self, name: str) -> Iterator[None]:
        """Run the model with snapshot ``name``'s weights, in eval mode; the weights (bit for bit) and the mode
        come back afterwards. The parameters point at the snapshot's tensors meanwhile instead of copying them
        in, so a whole-model teacher costs no third copy of the weights; nothing may write to the weights inside
        (no optimizer step), or the snapshot would change with them."""
        params = dict(self.model.named_parameters())
        live = {n: params[n].data for n in self.snapshots[name]}
        was_training = self.model.training
        for n, value in self.snapshots[name].items():
            params[n].data = value
        self.model.eval()
        try:
            yield
        finally:
            for n, value in live.items():
                params[n].data = value
            self.model.train(was_training)

    def save(self, adapter: str, dest: Path) -> None:
        """Write the whole model (config + safetensors weights), atomically."""

        def fill(tmp: Path) -> Path:
            self.model.save_pretrained(str(tmp), safe_serialization=True)
            self.state.save(adapter, tmp)
            return tmp

        write_folder(dest, fill)

    def load(self, adapter: str, src: Path) -> None:
        """Put the weights saved by ``save`` back into the model."""
        from safetensors.torch import load_file

        self.state.load(adapter, src)
        files = [f for f in sorted(Path(src).glob("*.safetensors")) if f.name != EXTRA_FILE]
        state = {k: v for f in files for k, v in load_file(str(f)).items()}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected:
            raise NloraError(f"{src}: weights do not fit this model (unexpected {unexpected[0]})")
