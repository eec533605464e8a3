"""Every bank kind (LoRA adapters, soft prompts, the full model) through the same checks: what trains, save and
load, activation, merging/folding, and a snapshot run as a teacher. Tiny T5 and tiny GQA LLaMA."""

from dataclasses import dataclass

import pytest
import torch

from nlora.banks import KINDS, FullModel, LoraBank, PromptBank, make_bank
from nlora.config import LoraSettings
from nlora.models import default_target_modules, load_model


@dataclass
class Kind:
    """How a bank kind names and starts its parts, and which parameters belong to part ``name``."""

    kind: str
    cls: type
    start_args: tuple  # after the name
    saved_file: str
    folds: bool  # ``fold`` exists (LoRA)

    def owns(self, pname: str, name: str) -> bool:
        if self.kind == "lora":
            return f".{name}." in pname and "lora_" in pname
        if self.kind == "prompt":
            return pname.startswith(f"prompt_encoder.{name}.")
        return True


TABLE = {
    "lora": Kind("lora", LoraBank, (), "adapter_model.safetensors", True),
    "prompt": Kind("prompt", PromptBank, (4,), "adapter_model.safetensors", False),
    "full": Kind("full", FullModel, (), "model.safetensors", False),
}


def test_the_table_covers_every_kind():
    assert sorted(TABLE) == sorted(KINDS)


def new_bank(model_dirs, model_kind, kind):
    loaded = load_model(str(model_dirs[model_kind]))
    targets = default_target_modules(loaded.model)
    return loaded, make_bank(kind, loaded.model, LoraSettings(dropout=0.0), targets, loaded.family)


