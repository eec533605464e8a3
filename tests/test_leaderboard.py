"""benchmarks/leaderboard.py and the modules it runs with (the table's own tests: test_leaderboard_table.py):
records and the commit they name, the budget tag, the validation split (disjoint by content from test and
training rows), `run`, `select`, `record` and `plan`, --until (leaderboard_pacing.py), the queue script, and the
script run as a command."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import BENCHMARKS, CL_BENCHMARK, load_benchmark, write_task
from conftest import LEADERBOARD_TAG as TAG
from conftest import put_run_record as put

from nlora.io import write_json


def test_record_names_its_commit_with_git_or_from_nlora_commit(lb, monkeypatch):
    monkeypatch.setenv("NLORA_COMMIT", "f" * 40)
    monkeypatch.setattr(lb, "_git", lambda *cmd: "a" * 40 if cmd[0] == "rev-parse" else " M src/nlora/train.py")
    assert lb.source_commit() == ("a" * 40, True)  # git wins where there is one; a changed tree is said
    monkeypatch.setattr(lb, "_git", lambda *cmd: "")  # a copied tree without .git: git answers nothing
    assert lb.source_commit() == ("f" * 40, None)  # named by whoever copied it; clean or not is not known
    monkeypatch.delenv("NLORA_COMMIT")
    assert lb.source_commit() == (None, None)


def test_budget_tag_names_what_changes_training(lb):
    s = dict(lb.spec.BUDGETS["main"])
    tags = {
        lb.spec.budget_tag(s),
        lb.spec.budget_tag(dict(s, epochs=3.0)),
        lb.spec.budget_tag(dict(s, max_train=500)),
        lb.spec.budget_tag(dict(s, max_test=100)),
        lb.spec.budget_tag(dict(s, lr=1e-3)),
        lb.spec.budget_tag(dict(s, precision="bf16")),
        lb.spec.budget_tag(dict(s, lora_r=16, lora_alpha=64.0)),
        lb.spec.budget_tag(dict(s, model="/some/where/other-model/")),
    }
    assert len(tags) == 8 and lb.spec.budget_tag(s) == "smollm2-n1000-t200-e1-b8-lr0.002-fp32"


# ---------------------------------------------------------------------------------------- validation split


def _keys(common, path: Path) -> list[str]:
    return [common.row_key(r) for r in json.loads(path.read_text())]


def test_validation_rows_disjoint_from_test_and_training_rows_by_content(tmp_path):
    common = load_benchmark("common")
    d = tmp_path / "cl" / "SC" / "mood"
    d.mkdir(parents=True)
    (d / "labels.json").write_text(json.dumps(["positive", "negative"]))
    train = [{"sentence": f"nice day {i}", "label": "positive"} for i in range(20)]
    train += [{"sentence": "Nice   day 3!", "label": "negative"}]  # same text as row 3, another spacing and label
    train += [{"sentence": "awful, awful day", "label": "negative"}] * 3  # repeated three times
    train += [{"sentence": "the test sentence.", "label": "positive"}]  # also a test row (other punctuation)
    test = [{"sentence": "The test sentence", "label": "positive"}, {"sentence": "other", "label": "negative"}]
    (d / "train.json").write_text(json.dumps(train))
    (d / "test.json").write_text(json.dumps(test))
    for seed in range(5):  # whichever rows the shuffle picks
        out = common.carve_validation(tmp_path / "cl", ["mood"], tmp_path / f"val{seed}", n_val=8, seed=seed)
        val, kept = _keys(common, out / "SC" / "mood" / "test.json"), _keys(common, out / "SC" / "mood" / "train.json")
        assert len(val) >= 8 and not set(val) & set(kept)  # never trained on: duplicates went whole to one side
        assert not (set(val) | set(kept)) & {common.row_key(r) for r in test}  # no test content on either side
        assert len(val) + len(kept) == len(train) - 1  # only the row that is also a test row was left out
        report = json.loads((out / "validation.json").read_text())["mood"]
        assert report["left_out_same_text_as_test"] == 1 and report["duplicate_texts_in_train"] == 3
    capped = common.carve_validation(tmp_path / "cl", ["mood"], tmp_path / "cap", n_val=200, seed=0, max_share=0.25)
    assert len(json.loads((capped / "SC" / "mood" / "test.json").read_text())) in (6, 7, 8)  # ~25% of 25, whole groups


@pytest.mark.skipif(not (CL_BENCHMARK / "SC" / "SST-2").is_dir(), reason="needs ../shared/CL_Benchmark")
def test_validation_split_of_real_sst2_is_disjoint(tmp_path):
    """SST-2's training file repeats 7 sentences: none lands on both sides; no validation text is a test text."""
    common = load_benchmark("common")
    out = common.carve_validation(CL_BENCHMARK, ["SST-2"], tmp_path / "val", n_val=200, seed=0, max_share=0.25)
    val, kept = _keys(common, out / "SC" / "SST-2" / "test.json"), _keys(common, out / "SC" / "SST-2" / "train.json")
    test = {common.row_key(r) for r in json.loads((CL_BENCHMARK / "SC" / "SST-2" / "test.json").read_text())}
    assert len(val) >= 200 and not set(val) & set(kept) and not set(val) & test
    assert json.loads((out / "validation.json").read_text())["SST-2"]["duplicate_texts_in_train"] == 7


# ----------------------------------------------------------------------------------- run, select and plan


@pytest.fixture
def toy(lb, tmp_path, monkeypatch, model_dirs):
    """leaderboard.py pointed at the tiny LLaMA and toy tasks, records and runs in tmp_path."""
    for name in ("topic", "mood"):
        write_task(tmp_path / "CL", name, n_train=8, n_test=4)
    monkeypatch.setattr(lb.spec, "SEQUENCES", {"4task": "topic,mood", "10task": "mood,topic"})
    budget = dict(model=str(model_dirs["llama"]), max_train=8, max_test=4, epochs=1.0, batch_size=4, lr=1e-3)
    monkeypatch.setattr(lb.spec, "BUDGETS", {"main": dict(budget, precision="fp32")})
    flags = ["--records", str(tmp_path / "rec"), "--data-dir", str(tmp_path / "CL")]
    return flags, ["--runs", str(tmp_path / "runs"), "--device", "cpu"]


