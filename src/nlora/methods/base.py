"""The method interface: what a continual-learning method changes, so the training loop needs no branches."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..banks import Bank
from ..config import TaskSettings
from ..errors import NloraError
from ..families import ModelFamily
from .options import NoOptions, RunFacts, field_values, option_specs


@dataclass
class TaskContext:
    """What a method may use of task t beyond the adapters: its encoded training examples, and the task
    loss of a list of them under the current model (for Fisher information, distillation targets...)."""

    examples: list
    batch_size: int
    loss: Callable[[list], torch.Tensor]


class Method:
    """Base class. Subclasses set ``name``/``summary``, declare their settings in a nested ``Options`` dataclass
    (methods/options.py: read as ``self.options`` / ``self.task_options(settings)``; ``self.run`` holds the
    RunFacts), and override only the hooks they need.

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
    routes_by_input: bool = False  # evaluation asks route_examples which adapters answer each prompt (route)
    bank: str = "lora"  # what trains (nlora.banks): "lora" adapters, a soft "prompt", or the "full" model
    # runs forwards of its own outside autocast (fp32 statistics of the frozen model): the frozen weights then stay
    # in fp32 under bf16 autocast (nlora.frozen)
    fp32_forwards: bool = False
    # The method's settings (methods/options.py): a dataclass of ``option(...)`` fields, read as self.options;
    # per-task ones through task_options(settings).
    Options: type = NoOptions

    def __init__(self, options=None, run: RunFacts | None = None):
        self.options = self.Options() if options is None else options
        self.run = RunFacts() if run is None else run
        self._task_cache: tuple = (None, None)

    @classmethod
    def options_from(cls, values: dict):
        """Options from {option key or alias: value} (a run config's ``method_options``); the rest default."""
        return cls.Options(**field_values(cls.Options, values, cls.name))

    def task_options(self, settings: TaskSettings):
        """The options task ``settings`` trains with: the run's, with the task's own values of per-task options."""
        if self._task_cache[0] is settings:
            return self._task_cache[1]
        given = getattr(settings, "method_options", None) or {}
        options = dataclasses.replace(self.options, **field_values(self.Options, given, self.name))
        self._task_cache = (settings, options)
        return options

    def check(self, model: torch.nn.Module, target_modules: list[str]) -> None:
        return None

    def adapter_name(self, task_index: int) -> str:
        return f"task{task_index}" if self.fresh_adapter_per_task else "seq"

    def start(self, lora: Bank, name: str) -> None:
        """Create the trainable part ``name`` (or make it current again) in the method's bank. Also how
        `nlora eval` rebuilds a saved run before loading its weights."""
        lora.start(name)

    def begin_task(self, lora: Bank, task_index: int, settings: TaskSettings) -> str:
        name = self.adapter_name(task_index)
        self.start(lora, name)
        if self.run.fold_adapters and self.foldable:  # earlier adapters are frozen: one folded update costs the same
            for earlier in lora.live_adapters()[:-1]:
                lora.fold(earlier)
            lora.start(name)  # re-assert: only the new adapter active and trainable
        return name

    def before_training(self, lora: Bank, task_index: int, settings: TaskSettings, ctx: TaskContext) -> None:
        """Once before task t's first training step (also when it resumes from a step checkpoint, so it must
        be deterministic), after ``begin_task``, with its training examples; not called for a task whose
        training finished earlier (its saved weights are reloaded instead). Default: nothing."""
        return None

    def penalty(self, lora: Bank, settings: TaskSettings) -> torch.Tensor | None:
        return None

    def batch_penalty(
        self,
        lora: Bank,
        settings: TaskSettings,
        batch: dict,
        family: ModelFamily,
        logits: torch.Tensor,
        targets: torch.Tensor,
    ):
        """An extra loss that depends on the training batch (e.g. distillation), mean over its examples;
        called inside autocast after the task loss, with that loss's answer logits (grad attached) and the
        answer tokens they predict (-100 elsewhere), so no second forward is needed. Default: none."""
        return None

    def before_step(self, lora: Bank, dist) -> None:
        """Called once per optimizer step, after the gradients are summed over ranks (``dist``) and before
        the optimizer uses them: a method may edit ``.grad`` here (migu's gradient mask). Default: nothing."""
        return None

    def eval_adapters(self, task_index: int) -> list[int]:
        """Tasks whose saved adapters make up the model as it was after ``task_index`` (all so far)."""
        return list(range(task_index + 1)) if self.fresh_adapter_per_task else [task_index]

    def end_task(self, lora: Bank, task_index: int, settings: TaskSettings, ctx: TaskContext | None = None) -> None:
        return None

    def train_examples(self, task_index: int, train_splits: list[list]) -> list:
        """Examples to train on at task t; ``train_splits`` holds every task's training split, in order."""
        return train_splits[task_index]

    def evaluate_after(self, task_index: int, n_tasks: int) -> bool:
        return True

    def eval_routes(self, task_index: int, evaluated: list[int]) -> list[tuple[list[str] | None, list[int]]]:
        """[(adapters to activate, or None for the model as trained, the task indices they answer)]."""
        return [(None, evaluated)]

    def route_examples(self, lora: Bank, task_index: int, sources: list[list[int]]) -> list[list[str]]:
        """Only for ``routes_by_input``: for each test prompt (its encoded source ids, as in training), the
        adapters that answer it, chosen without the task id. The routes of ``eval_routes`` are then what the
        task id would pick, against which the choices are scored (routing.json)."""
        raise NotImplementedError

    def lam(self, settings: TaskSettings) -> float:
        """Task ``settings``' value of the option ``--lambda`` sets (the method's main coefficient)."""
        return self._aliased("lambda", settings)

    def lam2(self, settings: TaskSettings) -> float:
        """Task ``settings``' value of the option ``--lambda2`` sets (the method's second coefficient)."""
        return self._aliased("lambda2", settings)

    def _aliased(self, alias: str, settings: TaskSettings):
        spec = next((s for s in option_specs(self.Options) if s.alias == alias), None)
        if spec is None:
            raise NloraError(f"method {self.name} has no option set by --{alias}")
        return getattr(self.task_options(settings), spec.name)
