"""Frozen linear weights stored in bf16 under bf16 autocast (nlora.frozen): which layers, and the same results."""

import json

import pytest
import torch
from conftest import MODEL_FACTORIES, toy_run_args
from safetensors.torch import load_file

import nlora.recipe as recipe_mod
from nlora.banks.lora import LoraBank
from nlora.cli import main
from nlora.config import LoraSettings
from nlora.families import family_of
from nlora.frozen import cast_frozen_linears, castable_linears, frozen_cast_applies
from nlora.methods import REGISTRY
from nlora.models import default_target_modules


def lora_on(kind: str) -> LoraBank:
    model, _ = MODEL_FACTORIES[kind]()
    bank = LoraBank(model, LoraSettings(r=2), default_target_modules(model), family_of(model))
    bank.start("task-0")
    bank.start("task-1")  # task-0's factors are now frozen, as an earlier task's are
    bank.state.attach(bank.model, "task-1", torch.nn.Linear(4, 4))  # a method's own module (frozen)
    return bank


def shared_params(model) -> set[int]:
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {i for i, n in seen.items() if n > 1}


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_only_the_base_models_own_frozen_unshared_linears_are_cast(kind):
    bank = lora_on(kind)
    model = bank.model
    shared = shared_params(model)
    # stated from the names: the model's Linear layers that are neither in an adapter layer nor a method's module
    expected = {
        name
        for name, m in model.named_modules()
        if type(m) is torch.nn.Linear
        and not any(part in name.split(".") for part in ("base_layer", "lora_A", "lora_B", "cl_extras"))
        and id(m.weight) not in shared
    }
    assert expected and set(castable_linears(model)) == expected
    before = {n: p.clone() for n, p in model.named_parameters()}
    done = cast_frozen_linears(model, torch.bfloat16)
    assert done.layers == len(expected)
    assert done.saved_bytes == sum(
        2 * m.weight.numel() + (2 * m.bias.numel() if m.bias is not None else 0)
        for n, m in model.named_modules()
        if n in expected
    )
    for name, p in model.named_parameters():
        layer = name.rsplit(".", 1)[0]
        if layer in expected:
            assert p.dtype == torch.bfloat16 and torch.equal(p, before[name].to(torch.bfloat16)), name
        else:  # adapters, their base layers, method modules, embeddings and tied heads, norms: untouched
            assert p.dtype == torch.float32 and torch.equal(p, before[name]), name
    if kind == "t5":  # T5 ties its LM head to the input embeddings: kept
        assert not any(n.endswith("lm_head") for n in expected)
    else:
        assert any(n.endswith("lm_head") for n in expected)
    assert cast_frozen_linears(model, torch.bfloat16).layers == 0  # nothing left: a second call is a no-op


def test_where_the_cast_applies():
    assert frozen_cast_applies(torch.bfloat16, REGISTRY["n-lora"](), sharded=False)
    assert frozen_cast_applies(torch.bfloat16, REGISTRY["l2p"](), sharded=False)  # prompts: the base stays frozen
    assert not frozen_cast_applies(None, REGISTRY["n-lora"](), sharded=False)  # fp32: no autocast to spare
    assert not frozen_cast_applies(torch.bfloat16, REGISTRY["n-lora"](), sharded=True)  # FSDP/ZeRO flat params
    assert not frozen_cast_applies(torch.bfloat16, REGISTRY["seq-ft"](), sharded=False)  # the base model trains
    for name in ("inflora", "gainlora", "route"):  # their own fp32 passes over the frozen model
        assert REGISTRY[name].fp32_forwards and not frozen_cast_applies(torch.bfloat16, REGISTRY[name](), False)


def run_files(out) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    for key in ("wall_time_s", "cpu_time_s", "resumed"):
        summary.pop(key)
    for entry in summary["per_task"]:
        for key in ("train_seconds", "train_cpu_seconds", "eval_seconds", "eval_cpu_seconds", "predict_runtime"):
            entry.pop(key, None)
    files = {"summary": summary}
    for path in sorted((out / "tasks").glob("*/predictions.jsonl")):  # mtl evaluates after the last task only
        files[str(path.relative_to(out))] = path.read_text()
    for path in sorted((out / "tasks").glob("*/adapter/*.safetensors")):
        files[str(path.relative_to(out))] = {k: v.tolist() for k, v in load_file(path).items()}
    return files


CAST = sorted(name for name, cls in REGISTRY.items() if frozen_cast_applies(torch.bfloat16, cls(), sharded=False))
CASES = [("llama", name, "score") for name in CAST] + [
    ("llama", "n-lora", "generate"),
    ("t5", "n-lora", "generate"),
    ("t5", "sapt-sals", "score"),
    ("t5", "l2p", "generate"),
]


@pytest.mark.parametrize("kind,method,mode", CASES)
def test_a_bf16_run_is_bit_for_bit_the_same_with_frozen_weights_cast(
    model_dirs, data_dir, tmp_path, monkeypatch, capsys, kind, method, mode
):
    """Every method the cast applies to (n-lora folds earlier adapters into the base layers, sapt and l2p have
    modules and input hooks of their own): predictions, adapters and summary equal to the run without it."""
    extra = ["--method", method, "--precision", "bf16", "--eval-mode", mode, "--lora-dropout", "0.1"]
    assert main(toy_run_args(model_dirs[kind], data_dir, tmp_path / "cast", *extra)) == 0
    assert "frozen linear layers stored in bfloat16" in capsys.readouterr().out
    with monkeypatch.context() as m:
        m.setattr(recipe_mod, "frozen_cast_applies", lambda *a, **k: False)
        assert main(toy_run_args(model_dirs[kind], data_dir, tmp_path / "fp32", *extra)) == 0
        assert "frozen linear layers" not in capsys.readouterr().out
    # `nlora eval` rebuilds the final model from the saved files (frozen weights cast again) and answers the same
    assert main(["eval", str(tmp_path / "cast"), "--tasks", "topic,mood"]) == 0
    assert "frozen linear layers stored in bfloat16" in capsys.readouterr().out
    again = tmp_path / "cast" / "eval" / "after-02" / "topic+mood" / "predictions.jsonl"
    last = sorted((tmp_path / "cast" / "tasks").glob("*/predictions.jsonl"))[-1]
    answers = [(r["task"], r["prediction"]) for r in map(json.loads, again.read_text().splitlines())]
    assert answers == [(r["task"], r["prediction"]) for r in map(json.loads, last.read_text().splitlines())]
    cast, kept = run_files(tmp_path / "cast"), run_files(tmp_path / "fp32")
    assert cast.keys() == kept.keys()
    assert any(k.endswith("predictions.jsonl") for k in cast) and any(k.endswith(".safetensors") for k in cast)
    for key in cast:
        assert cast[key] == kept[key], key