def test_run_skips_recorded_and_writes_a_record(lb, toy, tmp_path, capsys):
    flags, running = toy
    tag = lb.spec.budget_tag(lb.spec.BUDGETS["main"])
    rec = tmp_path / "rec"
    put(rec, "inc-lora", 1, 12.0, -1.0, tag=tag)
    lb.main(["run", "--sequence", "4task", "--methods", "seq-lora,inc-lora", "--seeds", "1", *flags, *running])
    assert "inc-lora seed 1: recorded, skipped" in capsys.readouterr().out
    assert not (tmp_path / "runs" / tag / "4task" / "inc-lora").exists()  # nothing ran for it
    r = json.loads((rec / tag / "4task" / "seq-lora" / "seed-1.json").read_text())
    assert r["kind"] == "run" and r["budget_tag"] == tag and r["tasks"] == ["topic", "mood"] and r["seed"] == 1
    assert len(r["accuracy_matrix"]) == 2 and r["aa"] is not None and r["bwt"] is not None
    assert r["hyperparameter"]["source"] == "no coefficient" and r["settings"]["max_train"] == 8
    assert len(r["stored_bytes_per_task"]) == 2 and all(b > 1000 for b in r["stored_bytes_per_task"])
    assert r["acr"] is not None and r["nuclear_norm_mean"] is not None  # seq-lora: one update per task
    assert r["wall_time_s"] > 0 and r["machine"] and r["torch"] and r["train_steps_per_task"] == [2, 2]
    assert 0 < r["cpu_time_s"] <= r["wall_time_s"] * (r["threads"] + 1)  # the run's own process time
    assert r["train_cpu_seconds"] + r["eval_cpu_seconds"] == pytest.approx(r["cpu_time_s"], abs=0.05)
    assert not any(p.suffix == ".safetensors" for p in rec.rglob("*"))  # no adapters in the records
    assert r["device_type"] == "cpu" and r["nlora_commit"] == lb.source_commit()[0]
    # a second call finds both records and runs nothing
    lb.main(["run", "--sequence", "4task", "--methods", "seq-lora,inc-lora", "--seeds", "1", *flags, *running])
    assert capsys.readouterr().out.count("recorded, skipped") == 2


def fake_run(calls: list, aa_of: dict | None = None):
    """A stand-in for common.run_one: records its call, writes a minimal run directory, returns a summary whose AA
    depends on lambda (``aa_of``; by default the highest at 1e4)."""

    def run_one(args, method, tasks, seed, out, data_dir, lam):
        calls.append((method, seed, Path(data_dir), lam, args.epochs))
        for i, t in enumerate(tasks.split(",")):
            (out / "tasks" / f"0{i + 1}-{t}" / "adapter").mkdir(parents=True, exist_ok=True)
            (out / "tasks" / f"0{i + 1}-{t}" / "adapter" / "w.bin").write_bytes(b"x" * 100)
        aa = (aa_of or {1e3: 41.0, 1e4: 50.0, 1e5: 5.0}).get(lam, 30.0)
        return {"tasks": tasks.split(","), "aa": aa, "bwt": -1.0, "accuracy_matrix": [[aa]], "wall_time_s": 1.0}

    return run_one


def test_select_on_validation_then_run_uses_the_choice(lb, toy, tmp_path, monkeypatch, capsys):
    flags, running = toy
    calls = []
    monkeypatch.setattr(lb, "run_one", fake_run(calls))
    monkeypatch.setattr(lb.spec, "GRIDS", {"ewc": [1e3, 1e4, 1e5]})
    lb.main(["select", "--methods", "ewc,seq-lora", *flags, *running])  # seq-lora has no knob: no selection
    tag = lb.spec.budget_tag(lb.spec.BUDGETS["main"])
    assert [(m, s, lam) for m, s, _, lam, _ in calls] == [("ewc", 1, 1e3), ("ewc", 1, 1e4), ("ewc", 1, 1e5)]
    val_dir = tmp_path / "runs" / tag / "valdata" / "4task"
    assert all(d == val_dir for _, _, d, _, _ in calls)  # trained and scored on the validation split only
    choice = json.loads((tmp_path / "rec" / tag / "selection" / "4task" / "ewc" / "choice.json").read_text())
    assert choice["chosen"] == 1e4 and [p["aa"] for p in choice["points"]] == [41.0, 50.0, 5.0]
    point = json.loads((tmp_path / "rec" / tag / "selection" / "4task" / "ewc" / "lambda-1000.json").read_text())
    assert point["kind"] == "selection" and point["validation"]["topic"]["validation_rows"] == 2  # 25% of 8
    calls.clear()
    choice_file = tmp_path / "rec" / tag / "selection" / "4task" / "ewc" / "choice.json"
    before = choice_file.stat().st_mtime_ns
    capsys.readouterr()
    lb.main(["select", "--methods", "ewc", *flags, *running])
    assert calls == []  # every grid point recorded: nothing runs again
    assert choice_file.stat().st_mtime_ns == before and "record" not in capsys.readouterr().out  # nor is rewritten
    lb.main(["run", "--sequence", "4task", "--methods", "ewc", "--seeds", "1,2", "--epochs", "3", *flags, *running])
    assert [(s, lam, e) for _, s, _, lam, e in calls] == [(1, 1e4, 3.0), (2, 1e4, 3.0)]  # the budget's choice
    assert all(d == tmp_path / "CL" for _, _, d, _, _ in calls)  # the real tasks, not the validation split
    r = json.loads((tmp_path / "rec" / tag.replace("-e1-", "-e3-") / "4task" / "ewc" / "seed-2.json").read_text())
    assert r["hyperparameter"] == {"name": "lambda", "value": 1e4, "source": f"{tag}/selection/4task/ewc/choice.json"}
    assert r["stored_bytes_per_task"] == [100, 100]
    text = lb.table.build_table(tmp_path / "rec", tmp_path / "lb.md")
    assert "| ewc | 1000: 41.00 / -1.00, 10000: 50.00 / -1.00, 100000: 5.00 / -1.00 | 10000 |" in text


