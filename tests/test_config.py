import json

import pytest
from conftest import SHARED

from nlora.config import load_preset, preset_names, resolve
from nlora.errors import NloraError

BASE = {"model": "m", "data_dir": "d", "output_dir": "o"}
# GPUs of the scripts that use more than one: N-LoRA scripts_llama/order_3.sh, every O-LoRA script
RELEASE_GPUS = {
    "n-lora/llama-order_3": 4,
    **{
        f"o-lora/{n}": 8
        for n in (
            "t5-order_1",
            "t5-order_2",
            "t5-order_3",
            "t5-long",
            "llama-order_1",
            "llama-order_2",
            "llama-order_3",
        )
    },
}


def test_all_reference_presets_exist():
    names = set(preset_names())
    assert {f"t5-order{i}" for i in range(1, 7)} | {f"llama-order{i}" for i in range(1, 4)} <= names


@pytest.mark.skipif(not (SHARED / "reference_configs" / "reference_runs.json").is_file(), reason="no shared configs")
def test_presets_match_reference_runs():
    runs = json.loads((SHARED / "reference_configs" / "reference_runs.json").read_text())
    for key, rows in runs.items():
        method, name = key.split("/")
        family, order = name.split("-", 1)
        preset = f"{family}-{order.replace('order_', 'order')}"
        if method == "o-lora":
            preset = "olora-" + preset
        cfg = resolve(preset=preset, overrides=BASE)
        assert cfg.method == method
        # the release's loss
        assert cfg.method_options.get("form", "paper") == ("reference" if method == "n-lora" else "paper")
        assert cfg.task_names == [r["task"] for r in rows]
        assert cfg.compat == "reference"
        for t, r in zip(cfg.tasks, rows):
            lam = t.method_options["lambda"]
            assert (t.lr, t.epochs, t.batch_size, lam) == (r["lr"], r["epochs"], r["batch"], r["lamda_1"])
            assert t.method_options.get("lambda2") == r["lamda_2"]
            # the release's per-device batch x accumulation x GPUs of its script (CUDA_VISIBLE_DEVICES)
            assert cfg.global_batch == r["batch"] * r["grad_accum"] * RELEASE_GPUS.get(key, 1)
        assert cfg.eval_batch_size == rows[0]["eval_batch"]


def test_flags_override_preset_and_tasks_reorder():
    cfg = resolve(preset="t5-order4", overrides={**BASE, "lr": 0.01, "task_names": ["WiC", "MNLI", "agnews"]})
    assert cfg.task_names == ["WiC", "MNLI", "agnews"]
    assert [t.lr for t in cfg.tasks] == [0.01] * 3
    assert [t.method_options["lambda"] for t in cfg.tasks] == [1.2, 0.4, 0.4]  # per-task lambdas of the preset survive


def test_defaults_and_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("method: o-lora\nlr: 0.002\ntasks:\n  - topic\n  - {name: mood, epochs: 3}\nlora: {r: 4}\n")
    cfg = resolve(config_file=str(f), overrides=BASE)
    assert cfg.method == "o-lora" and cfg.lora.r == 4 and cfg.lora.alpha == 32
    assert [(t.name, t.lr, t.epochs) for t in cfg.tasks] == [("topic", 0.002, 1.0), ("mood", 0.002, 3.0)]


@pytest.mark.parametrize(
    "body,match",
    [
        ("tasks: [a]\nbogus: 1\n", "unknown setting"),
        ("tasks: [a]\nlr: fast\n", "'lr' must be a number"),
        ("tasks: [a, a]\n", "duplicates"),
        ("tasks: [a\n", "malformed YAML at line"),
        ("tasks: [a]\nprecision: fp8\n", "precision"),
    ],
)
def test_bad_config(tmp_path, body, match):
    f = tmp_path / "c.yaml"
    f.write_text(body)
    with pytest.raises(NloraError, match=match):
        resolve(config_file=str(f), overrides=BASE)


def test_unknown_preset_and_missing_fields():
    with pytest.raises(NloraError, match="unknown preset 't5-order9'"):
        resolve(preset="t5-order9", overrides=BASE)
    with pytest.raises(NloraError, match="missing required setting 'model'"):
        resolve(overrides={"data_dir": "d", "output_dir": "o", "task_names": ["a"]})
    with pytest.raises(NloraError, match="no tasks given"):
        resolve(overrides=BASE)
    assert load_preset("t5-order1")["tasks"][0]["name"] == "dbpedia"
