"""The benchmark scripts' bookkeeping (their speed figures are measured, not tested)."""

import importlib.util
from pathlib import Path

import pytest

from test_fetch import write_tree

ROOT = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paper_workload_counts_examples_epochs_and_generations(tmp_path):
    paper = load("paper")
    write_tree(tmp_path / "cl")  # every task, 3 examples per split
    train, tests, missing = paper.workload("t5-order1", tmp_path / "cl")  # 4 tasks, 10 epochs each
    assert missing == [] and train == 4 * 3 * 10 and tests == 3 + 6 + 9 + 12
    (tmp_path / "cl" / "TC" / "yahoo" / "train.json").unlink()
    assert paper.workload("t5-order1", tmp_path / "cl")[2] == ["yahoo/train.json"]


def test_paper_estimate_from_given_rates(tmp_path, capsys):
    paper = load("paper")
    write_tree(tmp_path / "cl")
    paper.main(["--family", "t5", "--model", "m", "--data-dir", str(tmp_path / "cl"), "--out", str(tmp_path / "o"),
                "--estimate-only", "--rates", "0.12,0.03"])
    out = capsys.readouterr().out
    # order 1: 120 training examples x epochs at 0.12/s and 30 generations at 0.03/s = 2000 s
    assert "t5-order1: 120 training examples x epochs, 30 generations: about 0.56 h" in out
    assert not (tmp_path / "o").exists()  # estimate only: nothing run or written


def test_accuracy_validation_split_never_uses_test_rows(tmp_path):
    import json

    acc = load("accuracy")
    write_tree(tmp_path / "cl")
    out = acc.carve_validation(tmp_path / "cl", ["SST-2"], tmp_path / "val", n_val=2, seed=0)
    train = json.loads((out / "SC" / "SST-2" / "train.json").read_text())
    val = json.loads((out / "SC" / "SST-2" / "test.json").read_text())
    original = json.loads((tmp_path / "cl" / "SC" / "SST-2" / "train.json").read_text())
    assert len(val) == 2 and len(train) == 1 and sorted(map(str, train + val)) == sorted(map(str, original))
    assert all("train.json" in r["sentence"] for r in val)  # fixture sentences name their file


def test_accuracy_paired_comparisons_pair_runs_by_seed():
    acc = load("accuracy")
    runs = {"n-lora": [(1, 50.0, -2.0), (2, 48.0, -4.0), (3, 52.0, None)],
            "o-lora": [(2, 45.0, -1.0), (1, 46.0, -3.0), (3, 47.0, -2.0)]}  # seeds out of order on purpose
    rows = [{"sequence": "4task", "method": m, "runs": [{"seed": s, "aa": aa, "bwt": bwt} for s, aa, bwt in r]}
            for m, r in runs.items()]
    aa, bwt = acc.paired_comparisons(rows)
    assert aa["metric"] == "AA" and aa["diffs"] == [4.0, 3.0, 5.0] and aa["mean"] == 4.0 and aa["sd"] == 1.0
    assert aa["t"] == pytest.approx(4.0 / (1.0 / 3 ** 0.5))
    assert bwt["diffs"] == [1.0, -3.0]  # seed 3 has no BWT for n-lora: left out, not counted as 0