def test_prompt_and_full_finetuning_methods_select_their_learning_rate(lb, toy, tmp_path, monkeypatch):
    """LR_KNOB methods: the grid varies the run's lr (the method's coefficient stays at its default, lambda None),
    the records say "lr", and the runs after it use the chosen lr within the same budget tag."""
    flags, running = toy
    calls = []

    def run_one(args, method, tasks, seed, out, data_dir, lam):
        calls.append((method, seed, args.lr, lam))
        (out / "tasks" / "01-topic" / "adapter").mkdir(parents=True, exist_ok=True)
        aa = {2e-3: 20.0, 2e-2: 45.0, 2e-1: 30.0}.get(args.lr, 0.0)
        return {"tasks": tasks.split(","), "aa": aa, "bwt": -2.0, "accuracy_matrix": [[aa]], "wall_time_s": 1.0}

    monkeypatch.setattr(lb, "run_one", run_one)
    monkeypatch.setattr(lb.spec, "GRIDS", {"seq-prompt": [2e-3, 2e-2, 2e-1]})
    assert (
        lb.spec.knob_of("seq-prompt") == "lr"
        and lb.spec.knob_of("seq-ft") == "lr"
        and lb.spec.knob_of("ewc") == "lambda"
    )
    lb.main(["select", "--methods", "seq-prompt", *flags, *running])
    assert calls == [("seq-prompt", 1, 2e-3, None), ("seq-prompt", 1, 2e-2, None), ("seq-prompt", 1, 2e-1, None)]
    tag = lb.spec.budget_tag(lb.spec.BUDGETS["main"])
    sel = tmp_path / "rec" / tag / "selection" / "4task" / "seq-prompt"
    assert sorted(p.name for p in sel.iterdir()) == ["choice.json", "lr-0.002.json", "lr-0.02.json", "lr-0.2.json"]
    assert json.loads((sel / "lr-0.02.json").read_text())["hyperparameter"]["name"] == "lr"
    choice = json.loads((sel / "choice.json").read_text())
    assert choice["knob"] == "lr" and choice["chosen"] == 2e-2
    calls.clear()
    lb.main(["run", "--sequence", "4task", "--methods", "seq-prompt", "--seeds", "1", *flags, *running])
    assert calls == [("seq-prompt", 1, 2e-2, None)]
    r = json.loads((tmp_path / "rec" / tag / "4task" / "seq-prompt" / "seed-1.json").read_text())
    assert r["hyperparameter"]["name"] == "lr" and r["hyperparameter"]["value"] == 2e-2
    text = lb.table.build_table(tmp_path / "rec", tmp_path / "lb.md")
    assert "| seq-prompt | lr 0.002: 20.00 / -2.00, lr 0.02: 45.00 / -2.00, lr 0.2: 30.00 / -2.00 | lr 0.02 |" in text
    assert "| seq-prompt | no | lr 0.02 (chosen) | 1 |" in text


def test_a_learning_rate_knob_reaches_the_real_run(lb, toy, tmp_path):
    """Through common.run_one: the lr given for an LR_KNOB method is the lr the run's config trains with."""
    import yaml

    flags, running = toy
    args = ["run", "--sequence", "4task", "--methods", "seq-prompt", "--seeds", "1", "--lambda", "seq-prompt=0.05"]
    lb.main([*args, *flags, *running])
    tag = lb.spec.budget_tag(lb.spec.BUDGETS["main"])
    cfg = yaml.safe_load((tmp_path / "runs" / tag / "4task" / "seq-prompt" / "seed-1" / "config.yaml").read_text())
    assert {t["lr"] for t in cfg["tasks"]} == {0.05}
    r = json.loads((tmp_path / "rec" / tag / "4task" / "seq-prompt" / "seed-1.json").read_text())
    assert r["hyperparameter"] == {"name": "lr", "value": 0.05, "source": "command line"}


def test_a_selection_still_running_shows_its_points_so_far(lb, toy, tmp_path, monkeypatch):
    flags, running = toy
    calls = []
    fake = fake_run(calls)

    def run_one(args, method, tasks, seed, out, data_dir, lam):
        if lam == 1e5:
            raise RuntimeError("not finished")
        return fake(args, method, tasks, seed, out, data_dir, lam)

    monkeypatch.setattr(lb, "run_one", run_one)
    monkeypatch.setattr(lb.spec, "GRIDS", {"ewc": [1e3, 1e4, 1e5]})
    with pytest.raises(SystemExit, match="1 run\\(s\\) failed"):  # the third point has not finished
        lb.main(["select", "--methods", "ewc", *flags, *running])
    tag = lb.spec.budget_tag(lb.spec.BUDGETS["main"])
    assert not (tmp_path / "rec" / tag / "selection" / "4task" / "ewc" / "choice.json").exists()
    text = lb.table.build_table(tmp_path / "rec", tmp_path / "lb.md")
    assert "| ewc | 1000: 41.00 / -1.00, 10000: 50.00 / -1.00 | running: 2 of 3 points |" in text


@pytest.mark.parametrize(
    "aa_of, ran, chosen",
    [  # AA by lambda; the values selection runs, in order; its choice
        ({1e3: 10.0, 1e4: 20.0, 1e5: 30.0, 1e6: 40.0, 1e7: 35.0}, [1e3, 1e4, 1e5, 1e6, 1e7], 1e6),
        ({1e3: 10.0, 1e4: 20.0, 1e5: 30.0, 1e6: 40.0, 1e7: 50.0}, [1e3, 1e4, 1e5, 1e6, 1e7], 1e7),  # two at most
        ({1e2: 40.0, 1e3: 50.0, 1e4: 20.0, 1e5: 10.0}, [1e3, 1e4, 1e5, 1e2], 1e3),  # the lower end, one step
        ({1e3: 10.0, 1e4: 50.0, 1e5: 30.0}, [1e3, 1e4, 1e5], 1e4),  # inside the grid: nothing added
    ],
)
def test_a_best_value_on_an_end_of_the_grid_adds_the_next_one_beyond_it(
    lb, toy, tmp_path, monkeypatch, aa_of, ran, chosen
):
    flags, running = toy
    calls = []
    monkeypatch.setattr(lb, "run_one", fake_run(calls, aa_of))
    monkeypatch.setattr(lb.spec, "GRIDS", {"ewc": [1e3, 1e4, 1e5]})
    lb.main(["select", "--methods", "ewc", *flags, *running])
    assert [lam for *_, lam, _ in calls] == ran
    sel = tmp_path / "rec" / lb.spec.budget_tag(lb.spec.BUDGETS["main"]) / "selection" / "4task" / "ewc"
    choice = json.loads((sel / "choice.json").read_text())
    assert choice["chosen"] == chosen and choice["grid"] == [1e3, 1e4, 1e5]
    assert [p["value"] for p in choice["points"]] == sorted(ran)
    for value in ran[3:]:
        source = json.loads((sel / f"lambda-{value:g}.json").read_text())["hyperparameter"]["source"]
        assert source.startswith("beyond the grid's end")
    calls.clear()
    lb.main(["select", "--methods", "ewc", *flags, *running])
    assert calls == []  # all recorded: nothing more