def probe(loaded) -> dict:
    ids = torch.tensor([[5, 9, 13, 17, 21, 3], [7, 11, 2, 19, 4, 8]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if loaded.seq2seq:
        batch["labels"] = torch.tensor([[6, 10, 1], [12, 14, 1]])
    return batch


@torch.no_grad()
def outputs(bank, batch) -> torch.Tensor:
    bank.model.eval()
    return bank.model(**batch).logits


def perturb(bank, name: str, spec: Kind, seed: int) -> None:
    """Move part ``name``'s parameters (a fresh LoRA B is zero: without this it would change nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in bank.model.named_parameters():
            if spec.owns(pname, name) and p.is_floating_point():
                p.add_(0.05 * torch.randn(p.shape, generator=g).to(p.dtype))


def trainable(bank) -> list[str]:
    return [n for n, p in bank.model.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("kind", KINDS)
def test_start_trains_only_the_new_part(model_dirs, model_kind, kind):
    spec = TABLE[kind]
    loaded, bank = new_bank(model_dirs, model_kind, kind)
    assert isinstance(bank, spec.cls) and bank.kind == kind and bank.model is None
    bank.start("p0", *spec.start_args)
    if kind == "full":  # one part: the model itself, every weight
        assert bank.adapters == ["p0"] and bank.model is bank.base_model
        assert trainable(bank) == [n for n, _ in bank.model.named_parameters()]
        return
    bank.start("p1", *spec.start_args)
    assert bank.adapters == ["p0", "p1"] and bank.current == "p1"
    names = trainable(bank)
    assert names and all(spec.owns(n, "p1") for n in names)  # nothing else trains
    assert [n for n, p in bank.model.named_parameters() if spec.owns(n, "p1") and not p.requires_grad] == []
    assert {id(p) for p in bank.trainable_parameters()} == {id(bank.model.get_parameter(n)) for n in names}


@pytest.mark.parametrize("kind", KINDS)
def test_activate_chooses_what_runs_and_the_current_part_keeps_training(model_dirs, model_kind, kind):
    spec = TABLE[kind]
    loaded, bank = new_bank(model_dirs, model_kind, kind)
    batch = probe(loaded)
    bank.start("p0", *spec.start_args)
    perturb(bank, "p0", spec, 0)
    only_first = outputs(bank, batch)
    if kind == "full":
        bank.activate(["anything"])  # one model: nothing to choose
        assert bank.active() == [] and torch.equal(outputs(bank, batch), only_first)
        return
    bank.start("p1", *spec.start_args)
    perturb(bank, "p1", spec, 1)
    assert not torch.equal(outputs(bank, batch), only_first)
    bank.activate(["p0"])
    assert bank.active() == ["p0"]
    assert torch.equal(outputs(bank, batch), only_first)
    assert trainable(bank) and all(spec.owns(n, "p1") for n in trainable(bank))


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_round_trip_bit_identical(model_dirs, model_kind, kind, tmp_path):
    spec = TABLE[kind]
    loaded, bank = new_bank(model_dirs, model_kind, kind)
    batch = probe(loaded)
    bank.start("p0", *spec.start_args)
    perturb(bank, "p0", spec, 3)
    extra = bank.attach_extra("p0", torch.nn.Linear(2, 2)) if kind != "full" else None
    if extra is not None:
        torch.nn.init.normal_(extra.weight)
    before = outputs(bank, batch)
    saved = {n: p.detach().clone() for n, p in bank.model.named_parameters() if spec.owns(n, "p0")}
    bank.save("p0", tmp_path / "p0")
    assert (tmp_path / "p0" / spec.saved_file).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left

    loaded2, fresh = new_bank(model_dirs, model_kind, kind)
    fresh.start("p0", *spec.start_args)
    if extra is not None:
        fresh.attach_extra("p0", torch.nn.Linear(2, 2))
    fresh.load("p0", tmp_path / "p0")
    again = {n: p for n, p in fresh.model.named_parameters() if spec.owns(n, "p0")}
    assert sorted(again) == sorted(saved)
    assert all(torch.equal(again[n], v) for n, v in saved.items())
    assert torch.equal(outputs(fresh, batch), before)
    if extra is not None:
        assert torch.equal(fresh.extras["p0"].weight, extra.weight)


@pytest.mark.parametrize("kind", KINDS)
def test_merged_and_folded_keep_the_outputs(model_dirs, model_kind, kind):
    spec = TABLE[kind]
    loaded, bank = new_bank(model_dirs, model_kind, kind)
    batch = probe(loaded)
    bank.start("p0", *spec.start_args)
    perturb(bank, "p0", spec, 4)
    if spec.folds:
        bank.start("p1", *spec.start_args)
        perturb(bank, "p1", spec, 5)
    before = outputs(bank, batch)
    weights = {n: p.detach().clone() for n, p in bank.model.named_parameters()}
    with bank.merged(bank.active()):
        torch.testing.assert_close(outputs(bank, batch), before, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(p, weights[n]) for n, p in bank.model.named_parameters())  # restored bit for bit
    if not spec.folds:
        assert not hasattr(bank, "fold")
        return
    factors = [(f.A.detach().clone(), f.B.detach().clone()) for f in bank.factors("p0")]
    bank.fold("p0")
    assert bank.live_adapters() == ["p1"] and list(bank.folded) == ["p0"] and bank.adapters == ["p0", "p1"]
    torch.testing.assert_close(outputs(bank, batch), before, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(f.A, a) and torch.equal(f.B, b) for f, (a, b) in zip(bank.factors("p0"), factors))


@pytest.mark.parametrize("kind", KINDS)
def test_a_snapshot_runs_as_it_was_taken(model_dirs, model_kind, kind):
    spec = TABLE[kind]
    loaded, bank = new_bank(model_dirs, model_kind, kind)
    batch = probe(loaded)
    bank.start("p0", *spec.start_args)
    perturb(bank, "p0", spec, 6)
    taken = outputs(bank, batch)
    assert bank.snapshot("p0", "teacher") == "teacher"
    assert bank.adapters == ["p0"]  # a snapshot is no part of the order: never trained, folded or saved
    trains = trainable(bank)
    assert "teacher" not in " ".join(trains)
    perturb(bank, "p0", spec, 7)
    moved = outputs(bank, batch)
    assert not torch.equal(moved, taken)
    bank.model.train()
    params = list(bank.model.parameters())  # what an optimizer holds
    with torch.no_grad(), bank.using("teacher"):
        assert not bank.model.training
        assert torch.equal(bank.model(**batch).logits, taken)
    assert bank.model.training  # mode, active parts, what trains and the weights all come back
    assert trainable(bank) == trains and all(a is b for a, b in zip(bank.model.parameters(), params, strict=True))
    with torch.no_grad(), bank.using("teacher"):  # the snapshot itself is unchanged by its use
        assert torch.equal(bank.model(**batch).logits, taken)
    assert torch.equal(outputs(bank, batch), moved)


def test_lora_views_name_the_adapter_factors(model_dirs):
    loaded, bank = new_bank(model_dirs, "llama", "lora")
    bank.start("p0")
    views = bank.adapted_layers("p0")
    factors = bank.factors("p0")
    assert views and [v.name for v in views] == [f.module for f in factors]
    for v, f in zip(views, factors):
        assert v.A.weight is f.A and v.B.weight is f.B and v.scaling == f.scaling
        assert v.A.in_features == v.layer.in_features and v.B.out_features == v.layer.out_features
    bank.freeze_A("p0")
    assert trainable(bank) and all("lora_B" in n for n in trainable(bank))
    with bank.without_adapters():
        perturb(bank, "p0", TABLE["lora"], 8)
        plain = outputs(bank, probe(loaded))
    assert torch.equal(plain, load_model(str(model_dirs["llama"])).model.eval()(**probe(loaded)).logits.detach())
