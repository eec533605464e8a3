"""End to end through the command line on tiny models, and every bad input as a one-line error (exit 2)."""

import json
import subprocess
import sys

import pytest
from conftest import CL_BENCHMARK
from conftest import toy_run_args as run_args
from safetensors.torch import load_file

from nlora.cli import main


@pytest.mark.parametrize("method", ["n-lora", "o-lora", "seq-lora", "inc-lora"])
def test_run_end_to_end(model_dirs, model_kind, data_dir, tmp_path, method):
    out = tmp_path / "run"
    assert main(run_args(model_dirs[model_kind], data_dir, out, "--method", method, "--lambda", "0.01")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tasks"] == ["topic", "mood"] and summary["method"] == method
    m = summary["accuracy_matrix"]
    assert len(m) == 2 and m[0][1] is None and all(isinstance(v, float) for v in (m[0][0], m[1][0], m[1][1]))
    assert summary["aa"] == pytest.approx((m[1][0] + m[1][1]) / 2)
    assert summary["bwt"] == pytest.approx(m[1][0] - m[0][0])
    assert summary["wall_time_s"] > 0 and summary["model"] == str(model_dirs[model_kind])
    assert (out / "config.yaml").is_file()
    for i, name in enumerate(["topic", "mood"], 1):
        tdir = out / "tasks" / f"0{i}-{name}"
        results = json.loads((tdir / "predict_results.json").read_text())
        assert {
            "predict_exact_match",
            "predict_rougeL",
            f"predict_exact_match_for_{name}",
            f"predict_rougeL_for_{name}",
            "predict_exact_match_for_TC",
        } <= set(results)
        assert results[f"predict_exact_match_for_{name}"] == m[i - 1][i - 1]
        rows = [json.loads(x) for x in (tdir / "predictions.jsonl").read_text().splitlines()]
        assert len(rows) == 4 * i and {"task", "prompt", "reference", "prediction"} <= set(rows[0])
        cfg = json.loads((tdir / "adapter" / "adapter_config.json").read_text())
        assert cfg["peft_type"] == "LORA" and cfg["r"] == 8 and cfg["lora_alpha"] == 32
        tensors = load_file(tdir / "adapter" / "adapter_model.safetensors")
        assert tensors and all("lora_" in k for k in tensors)


def test_run_is_deterministic(model_dirs, data_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(run_args(model_dirs["t5"], data_dir, a, "--seed", "3")) == 0
    assert main(run_args(model_dirs["t5"], data_dir, b, "--seed", "3")) == 0
    ta = load_file(a / "tasks" / "02-mood" / "adapter" / "adapter_model.safetensors")
    tb = load_file(b / "tasks" / "02-mood" / "adapter" / "adapter_model.safetensors")
    assert all((ta[k] == tb[k]).all() for k in ta)


def test_eval_scope_needed_keeps_aa_and_bwt(model_dirs, data_dir, tmp_path):
    """--eval-scope needed skips the off-diagonal entries of earlier rows but gives the same AA and BWT."""
    three = ["--tasks", "topic,mood,COPA"]
    seen, needed = tmp_path / "seen", tmp_path / "needed"
    assert main(run_args(model_dirs["llama"], data_dir, seen, *three)) == 0
    assert main(run_args(model_dirs["llama"], data_dir, needed, *three, "--eval-scope", "needed")) == 0
    s = json.loads((seen / "summary.json").read_text())
    n = json.loads((needed / "summary.json").read_text())
    assert s["accuracy_matrix"][1][0] is not None and n["accuracy_matrix"][1][0] is None
    for t in range(3):  # the diagonal and the last row are the same figures
        assert n["accuracy_matrix"][t][t] == s["accuracy_matrix"][t][t]
        assert n["accuracy_matrix"][2][t] == s["accuracy_matrix"][2][t]
    assert n["aa"] == s["aa"] and n["bwt"] == s["bwt"] and n["bwt"] is not None
    mid = json.loads((needed / "tasks" / "02-mood" / "predict_results.json").read_text())
    assert "predict_exact_match_for_mood" in mid and "predict_exact_match_for_topic" not in mid


def bad_inputs(data_dir, model_dirs, tmp_path):
    topic = data_dir / "TC" / "topic"
    cases = {
        "missing data dir": (["--data-dir", str(tmp_path / "nowhere")], "data directory not found"),
        "unknown task": (["--tasks", "topic,nope"], "unknown task(s) nope"),
        "unknown method": (["--method", "magic"], "unknown method 'magic'"),
        "unknown preset": (["--preset", "t5-order42"], "unknown preset 't5-order42'"),
        "missing model": (["--model", str(tmp_path / "no-model")], "model path not found"),
        "missing gguf": (["--model", str(tmp_path / "x.gguf")], "model file not found"),
        "hub name offline": (["--model", "someone/not-a-model"], "could not be fetched from the hub"),
        "bad config file": (["--config", str(tmp_path / "none.yaml")], "config file not found"),
    }
    return topic, cases


@pytest.mark.parametrize(
    "case",
    [
        "missing data dir",
        "unknown task",
        "unknown method",
        "unknown preset",
        "missing model",
        "missing gguf",
        "hub name offline",
        "bad config file",
        "truncated json",
        "unknown label",
        "empty split",
        "missing labels",
        "reference form on GQA",
    ],
)
def test_bad_input_one_line_exit_2(model_dirs, data_dir, tmp_path, capsys, case):
    out = tmp_path / "run"
    topic, cases = bad_inputs(data_dir, model_dirs, tmp_path)
    model = model_dirs["t5"]
    extra, expect = cases.get(case, ([], None))
    if case == "truncated json":
        (topic / "train.json").write_text('[{"label": "World", "sentence": "a"}, {"lab')
        expect = "train.json: malformed JSON at line 1 column"
    elif case == "unknown label":
        (topic / "test.json").write_text(json.dumps([{"label": "Space", "sentence": "a"}]))
        expect = "has label 'Space', not in labels.json"
    elif case == "empty split":
        (topic / "train.json").write_text("[]")
        expect = "train.json: split is empty"
    elif case == "missing labels":
        (topic / "labels.json").unlink()
        expect = "missing data files: " + str(topic / "labels.json")
    elif case == "reference form on GQA":
        model, extra, expect = model_dirs["llama"], ["--nlora-form", "reference"], "needs square updates"
    args = run_args(model, data_dir, out)
    for flag, value in zip(extra[::2], extra[1::2]):  # later flags win in argparse
        args += [flag, value]
    if case == "unknown preset":
        args = [a for a in args if a not in ("--tasks", "topic,mood")]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nlora: error: ") and expect in err[0], err
    assert not out.exists()  # every problem is found before the run directory is made


def test_existing_output_dir_refused_unless_overwrite(model_dirs, data_dir, tmp_path, capsys):
    """A folder nlora did not make is refused, --overwrite or not, and nothing in it is touched; an nlora run
    is overwritten, and a user's file beside it survives."""
    out = tmp_path / "run"
    (out / "tasks" / "07-stale").mkdir(parents=True)
    (out / "keep.txt").write_text("x")
    for extra in ((), ("--overwrite",)):
        assert main(run_args(model_dirs["t5"], data_dir, out, *extra)) == 2
        assert "not empty" in capsys.readouterr().err and (out / "keep.txt").read_text() == "x"
        assert (out / "tasks" / "07-stale").is_dir()
    run = tmp_path / "nlora-run"
    assert main(run_args(model_dirs["t5"], data_dir, run)) == 0
    (run / "keep.txt").write_text("x")
    assert main(run_args(model_dirs["t5"], data_dir, run, "--overwrite", "--lr", "0.02")) == 0
    assert (run / "keep.txt").read_text() == "x" and "lr: 0.02" in (run / "config.yaml").read_text()
    assert sorted(p.name for p in (run / "tasks").iterdir()) == ["01-topic", "02-mood"]


@pytest.mark.skipif(not CL_BENCHMARK.is_dir(), reason="../shared/CL_Benchmark not present")
def test_preset_against_real_data_names_missing_yahoo_files(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nlora.cli",
            "run",
            "--preset",
            "t5-order1",
            "--model",
            "t5-large",
            "--data-dir",
            str(CL_BENCHMARK),
            "--output-dir",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "yahoo/train.json" in lines[0] and "yahoo/test.json" in lines[0]
    assert not (tmp_path / "o").exists()


def test_presets_and_methods_listing(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert all(f"t5-order{i}" in out for i in range(1, 7)) and "llama-order3" in out
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "n-lora" in out and "o-lora" in out and "seq-lora" in out


def test_console_script_help():
    proc = subprocess.run(["nlora", "run", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--max-train-per-task" in proc.stdout and "--nlora-form" in proc.stdout