def test_a_memory_knob_is_not_extended_above_its_grid_and_a_point_above_it_is_shown_apart(
    lb, toy, tmp_path, monkeypatch
):
    """replay's λ is how much of each earlier task it keeps: a best value on the grid's upper end (more memory,
    more accuracy) adds nothing above it, while the lower end still extends; a point recorded above the grid (by
    an earlier version) is listed apart in the selection table and never chosen."""
    flags, running = toy
    calls = []
    rising = {0.01: 40.0, 0.02: 50.0, 0.05: 60.0, 0.13: 70.0}
    monkeypatch.setattr(lb, "run_one", fake_run(calls, rising))
    monkeypatch.setattr(lb.spec, "GRIDS", {"replay": [0.01, 0.02, 0.05]})
    lb.main(["select", "--methods", "replay", *flags, *running])
    assert [lam for *_, lam, _ in calls] == [0.01, 0.02, 0.05]
    tag = lb.spec.budget_tag(lb.spec.BUDGETS["main"])
    sel = tmp_path / "rec" / tag / "selection" / "4task" / "replay"
    assert json.loads((sel / "choice.json").read_text())["chosen"] == 0.05
    text = lb.table.build_table(tmp_path / "rec", tmp_path / "lb.md")
    assert "| replay | 0.01: 40.00 / -1.00, 0.02: 50.00 / -1.00, 0.05: 60.00 / -1.00 | 0.05 |" in text
    assert "The knob of replay is how much of each earlier task's data it keeps" in text
    above = json.loads((sel / "lambda-0.05.json").read_text())
    above["aa"], above["hyperparameter"]["value"] = 70.0, 0.13
    (sel / "lambda-0.13.json").write_text(json.dumps(above))
    text = lb.table.build_table(tmp_path / "rec", tmp_path / "lb.md")
    row = "0.05: 60.00 / -1.00; not candidates, above its memory range: 0.13: 70.00 / -1.00 | 0.05 |"
    assert row in text
    calls.clear()
    lb.main(["run", "--sequence", "4task", "--methods", "replay", "--seeds", "1", *flags, *running])
    assert [lam for *_, lam, _ in calls] == [0.05]
    above["aa"], above["hyperparameter"]["value"] = 20.0, 0.03  # a value since taken off the grid: said so
    (sel / "lambda-0.03.json").write_text(json.dumps(above))
    text = lb.table.build_table(tmp_path / "rec", tmp_path / "lb.md")
    assert "0.05: 60.00 / -1.00; not candidates, off its grid: 0.03: 20.00 / -1.00, 0.13: 70.00 / -1.00 |" in text
    (sel / "lambda-0.03.json").unlink()
    (sel / "choice.json").unlink()
    (sel / "lambda-0.05.json").unlink()  # a selection still running, with a point above its grid: shown apart
    text = lb.table.build_table(tmp_path / "rec", tmp_path / "lb.md")
    row = "0.02: 50.00 / -1.00; not candidates, above its memory range: 0.13: 70.00 / -1.00 | running: 2 of 3 points |"
    assert row in text
    falling = {0.005: 30.0, 0.01: 60.0, 0.02: 50.0, 0.05: 40.0}
    monkeypatch.setattr(lb, "run_one", fake_run(calls, falling))
    calls.clear()
    other = ["--records", str(tmp_path / "rec-2"), *flags[2:]]  # a fresh selection, the same data
    lb.main(["select", "--methods", "replay", *other, "--runs", str(tmp_path / "runs-2"), *running[2:]])
    assert [lam for *_, lam, _ in calls] == [0.01, 0.02, 0.05, 0.005]  # less memory: the lower end still extends


def test_a_linear_grid_is_not_extended_and_a_choice_on_an_end_is_not_used_until_extended(
    lb, toy, tmp_path, monkeypatch, capsys
):
    flags, running = toy
    calls = []
    rising = {0.5: 10.0, 0.7: 20.0, 0.9: 30.0, 1e3: 10.0, 1e4: 20.0, 1e5: 30.0, 1e6: 25.0}
    monkeypatch.setattr(lb, "run_one", fake_run(calls, rising))
    monkeypatch.setattr(lb.spec, "GRIDS", {"migu-lora": [0.5, 0.7, 0.9], "ewc": [1e3, 1e4, 1e5]})
    lb.main(["select", "--methods", "migu-lora", *flags, *running])
    assert [lam for *_, lam, _ in calls] == [0.5, 0.7, 0.9]  # best on its end, but a range, not a scale
    monkeypatch.setattr(lb.spec, "EDGE_STEPS", 0)  # as an earlier version selected: the grid alone
    lb.main(["select", "--methods", "ewc", *flags, *running])
    tag = lb.spec.budget_tag(lb.spec.BUDGETS["main"])
    assert json.loads((tmp_path / "rec" / tag / "selection/4task/ewc/choice.json").read_text())["chosen"] == 1e5
    monkeypatch.setattr(lb.spec, "EDGE_STEPS", 2)
    calls.clear()
    capsys.readouterr()
    lb.main(["run", "--sequence", "4task", "--methods", "ewc", "--seeds", "1", *flags, *running])
    assert calls == [] and "is not final" in capsys.readouterr().out
    text = lb.table.build_table(tmp_path / "rec", tmp_path / "lb.md")
    assert "| ewc | 1000: 10.00 / -1.00, 10000: 20.00 / -1.00, 100000: 30.00 / -1.00 | running: 3 of 4 points |" in text
    lb.main(["select", "--methods", "ewc", *flags, *running])
    assert [lam for *_, lam, _ in calls] == [1e6]
    lb.main(["run", "--sequence", "4task", "--methods", "ewc", "--seeds", "1", *flags, *running])
    assert [lam for *_, lam, _ in calls] == [1e6, 1e5]  # now final: 1e5, inside the extended grid


def test_run_without_a_selection_refuses_the_method(lb, toy, tmp_path, monkeypatch, capsys):
    flags, running = toy
    calls = []
    monkeypatch.setattr(lb, "run_one", fake_run(calls))
    lb.main(["run", "--sequence", "4task", "--methods", "ewc", "--seeds", "1", *flags, *running])
    assert calls == [] and "no selection record" in capsys.readouterr().out


