"""The method interface: what a continual-learning method changes, so the training loop needs no branches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..adapters import ContinualLoRA
from ..config import RunConfig, TaskSettings
from ..errors import NloraError


@dataclass
class TaskContext:
    """What a method may use of task t beyond the adapters: its encoded training examples, and the task
    loss of a list of them under the current model (for Fisher information, distillation targets...)."""

    examples: list
    batch_size: int
    loss: Callable[[list], torch.Tensor]


class Method:
    """Base class. Subclasses set ``name``/``summary`` and override only the hooks they need.

    ``check(model, target_modules)`` runs once before any output is written: refuse impossible settings.
    Hooks, in the order the loop calls them for task ``t``:
      ``train_examples`` - the examples task t trains on (default: its training split);
      ``begin_task``  - choose and create the adapter that trains on task t (default: a fresh one);
      ``before_training`` - with task t's examples, once before its first step (inflora designs A here);
      ``penalty``     - an extra loss term added to every training step (default: none);
      ``batch_penalty`` - an extra loss term computed from the step's batch (default: none);
      ``before_step`` - after the step's gradients are complete, before the optimizer uses them (default: none);
      ``end_task``    - anything to do once task t is trained (default: nothing);
      ``evaluate_after`` - whether to evaluate after task t (default: always);
      ``eval_routes`` - which adapters answer which tasks (default: all adapters, every seen task);
      ``route_examples`` - methods with ``routes_by_input``: the adapters that answer each test prompt.
    """

    name: str = ""
    summary: str = ""
    # What `nlora methods` tables for a researcher choosing a method (docs/methods.md holds the same table):
    venue: str = ""  # year and venue, e.g. "2025 COLING"; "ours" for nlora's own
    trains: str = ""  # what the optimizer updates
    stored_per_task: str = ""  # what each task adds to the stored model, i.e. how memory grows with tasks
    needs_task_id: bool = False  # evaluation is told which task an input belongs to
    uses_replay: bool = False  # trains on kept examples of earlier tasks
    source: str = ""  # paper (arXiv id) and the public code the implementation follows
    fresh_adapter_per_task: bool = True
    foldable: bool = True  # earlier adapters may be folded into the base weights (needs them all active)
    full_finetune: bool = False  # trains the whole model instead of adapters (seq-ft)
    routes_by_input: bool = False  # evaluation asks route_examples which adapters answer each prompt (route)
    prompt_tuning: bool = False  # trains a soft prompt instead of LoRA (seq-prompt)
    default_lambda: float | None = None
    default_lambda2: float | None = None

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg

    def check(self, model: torch.nn.Module, target_modules: list[str]) -> None:
        return None

    def adapter_name(self, task_index: int) -> str:
        return f"task{task_index}" if self.fresh_adapter_per_task else "seq"

    def start(self, lora: ContinualLoRA, name: str) -> None:
        """Create the trainable part ``name`` (or make it current again): a LoRA adapter here. Also how
        `nlora eval` rebuilds a saved run before loading its weights."""
        lora.start_adapter(name)

    def begin_task(self, lora: ContinualLoRA, task_index: int, settings: TaskSettings) -> str:
        name = self.adapter_name(task_index)
        self.start(lora, name)
        if (
            self.cfg.fold_adapters and self.foldable
        ):  # earlier adapters are frozen: one folded update per layer costs the same
            for earlier in lora.live_adapters()[:-1]:
                lora.fold(earlier)
            lora.start_adapter(name)  # re-assert: only the new adapter active and trainable
        return name

    def before_training(self, lora: ContinualLoRA, task_index: int, settings: TaskSettings, ctx: TaskContext) -> None:
        """Once before task t's first training step (also when it resumes from a step checkpoint, so it must
        be deterministic), after ``begin_task``, with its training examples; not called for a task whose
        training finished earlier (its saved weights are reloaded instead). Default: nothing."""
        return None

    def penalty(self, lora: ContinualLoRA, settings: TaskSettings) -> torch.Tensor | None:
        return None

    def batch_penalty(
        self,
        lora: ContinualLoRA,
        settings: TaskSettings,
        batch: dict,
        seq2seq: bool,
        logits: torch.Tensor,
        targets: torch.Tensor,
    ):
        """An extra loss that depends on the training batch (e.g. distillation), mean over its examples;
        called inside autocast after the task loss, with that loss's answer logits (grad attached) and the
        answer tokens they predict (-100 elsewhere), so no second forward is needed. Default: none."""
        return None

    def before_step(self, lora: ContinualLoRA, dist) -> None:
        """Called once per optimizer step, after the gradients are summed over ranks (``dist``) and before
        the optimizer uses them: a method may edit ``.grad`` here (migu's gradient mask). Default: nothing."""
        return None

    def eval_adapters(self, task_index: int) -> list[int]:
        """Tasks whose saved adapters make up the model as it was after ``task_index`` (all so far)."""
        return list(range(task_index + 1)) if self.fresh_adapter_per_task else [task_index]

    def end_task(
        self, lora: ContinualLoRA, task_index: int, settings: TaskSettings, ctx: TaskContext | None = None
    ) -> None:
        return None

    def train_examples(self, task_index: int, train_splits: list[list]) -> list:
        """Examples to train on at task t; ``train_splits`` holds every task's training split, in order."""
        return train_splits[task_index]

    def evaluate_after(self, task_index: int, n_tasks: int) -> bool:
        return True

    def eval_routes(self, task_index: int, evaluated: list[int]) -> list[tuple[list[str] | None, list[int]]]:
        """[(adapters to activate, or None for the model as trained, the task indices they answer)]."""
        return [(None, evaluated)]

    def route_examples(self, lora: ContinualLoRA, task_index: int, sources: list[list[int]]) -> list[list[str]]:
        """Only for ``routes_by_input``: for each test prompt (its encoded source ids, as in training), the
        adapters that answer it, chosen without the task id. The routes of ``eval_routes`` are then what the
        task id would pick, against which the choices are scored (routing.json)."""
        raise NotImplementedError

    def lam(self, settings: TaskSettings) -> float:
        value = settings.lam if settings.lam is not None else self.default_lambda
        if value is None:
            raise NloraError(f"method {self.name} needs --lambda for task {settings.name}")
        return value

    def lam2(self, settings: TaskSettings) -> float:
        return settings.lam2 if settings.lam2 is not None else (self.default_lambda2 or 0.0)
