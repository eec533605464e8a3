"""analyze / report / eval / --full-matrix on a real (tiny) run."""

import json

import pytest
from test_cli import run_args

from nlora.cli import main


@pytest.fixture(scope="module")
def runs(model_dirs, tmp_path_factory):
    from conftest import TOY_TASKS, write_task

    root = tmp_path_factory.mktemp("rep")
    data = root / "CL"
    for name in TOY_TASKS:
        write_task(data, name)
    out = {}
    for method in ("n-lora", "seq-lora"):
        out[method] = root / method
        assert main(run_args(model_dirs["llama"], data, out[method], "--method", method, "--full-matrix")) == 0
    return data, out


def test_full_matrix_gives_fwt(runs):
    _, out = runs
    s = json.loads((out["n-lora"] / "summary.json").read_text())
    assert all(v is not None for row in s["accuracy_matrix"] for v in row)
    assert len(s["zero_shot"]) == 2 and (out["n-lora"] / "zero_shot" / "predict_results.json").is_file()
    assert s["fwt"] == pytest.approx(s["accuracy_matrix"][0][1] - s["zero_shot"][1])


def test_analyze_writes_json_and_plots(runs):
    _, out = runs
    assert main(["analyze", str(out["n-lora"]), str(out["seq-lora"]), "--threshold", "1e-5"]) == 0
    for run in out.values():
        a = json.loads((run / "analysis.json").read_text())
        assert a["tasks"] == ["topic", "mood"] and a["num_layers"] == 4  # 2 layers x (q, v)
        assert 0 <= a["acr"] <= 1 and a["nuclear_norm"]["mean"] > 0
        for png in ("collision.png", "nuclear_norm.png", "accuracy_matrix.png"):
            assert (run / png).read_bytes()[:4] == b"\x89PNG"
    seq = json.loads((out["seq-lora"] / "analysis.json").read_text())
    assert "change of the single adapter" in seq["update_definition"]


def test_report_compares_runs(runs, tmp_path):
    _, out = runs
    assert main(["report", str(out["n-lora"]), str(out["seq-lora"]), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| n-lora | n-lora |" in md and "| seq-lora | seq-lora |" in md
    for name in ("aa_bwt.png", "nuclear_norm.png", "collision_curve.png", "n-lora-accuracy.png"):
        assert f"]({name})" in md and (tmp_path / "rep" / name).is_file()


def test_eval_after_task_on_unseen_task(runs, capsys):
    data, out = runs
    before = (out["n-lora"] / "summary.json").read_text()
    assert main(["eval", str(out["n-lora"]), "--tasks", "COPA,topic", "--after-task", "1"]) == 0
    res = json.loads((out["n-lora"] / "eval" / "after-01" / "COPA+topic" / "predict_results.json").read_text())
    assert {"predict_exact_match_for_COPA", "predict_exact_match_for_topic"} <= set(res)
    # the model after task 1 is what the run evaluated then: same score on topic
    first = json.loads((out["n-lora"] / "tasks" / "01-topic" / "predict_results.json").read_text())
    assert res["predict_exact_match_for_topic"] == first["predict_exact_match_for_topic"]

    def preds(path, task):
        return [r["prediction"] for r in map(json.loads, path.read_text().splitlines()) if r["task"] == task]

    got = preds(out["n-lora"] / "eval" / "after-01" / "COPA+topic" / "predictions.jsonl", "topic")
    assert got == preds(out["n-lora"] / "tasks" / "01-topic" / "predictions.jsonl", "topic") and any(got)
    assert (out["n-lora"] / "summary.json").read_text() == before
    capsys.readouterr()
    assert main(["eval", str(out["n-lora"]), "--tasks", "topic", "--after-task", "5"]) == 2
    assert "--after-task 5: " in capsys.readouterr().err


def test_seq_lora_eval_matches_run(runs):
    _, out = runs
    assert main(["eval", str(out["seq-lora"]), "--tasks", "mood"]) == 0
    res = json.loads((out["seq-lora"] / "eval" / "after-02" / "mood" / "predict_results.json").read_text())
    last = json.loads((out["seq-lora"] / "tasks" / "02-mood" / "predict_results.json").read_text())
    assert res["predict_exact_match_for_mood"] == last["predict_exact_match_for_mood"]

    def rows(path):
        return [r["prediction"] for r in map(json.loads, path.read_text().splitlines()) if r["task"] == "mood"]

    assert rows(out["seq-lora"] / "eval" / "after-02" / "mood" / "predictions.jsonl") == rows(
        out["seq-lora"] / "tasks" / "02-mood" / "predictions.jsonl"
    )


def test_run_labels_use_one_depth_that_tells_runs_apart(tmp_path):
    from nlora.report import _labels

    dirs = [tmp_path / "seq-lora" / "seed-1", tmp_path / "o-lora" / "seed-1", tmp_path / "o-lora" / "seed-2"]
    assert _labels(dirs) == ["seq-lora/seed-1", "o-lora/seed-1", "o-lora/seed-2"]
    assert _labels([tmp_path / "a", tmp_path / "b"]) == ["a", "b"]