def test_plan_lists_missing_records(lb, toy, tmp_path, capsys):
    flags, _ = toy
    tag = lb.spec.budget_tag(lb.spec.BUDGETS["main"])
    put(tmp_path / "rec", "seq-lora", 2, 40.0, -1.0, tag=tag)
    started = tmp_path / "runs" / tag / "4task" / "seq-lora" / "seed-3"  # stopped after its first task
    write_json(
        started / "config.yaml", {"method": "seq-lora", "model": "m", "tasks": [{"name": "topic"}, {"name": "mood"}]}
    )
    write_json(started / "tasks" / "01-topic" / "train_stats.json", {"train_steps": 2})
    write_json(started / "tasks" / "01-topic" / "predict_results.json", {"predict_runtime": 1.0})
    lb.main(["plan", "--verbose", *flags, "--runs", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    n = 3 * len(lb.REGISTRY)
    assert f"4task x every method: 1 of {n} recorded, {n - 1} missing" in out
    assert f"missing {tag}/4task/seq-lora/seed-1.json" in out and f"{tag}/4task/seq-lora/seed-2.json" not in out
    listed = [line for line in out.splitlines() if "/4task/" in line and "selection" not in line]
    assert listed[0].endswith("seed-3.json (1 of 2 tasks done, stopped: resumes where it stopped)")  # listed first
    assert f"missing {tag}/selection/4task/n-lora/lambda-1e-05.json" in out
    assert "budget: 4task at 3 epoch(s): 0 of 6 recorded" in out and "-e3-" in out


def test_plan_names_the_tie_break_runs_past_it(lb, toy, tmp_path, capsys):
    flags, _ = toy
    tag = lb.spec.budget_tag(lb.spec.BUDGETS["main"])
    lb.main(["plan", *flags])
    assert "past the plan" not in capsys.readouterr().out  # nothing to tell apart yet
    for seed, a, b in ((1, 50.0, 48.0), (2, 52.0, 53.0), (3, 54.0, 50.0)):
        put(tmp_path / "rec", "o-lora", seed, a, -1.0, tag=tag)
        put(tmp_path / "rec", "n-lora", seed, b, -1.0, tag=tag)
    put(tmp_path / "rec", "o-lora", 4, 55.0, -1.0, tag=tag)  # one of them done
    lb.main(["plan", *flags])
    out = capsys.readouterr().out
    assert (
        "Then, past the plan (the queue's last lines): 4task seeds 4,5 for o-lora and the methods within its seed "
        "spread (n-lora): 3 run(s) missing" in out
    )


def test_plan_estimates_from_the_budgets_own_records(lb, toy, tmp_path, capsys):
    flags, _ = toy
    tag = lb.spec.budget_tag(lb.spec.BUDGETS["main"])
    timing = dict(train_steps_per_task=[2, 2], accuracy_matrix=[[50.0, None], [40.0, 60.0]], settings={"max_test": 4})
    # 4 steps and 3 cells x 4 answers: wall time 40 s of training (a pause in it), 24 s of evaluation
    put(tmp_path / "rec", "seq-lora", 1, 40.0, -1.0, tag=tag, train_seconds=40.0, eval_seconds=24.0, **timing)
    put(tmp_path / "rec", "seq-lora", 2, 40.0, -1.0, tag=tag, train_seconds=40.0, eval_seconds=24.0, **timing)
    # CPU seconds win where a record has them: 8 s / 4 steps, 6 s / 12 answers
    cpu = dict(train_cpu_seconds=8.0, eval_cpu_seconds=6.0)
    put(tmp_path / "rec", "l2p", 1, 9.0, -1.0, tag=tag, train_seconds=400.0, eval_seconds=240.0, **cpu, **timing)
    put(tmp_path / "rec", "mtl", 1, 9.0, None, tag=tag, train_seconds=40.0)  # no evaluation time: not a rate
    # only a total CPU time: split as the wall seconds are (3/4 training): 12 s / 4 steps, 4 s / 12 answers
    put(
        tmp_path / "rec", "ewc", 1, 9.0, -1.0, tag=tag, train_seconds=60.0, eval_seconds=20.0, cpu_time_s=16.0, **timing
    )
    # a GPU's seconds are not this CPU's: left out of the rates
    put(tmp_path / "rec", "inc-lora", 1, 9.0, -1.0, tag=tag, device_type="cuda", **cpu, **timing)
    # a wall-only record counts only for a method with no CPU-timed record: ewc's 60 s / 4 steps is left out
    put(tmp_path / "rec", "ewc", 2, 9.0, -1.0, tag=tag, train_seconds=60.0, eval_seconds=20.0, **timing)
    rates = lb.pacing.measured_rates(tmp_path / "rec", tag)
    assert rates == {"seq-lora": (10.0, 2.0), "l2p": (2.0, 0.5), "ewc": (3.0, pytest.approx(4.0 / 12))}
    s = lb.spec.BUDGETS["main"]
    one = lb.pacing.estimate_s(s, "4task", 1.0, tmp_path / "CL", rates["seq-lora"])
    # topic and mood: 2 steps each at 10 s, (2 x 4) answers each at 2 s, and the model load
    assert one == pytest.approx(lb.pacing.SEC_PER_RUN + 4 * 10.0 + 16 * 2.0)
    lb.main(["plan", *flags])
    out = capsys.readouterr().out
    assert "seq-lora 10.0 s/step, 2.00 s/answer" in out and "l2p 2.0 s/step, 0.50 s/answer" in out


def test_records_made_on_this_machine_set_its_pace_unscaled(lb, toy, tmp_path, monkeypatch, capsys):
    """--pace-scale corrects other machines' records only: a method's records made here are its pace as they
    are, and CPU seconds at T threads count as one thread spends them (T ** (1 - THREAD_SCALING) less)."""
    flags, _ = toy
    tag = lb.spec.budget_tag(lb.spec.BUDGETS["main"])
    here, there = "Here CPU (x86_64, AVX2)", "There CPU (x86_64, AVX512)"
    assert lb.pacing.host_of(f"{here}, 2 threads") == lb.pacing.host_of(f"{here}, 1 threads") == here
    timing = dict(train_steps_per_task=[2, 2], accuracy_matrix=[[50.0, None], [40.0, 60.0]], settings={"max_test": 4})
    # 4 steps and 12 answers; elsewhere at one thread: 2 s/step, 0.5 s/answer
    cpu_there = dict(train_cpu_seconds=8.0, eval_cpu_seconds=6.0, machine=f"{there}, 1 threads", threads=1)
    # here at 2 threads: 2 ** 0.2 times the CPU seconds of one thread, which spends 3 s/step and 1 s/answer
    extra = 2 ** (1 - lb.pacing.THREAD_SCALING)
    cpu_here = dict(
        train_cpu_seconds=12.0 * extra, eval_cpu_seconds=12.0 * extra, machine=f"{here}, 2 threads", threads=2
    )
    put(tmp_path / "rec", "seq-lora", 1, 40.0, -1.0, tag=tag, **cpu_there, **timing)
    put(tmp_path / "rec", "seq-lora", 2, 40.0, -1.0, tag=tag, **cpu_here, **timing)
    put(tmp_path / "rec", "inc-lora", 1, 40.0, -1.0, tag=tag, **cpu_there, **timing)
    rates = lb.pacing.measured_rates(tmp_path / "rec", tag, here=here, scale=1.5)
    assert rates["seq-lora"] == (pytest.approx(3.0), pytest.approx(1.0))  # its record here, unscaled
    assert rates["inc-lora"] == (3.0, 0.75)  # only records elsewhere: x 1.5
    # on another machine again, both seq-lora records are elsewhere: the median of 2 and 3 s/step, x 1.5
    assert lb.pacing.measured_rates(tmp_path / "rec", tag, here="Third CPU", scale=1.5)["seq-lora"] == (
        pytest.approx(3.75),
        pytest.approx(1.125),
    )
    monkeypatch.setattr(lb.pacing, "machine_name", lambda device: f"{here}, 1 threads")
    lb.main(["plan", *flags, "--pace-scale", "1.5"])
    out = capsys.readouterr().out
    assert "seq-lora 3.0 s/step, 1.00 s/answer (measured here)" in out
    assert "inc-lora 3.0 s/step, 0.75 s/answer, seq-lora" in out and "other machines' records x 1.5 for this one" in out


def test_a_failing_run_is_reported_and_the_others_go_on(lb, toy, tmp_path, monkeypatch, capsys):
    flags, running = toy
    calls, ok = [], fake_run([])

    def run_one(args, method, tasks, seed, out, data_dir, lam):
        calls.append((method, seed))
        if method == "seq-lora":
            raise RuntimeError("broken")
        return ok(args, method, tasks, seed, out, data_dir, lam)

    monkeypatch.setattr(lb, "run_one", run_one)
    with pytest.raises(SystemExit, match="1 run"):
        lb.main(["run", "--sequence", "4task", "--methods", "seq-lora,inc-lora", "--seeds", "1", *flags, *running])
    assert calls == [("seq-lora", 1), ("inc-lora", 1)] and "FAILED seq-lora seed 1" in capsys.readouterr().out
    recs = sorted(p.relative_to(tmp_path / "rec").as_posix() for p in (tmp_path / "rec").rglob("seed-*.json"))
    assert recs == [
        f"{lb.spec.budget_tag(lb.spec.BUDGETS['main'])}/4task/inc-lora/seed-1.json"
    ]  # none for the failed run


def test_commit_commits_only_the_record(lb, tmp_path, monkeypatch):
    import subprocess

    for k, v in (("GIT_AUTHOR_NAME", "t"), ("GIT_AUTHOR_EMAIL", "t@t"), ("GIT_COMMITTER_NAME", "t")):
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "t@t")
    repo = tmp_path / "repo"
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, capture_output=True, text=True, check=True).stdout  # noqa: E731
    repo.mkdir()
    git("init", "-q")
    (repo / "other.txt").write_text("staged, not to be committed")
    git("add", "other.txt")
    path = repo / "rec" / TAG / "4task" / "ewc" / "seed-1.json"
    lb.save_record(path, {"budget_tag": TAG, "sequence": "4task", "method": "ewc", "aa": 1.0}, commit=True)
    assert git("log", "--name-only", "--format=%s").split() == [
        "leaderboard",
        "record:",
        TAG,
        "4task",
        "ewc",
        "seed-1",
        f"rec/{TAG}/4task/ewc/seed-1.json",
    ]
    assert "A  other.txt" in git("status", "--porcelain")  # still staged, not committed


def test_tree_is_dirty_for_code_changes_not_for_records(lb, tmp_path, monkeypatch):
    import subprocess

    repo = tmp_path / "repo"
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, capture_output=True, text=True, check=True)  # noqa: E731
    record, code = repo / "benchmarks" / "records" / "choice.json", repo / "src" / "code.py"
    for path in (record, code):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("first\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "start")
    monkeypatch.setattr(lb.spec, "ROOT", repo)
    assert lb.code_changed() is False
    record.write_text("rewritten by the runner\n")
    (repo / "benchmarks" / "records" / "new.json").write_text("{}")
    assert lb.code_changed() is False
    code.write_text("changed\n")
    assert lb.code_changed() is True


def test_a_run_another_process_holds_is_skipped_not_failed(lb, toy, tmp_path, monkeypatch, capsys):
    from nlora.errors import NloraError

    flags, running = toy

    def busy(args, method, tasks, seed, out, data_dir, lam):
        raise NloraError(f"{out} is in use by process 123 (an nlora run or eval holds it); wait for it to end")

    monkeypatch.setattr(lb, "run_one", busy)
    lb.main(["run", "--sequence", "4task", "--methods", "seq-lora", "--seeds", "1,2", *flags, *running])  # no exit
    assert capsys.readouterr().out.count("another process is running it, skipped") == 2
    assert not list((tmp_path / "rec").rglob("seed-*.json"))


def test_record_takes_a_run_made_elsewhere_only_at_its_budget(lb, toy, tmp_path, model_dirs, capsys):
    from nlora.cli import main as nlora

    flags, _ = toy
    out = tmp_path / "elsewhere"
    common = ["--model", str(model_dirs["llama"]), "--data-dir", str(tmp_path / "CL"), "--tasks", "topic,mood"]
    args = ["--max-test-per-task", "4", "--batch-size", "4", "--lr", "1e-3", "--precision", "fp32", "--seed", "2"]
    extra = ["--eval-scope", "needed", "--unknown-labels", "drop", "--device", "cpu", "--method", "o-lora"]
    assert nlora(["run", *common, "--output-dir", str(out), "--max-train-per-task", "8", *args, *extra]) == 0
    tag = lb.spec.budget_tag(lb.spec.BUDGETS["main"])
    lb.main(["record", str(out), "--sequence", "4task", "--run-commit", "abc123", *flags])
    r = json.loads((tmp_path / "rec" / tag / "4task" / "o-lora" / "seed-2.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert r["aa"] == summary["aa"] and r["accuracy_matrix"] == summary["accuracy_matrix"] and r["seed"] == 2
    assert r["hyperparameter"]["value"] == 0.5 and r["hyperparameter"]["source"].startswith("method default")
    assert r["made_outside_runner"] and r["nlora_commit"] == "abc123" and r["acr"] is not None
    # a run at another budget is refused in one line naming the field, and nothing is written
    other = tmp_path / "other"
    assert nlora(["run", *common, "--output-dir", str(other), "--max-train-per-task", "6", *args, *extra]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        lb.main(["record", str(other), "--sequence", "4task", "--replace", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "max_train_per_task is 6" in err[0] and tag in err[0]
    assert json.loads((tmp_path / "rec" / tag / "4task" / "o-lora" / "seed-2.json").read_text()) == r


def test_until_reads_a_clock_time_or_an_iso_moment(lb):
    import argparse
    import datetime

    now = datetime.datetime.now().astimezone()
    soon = lb.pacing.until_time((now + datetime.timedelta(minutes=5)).strftime("%H:%M"))
    assert datetime.timedelta(minutes=3) < soon - now <= datetime.timedelta(minutes=5)  # today, ahead
    past = lb.pacing.until_time((now - datetime.timedelta(minutes=5)).strftime("%H:%M"))
    assert datetime.timedelta(hours=23) < past - now < datetime.timedelta(days=1)  # its next occurrence
    assert lb.pacing.until_time("2030-01-02T03:04").year == 2030
    with pytest.raises(argparse.ArgumentTypeError, match="25:99"):
        lb.pacing.until_time("25:99")


def test_until_starts_only_runs_expected_to_end_before_it(lb, toy, tmp_path, monkeypatch, capsys):
    """A run is started only if the budget's CPU rates say it ends before --until; a started run counts only what
    it has left; on a GPU the budget's GPU records' wall seconds are the pace, and with none yet a run starts."""
    import datetime

    flags, running = toy
    tag = lb.spec.budget_tag(lb.spec.BUDGETS["main"])
    rec = tmp_path / "rec"
    timing = dict(train_steps_per_task=[2, 2], accuracy_matrix=[[50.0, None], [40.0, 60.0]], settings={"max_test": 4})
    # inc-lora's measured pace: 4 steps in 400 CPU s, 12 answers in 120 s -> 100 s/step, 10 s/answer
    put(rec, "inc-lora", 1, 9.0, -1.0, tag=tag, train_cpu_seconds=400.0, eval_cpu_seconds=120.0, **timing)
    # one toy run: 4 steps x 100 s + 16 answers x 10 s + the load, then x UNTIL_MARGIN at one thread: about 12 min
    need = (lb.pacing.SEC_PER_RUN + 4 * 100.0 + 16 * 10.0) * lb.pacing.UNTIL_MARGIN
    calls = []
    monkeypatch.setattr(lb, "run_one", fake_run(calls))

    def run(minutes: float, *extra):
        at = datetime.datetime.now().astimezone() + datetime.timedelta(minutes=minutes)
        args = ["run", "--sequence", "4task", "--methods", "inc-lora", "--seeds", "2", "--threads", "1"]
        lb.main([*args, "--until", at.isoformat(), *flags, *running, *extra])

    run(need / 60 - 2)
    assert calls == [] and f"inc-lora seed 2: about {need / 60:.0f} min at 1 thread(s)" in capsys.readouterr().out
    assert not (rec / tag / "4task" / "inc-lora" / "seed-2.json").exists()
    # on a machine twice as slow as the records' (--pace-scale 2) the time that fits at their pace is too short
    run(need / 60 + 2, "--pace-scale", "2")
    assert calls == [] and f"inc-lora seed 2: about {2 * need / 60:.0f} min at 1 thread(s)" in capsys.readouterr().out
    # half done already (its first task of two): half the time is enough
    started = tmp_path / "runs" / tag / "4task" / "inc-lora" / "seed-2"
    write_json(started / "config.yaml", {"method": "inc-lora", "model": "m", "tasks": [{"name": "t"}, {"name": "m"}]})
    write_json(started / "tasks" / "01-topic" / "train_stats.json", {"train_steps": 2})
    write_json(started / "tasks" / "01-topic" / "predict_results.json", {"predict_runtime": 1.0})
    run(need / 60 / 2 + 2)
    assert [c[:2] for c in calls] == [("inc-lora", 2)] and (rec / tag / "4task" / "inc-lora" / "seed-2.json").exists()
    # on a GPU the CPU records say nothing: with no GPU record yet the run starts (the first runs measure the pace)
    run(1, "--device", "cuda", "--seeds", "3")
    assert [c[:2] for c in calls][-1] == ("inc-lora", 3) and "not started" not in capsys.readouterr().out
    # then the GPU records' wall seconds are the pace: 4 steps in 40 s, 12 answers in 12 s -> 10 s/step, 1 s/answer
    gpu = dict(timing, device_type="cuda", train_seconds=40.0, eval_seconds=12.0, train_cpu_seconds=4000.0)
    put(rec, "inc-lora", 9, 9.0, -1.0, tag=tag, **gpu)
    need_gpu = (lb.pacing.SEC_PER_RUN + 4 * 10.0 + 16 * 1.0) * lb.pacing.UNTIL_MARGIN  # about 1.5 min
    run(need_gpu / 60 - 0.5, "--device", "cuda", "--seeds", "4")
    assert len(calls) == 2 and f"inc-lora seed 4: about {need_gpu / 60:.0f} min on the GPU" in capsys.readouterr().out
    run(need_gpu / 60 + 0.5, "--device", "cuda", "--seeds", "4")
    assert [c[:2] for c in calls][-1] == ("inc-lora", 4)
    # and a GPU record is not a CPU pace: the CPU estimate is still inc-lora's 100 s/step
    assert lb.pacing.measured_rates(rec, tag)["inc-lora"] == (100.0, 10.0)
    assert lb.pacing.measured_rates(rec, tag, on_gpu=True) == {"inc-lora": (10.0, 1.0)}
    # selection points too: ewc has no records, so it goes at the slowest measured pace: mtl's 200 s/step and
    # 20 s/answer, not inc-lora's (the median of the two would be 150 s and 15 s)
    put(rec, "mtl", 1, 9.0, None, tag=tag, train_cpu_seconds=800.0, eval_cpu_seconds=240.0, **timing)
    paths = SimpleNamespace(records=rec, runs=tmp_path / "runs", data_dir=tmp_path / "CL", budget="main")
    assert lb.pacing.Pace(paths, lb.spec.BUDGETS["main"]).slowest == (200.0, 20.0)
    monkeypatch.setattr(lb.spec, "GRIDS", {"ewc": [1e3, 1e4, 1e5]})
    slow = (lb.pacing.SEC_PER_RUN + 4 * 200.0 + 16 * 20.0) * lb.pacing.UNTIL_MARGIN
    # 2 minutes short of that pace's end: at the median's (R + 4 x 150 + 16 x 15) x 1.2 it would fit by 3.6 min
    soon = (datetime.datetime.now().astimezone() + datetime.timedelta(minutes=slow / 60 - 2)).isoformat()
    lb.main(["select", "--methods", "ewc", "--threads", "1", "--until", soon, *flags, *running])
    out = capsys.readouterr().out
    assert len(calls) == 3 and out.count("; not started") == 3 and "selection incomplete" in out
    assert f"about {slow / 60:.0f} min at 1 thread(s)" in out


# ------------------------------------------------------------------------------------------------ the queue


def _queue_calls(tmp_path, *flags) -> tuple[int, list[list[str]], str]:
    """benchmarks/leaderboard_queue.sh with a stand-in interpreter that logs each leaderboard.py call's flags."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    log = tmp_path / "calls.jsonl"
    fake = tmp_path / "python"
    fake.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "print(json.dumps(sys.argv[2:]), file=open(os.environ['CALLS'], 'a'))\n"
    )
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "CALLS": str(log)}
    done = subprocess.run(
        ["bash", str(BENCHMARKS / "leaderboard_queue.sh"), *flags], env=env, capture_output=True, text=True, timeout=60
    )
    calls = [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []
    return done.returncode, calls, done.stderr


def _flag(call: list[str], name: str) -> str | None:
    """The value a queue call gives the flag `name` (None for a line without it)."""
    return call[call.index(name) + 1] if name in call else None


def _methods(call: list[str]) -> list[str]:
    """The --methods a queue call names ([] for a line without the flag)."""
    value = _flag(call, "--methods")
    return value.split(",") if value is not None else []


def test_queue_fill_goes_through_it_again_without_until(tmp_path):
    rc, calls, _ = _queue_calls(tmp_path, "--threads", "1", "--until", "17:05")
    assert rc == 0 and calls and not any("--fill" in c for c in calls)
    assert all(c[1:5] == ["--threads", "1", "--until", "17:05"] for c in calls)  # every line gets the flags
    one_pass = len(calls)
    rc, calls, err = _queue_calls(tmp_path / "fill", "--threads", "1", "--fill", "--until", "17:05")
    assert rc == 0 and len(calls) == 2 * one_pass and "filling" in err
    first, second = calls[:one_pass], calls[one_pass:]
    assert all("--until" in c and "--fill" not in c for c in first)
    assert all("--until" not in c and "17:05" not in c and "--fill" not in c for c in second)
    assert [[x for x in c if x not in ("--until", "17:05")] for c in first] == second  # the same lines, in order
    rc, calls, err = _queue_calls(tmp_path / "alone", "--fill")
    assert rc == 2 and not calls and "--fill needs --until" in err


def test_every_queue_line_names_what_leaderboard_py_knows(tmp_path, lb):
    """A misspelt flag, method or sequence in the queue would fail only when the queue reaches its line, hours into
    a session: each line must parse as leaderboard.py parses it, and its --methods must be known, now."""
    rc, calls, _ = _queue_calls(tmp_path, "--threads", "1")
    assert rc == 0 and calls
    for call in calls:
        args = lb.build_parser().parse_args(call)  # SystemExit on an unknown subcommand, flag or sequence
        assert args.cmd in ("select", "run"), call
        lb.expand_methods(args.methods, tmp_path / "no-records", "t")  # SystemExit on an unknown method
    assert any(c[0] == "run" and "ewc" in _methods(c) for c in calls)


def test_queue_runs_ewc_on_10_tasks_before_the_other_methods_selections(tmp_path):
    """ewc, the 4-task best, is the likeliest to pass o-lora on 10 tasks (issue 18's goal): its 10-task seeds come
    before the selections of the methods not yet measured, not after every 4-task run as the best-five line would."""
    rc, calls, _ = _queue_calls(tmp_path, "--threads", "1")
    assert rc == 0

    def first(pred):
        return next(i for i, c in enumerate(calls) if pred(c))

    ewc_10 = first(lambda c: c[0] == "run" and "10task" in c and "ewc" in _methods(c))
    assert _flag(calls[ewc_10], "--seeds") == "1,2"
    assert ewc_10 < first(lambda c: c[0] == "select" and "replay" in _methods(c))
    assert ewc_10 < first(lambda c: c[0] == "run" and "best5" in _methods(c))


def test_the_script_runs_as_the_queue_calls_it(tmp_path):
    """`python benchmarks/leaderboard.py ...` as a command (the queue's and the docs' way), not only lb.main: the
    modules beside it import, and the command does its work."""
    records = tmp_path / "records"
    for seed in (1, 2):
        put(records, "seq-lora", seed, 30.0 + seed, -40.0)
    out = tmp_path / "board.md"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "leaderboard.py"), "table", "--records", str(records), "--out", str(out)]
        + ["--no-plan"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "| seq-lora |" in out.read_text() and "31.50 ± 0.71" in out.read_text()


def test_every_grid_value_reaches_its_method_as_the_knob_it_names(lb, tmp_path):
    """Each GRIDS value, through the path a run takes (run_inputs -> common.run_overrides -> resolve ->
    build_method), arrives as the run's lr (LR_KNOB) or as the method's main option, the one `--lambda` sets:
    a grid whose values a method ignored or refused would only show hours into a selection."""
    from nlora.config import resolve
    from nlora.methods import REGISTRY, build_method
    from nlora.methods.options import option_specs

    settings = dict(lb.spec.BUDGETS["main"], lora_r=None, lora_alpha=None, nlora_form="paper")
    args = SimpleNamespace(save_every=0, device="cpu")
    for method, grid in lb.spec.GRIDS.items():
        main = next((o.name for o in option_specs(REGISTRY[method].Options) if o.alias == "lambda"), None)
        for value in grid:
            hp = {"name": lb.spec.knob_of(method), "value": value}
            ns, lam = lb.run_inputs(settings, args, hp)
            overrides = sys.modules["common"].run_overrides(ns, method, "agnews,amazon", 1, tmp_path, tmp_path, lam)
            cfg = resolve(overrides=overrides)
            built = build_method(cfg)
            if hp["name"] == "lr":
                assert [t.lr for t in cfg.tasks] == [value, value], method
            else:
                assert main is not None, f"{method}: its grid needs an option that --lambda sets"
                assert getattr(built.task_options(cfg.tasks[1]), main) == value, (method, value)
