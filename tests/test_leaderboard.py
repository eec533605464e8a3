"""benchmarks/leaderboard.py: records, the table built from them (paired by seed, missing runs shown as missing,
budgets never mixed), the validation split (disjoint by content from test and training rows), `run`, `select`
and `plan`."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import CL_BENCHMARK, write_task

from nlora.io import write_json

ROOT = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lb():
    return load("leaderboard")


TAG = "m-n8-t4-e1-b4-lr0.001-fp32"


def put(records: Path, method: str, seed: int, aa, bwt, tag: str = TAG, seq: str = "4task", **extra) -> Path:
    rec = {
        "kind": "run",
        "budget_tag": tag,
        "sequence": seq,
        "method": method,
        "seed": seed,
        "aa": aa,
        "bwt": bwt,
        "hyperparameter": {"name": "lambda", "value": None, "source": "no coefficient"},
        "stored_bytes_per_task": [2048, 2048],
        "wall_time_s": 120.0,
        "acr": None,
        "nuclear_norm_mean": None,
        "routing": None,
        **extra,
    }
    path = records / tag / seq / method / f"seed-{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))
    return path


def row_of(text: str, method: str, section: int = 0) -> list[str]:
    """The cells of METHOD's row in the SECTION-th table of the markdown."""
    tables = text.split("### ")[1:]
    line = next(x for x in tables[section].splitlines() if x.startswith(f"| {method} |"))
    return [c.strip() for c in line.strip("|").split("|")]


# ------------------------------------------------------------------------------------------------ the table


def test_table_pairs_by_seed_with_a_hand_computed_t(lb, tmp_path):
    rec = tmp_path / "records"
    for seed, aa, bwt in ((3, 52.0, -2.0), (1, 50.0, -4.0), (2, 48.0, -6.0)):  # seeds out of order on purpose
        put(rec, "seq-lora", seed, aa, bwt)
    for seed, aa, bwt in ((1, 46.0, -1.0), (2, 45.0, -3.0), (3, 47.0, None)):
        put(rec, "o-lora", seed, aa, bwt)
    for seed, aa in ((1, 60.0), (3, 58.0)):  # a higher mean, but only two seeds: not the best, marked
        put(rec, "n-lora", seed, aa, -1.0)
    text = lb.table.build_table(rec, tmp_path / "lb.md")
    assert "Best by mean AA: **seq-lora**" in text  # the highest mean among the methods with all three seeds
    # o-lora - seq-lora, seeds 1,2,3: -4, -3, -5 -> mean -4, sd 1, t = -4 / (1 / sqrt 3) = -6.93 (beyond 4.30)
    o = row_of(text, "o-lora")
    assert o[6] == "-4.00 (t -6.93*, n 3)"
    # BWT: seed 3 has none for o-lora: paired over seeds 1 and 2 only: +3, +3 -> no spread, t undefined
    assert o[7] == "+3.00 (t -, n 2)" and o[5] == "-2.00 ± 1.41"
    # n-lora - seq-lora over the shared seeds 1 and 3 only: +10, +6 -> mean 8, sd 2.83, t = 8 / (2.83 / sqrt 2) = 4
    n = row_of(text, "n-lora")
    assert n[6] == "+8.00 (t 4.00, n 2)" and n[3] == "2 (missing 1) †" and n[4] == "59.00 ± 1.41"
    assert "Below it beyond the seed spread (paired t, 5%): o-lora." in text
    # the tied method's sign count next to its t: above on both shared seeds, t 4.00 within 12.71 (1 df)
    assert (
        "Not distinguishable from it with these seeds: n-lora (above it on 2 of 2 seeds, t 4.00, within ±12.71)."
        in text
    )
    assert (tmp_path / "lb" / f"{TAG}-4task-aa-bwt.png").stat().st_size < 80_000  # the figure, small


def test_the_upper_bound_is_shown_with_its_gap_but_is_never_the_best(lb, tmp_path):
    rec = tmp_path / "records"
    for seed, aa in ((1, 30.0), (2, 34.0), (3, 26.0)):
        put(rec, "seq-lora", seed, aa, -40.0)
        put(rec, "mtl", seed, aa + 30.0 + seed, None)  # joint training, far ahead: +31, +32, +33, t = 32 sqrt 3
    for seed, aa in ((1, 40.0), (2, 45.0)):  # ahead of seq-lora beyond the spread, with fewer seeds so far
        put(rec, "o-lora", seed, aa, -10.0)
    text = lb.table.build_table(rec, tmp_path / "lb.md")
    assert "Best by mean AA: **seq-lora**" in text
    assert row_of(text, "mtl")[1] == "no, upper bound §" and row_of(text, "mtl")[6].startswith("+32.00 (t ")
    assert "The upper bound's gap to it (AA, paired by seed): mtl +32.00 (n 3, t 55.43)." in text
    # o-lora - seq-lora: +10, +11 (t 21.0 with 1 degree of freedom, beyond 12.71): above it, not below
    assert "Above it beyond the seed spread, with fewer seeds so far: o-lora." in text and "Below it" not in text
    assert lb.standings.best_of(rec, TAG, "4task", 5) == ["o-lora", "seq-lora"]  # the 10-task best five: never mtl


def test_per_task_table_shows_where_each_method_learns_and_forgets(lb, tmp_path):
    rec = tmp_path / "records"
    tasks = ["topic", "mood", "qa"]
    for seed, m in (
        (1, [[80.0, None, None], [None, 40.0, None], [60.0, 30.0, 70.0]]),
        (2, [[90.0, None, None], [None, 50.0, None], [70.0, 20.0, 60.0]]),
    ):
        put(rec, "o-lora", seed, 50.0, -10.0, accuracy_matrix=m, tasks=tasks)
    joint = [[None] * 3, [None] * 3, [81.0, 45.0, 66.0]]  # trained on all at once: only the last row
    put(rec, "mtl", 1, 64.0, None, accuracy_matrix=joint, tasks=tasks)
    put(rec, "seq-lora", 1, 10.0, -50.0)  # no matrix in the record: no row, never a zero
    text = lb.table.build_table(rec, tmp_path / "lb.md")
    per_task = text.split("Per task, mean over seeds")[1].split("\n\n")[1]  # the table after its caption
    assert "| method | topic | mood | qa |" in per_task
    assert "| o-lora | 85.0 → 65.0 | 45.0 → 25.0 | 65.0 |" in per_task  # means of seeds 1 and 2
    assert "| mtl | - → 81.0 | - → 45.0 | 66.0 |" in per_task
    assert "seq-lora" not in per_task and "0.0" not in per_task


def test_tied_names_the_best_and_the_methods_within_its_seed_spread(lb, tmp_path):
    rec = tmp_path / "records"
    assert lb.standings.tied_with_best(rec, TAG, "4task") == []  # no records: no best
    for seed, best, close, far in ((1, 50.0, 48.0, 30.0), (2, 52.0, 53.0, 31.0), (3, 54.0, 50.0, 33.0)):
        put(rec, "o-lora", seed, best, -1.0)
        put(rec, "n-lora", seed, close, -1.0)  # -2, +1, -4: t -1.15, within 4.30
        put(rec, "seq-lora", seed, far, -1.0)  # -20, -21, -21: t -62.0, beyond
        put(rec, "mtl", seed, best + 1.0 + seed, None)  # the upper bound is never a tie-break run
    put(rec, "ewc", 1, 51.0, -1.0)  # one seed so far: it gets seeds 2-3 first, not 4-5
    put(rec, "lwf", 1, 49.0, -1.0)
    put(rec, "lwf", 2, 55.0, -1.0)  # two of the plan's three seeds: not yet
    assert lb.standings.tied_with_best(rec, TAG, "4task") == ["o-lora", "n-lora"]
    assert lb.expand_methods("tied,seq-lora", rec, TAG, "4task") == ["o-lora", "n-lora", "seq-lora"]
    assert lb.standings.tied_with_best(rec, TAG, "10task") == []  # another sequence's table
    put(rec, "n-lora", 3, 40.0, -1.0)
    put(rec, "n-lora", 2, 30.0, -1.0)  # -2, -22, -14: t -2.18, still within 4.30
    assert lb.standings.tied_with_best(rec, TAG, "4task") == ["o-lora", "n-lora"]
    put(rec, "n-lora", 2, 41.0, -1.0)
    put(rec, "n-lora", 1, 38.0, -1.0)  # -12, -11, -14: t -13.98, beyond: nothing tied
    assert lb.standings.tied_with_best(rec, TAG, "4task") == []


def test_beyond_the_spread_is_the_two_sided_5_percent_t_of_its_seeds(lb):
    three = [1.0, 2.0, 3.0]  # two degrees of freedom: 4.30
    assert lb.standings.beyond_spread({"t": 4.31, "diffs": three}) is True
    assert lb.standings.beyond_spread({"t": -4.31, "diffs": three}) is True
    assert lb.standings.beyond_spread({"t": -4.29, "diffs": three}) is False
    assert lb.standings.beyond_spread({"t": 4.29, "diffs": [1.0, 2.0, 3.0, 4.0]}) is True  # 3.18 with three
    assert lb.standings.beyond_spread({"t": None, "diffs": [1.0]}) is None  # one seed: no t, untested


def test_time_column_is_cpu_time_never_mixed_with_wall_time(lb, tmp_path):
    rec = tmp_path / "records"
    put(rec, "seq-lora", 1, 40.0, -1.0, cpu_time_s=600.0)  # wall time 120 s in put(): paused or not, CPU counts
    put(rec, "seq-lora", 2, 41.0, -1.0, cpu_time_s=720.0)
    put(rec, "o-lora", 1, 42.0, -1.0, cpu_time_s=600.0)
    put(rec, "o-lora", 2, 43.0, -1.0)  # a record of an earlier version: no CPU time
    text = lb.table.build_table(rec, tmp_path / "lb.md")
    assert "| saved per task (KiB) | CPU time (min) |" in text
    assert row_of(text, "seq-lora")[-1] == "11.0 ± 1.4"  # (10 + 12) / 2 minutes
    assert row_of(text, "o-lora")[-1] == "2.0 ± 0.0 (wall)"  # both seeds' wall time, marked, rather than a mix


def test_time_column_keeps_gpu_seeds_apart(lb, tmp_path):
    rec = tmp_path / "records"
    put(rec, "seq-lora", 1, 40.0, -1.0, cpu_time_s=600.0)
    put(rec, "seq-lora", 2, 41.0, -1.0, cpu_time_s=5.0, wall_time_s=90.0, device_type="cuda")  # a lent GPU
    put(rec, "seq-lora", 3, 42.0, -1.0, cpu_time_s=4.0, wall_time_s=150.0, device_type="cuda")
    put(rec, "o-lora", 1, 43.0, -1.0, cpu_time_s=7.0, wall_time_s=60.0, device_type="cuda")
    text = lb.table.build_table(rec, tmp_path / "lb.md")
    # the CPU seed's CPU time, the GPU seeds' wall time beside it: never averaged together
    assert row_of(text, "seq-lora")[-1] == "10.0; 2.0 ± 0.7 (GPU wall)"
    assert row_of(text, "o-lora")[-1] == "1.0 (GPU wall)"
    assert row_of(text, "seq-lora")[4] == "41.00 ± 1.00"  # the accuracy counts every seed, wherever it ran


def test_record_names_its_commit_with_git_or_from_nlora_commit(lb, monkeypatch):
    monkeypatch.setenv("NLORA_COMMIT", "f" * 40)
    monkeypatch.setattr(lb, "_git", lambda *cmd: "a" * 40 if cmd[0] == "rev-parse" else " M src/nlora/train.py")
    assert lb.source_commit() == ("a" * 40, True)  # git wins where there is one; a changed tree is said
    monkeypatch.setattr(lb, "_git", lambda *cmd: "")  # a copied tree without .git: git answers nothing
    assert lb.source_commit() == ("f" * 40, None)  # named by whoever copied it; clean or not is not known
    monkeypatch.delenv("NLORA_COMMIT")
    assert lb.source_commit() == (None, None)


def test_paired_uses_only_shared_seeds_with_values(tmp_path):
    common = load("common")
    c = common.paired({1: 5.0, 2: 7.0, 4: 1.0}, {2: 4.0, 1: 1.0, 3: 9.0})
    assert c["seeds"] == [1, 2] and c["diffs"] == [4.0, 3.0]
    assert c["t"] == pytest.approx(3.5 / (0.5**0.5 / 2**0.5))  # sd of (4, 3) is sqrt(0.5)
    assert common.paired({1: None}, {1: 2.0}) is None


def test_missing_runs_are_missing_never_zero(lb, tmp_path):
    rec = tmp_path / "records"
    put(rec, "seq-lora", 1, 40.0, -10.0)
    put(rec, "seq-lora", 2, 42.0, -8.0)
    put(rec, "mtl", 1, 44.0, None)  # mtl has no BWT: shown as "-", not 0
    expected = {"seq-lora": [1, 2, 3], "mtl": [1, 2, 3], "ewc": [1, 2, 3]}
    lines, rows = lb.table.group_table(TAG, "4task", lb.standings.load_runs(rec)[(TAG, "4task")], expected)
    text = "\n".join(lines)
    ewc = row_of(text, "ewc")
    assert ewc[3] == "0 (missing 3)" and ewc[4] == ewc[5] == ewc[6] == "-"
    assert row_of(text, "mtl")[5] == "-" and rows["mtl"]["bwt"] == (None, None)
    assert row_of(text, "seq-lora")[3] == "2 (missing 1)"
    assert rows["ewc"]["aa"] == (None, None) and "6 run(s) missing here" in text
    assert "| 0.00" not in text


def test_the_plan_puts_missing_methods_in_the_table(lb, tmp_path, monkeypatch):
    rec = tmp_path / "records"
    s = dict(lb.spec.BUDGETS["main"])
    tag = lb.spec.budget_tag(s)
    put(rec, "seq-lora", 1, 40.0, -10.0, tag=tag)
    text = lb.table.build_table(rec, tmp_path / "lb.md", s)
    four = text.split("### 4task")[1].split("### ")[0]
    assert row_of("### " + four, "seq-lora")[3] == "1 (missing 2)"
    assert row_of("### " + four, "ewc")[3] == "0 (missing 3)"  # every registered method appears
    assert "### 10task" in text  # the 10-task table exists, all missing
    assert row_of("### " + four, "ewc")[2] == "-"  # nothing chosen yet
    # selections made: the rows of methods not run yet show what their runs will use, on every table of the budget
    sel = rec / tag / "selection" / "4task"
    for method, knob, value in (("o-lora", "lambda", 0.5), ("l2p", "lr", 0.02)):
        (sel / method).mkdir(parents=True)
        choice = {"kind": "choice", "method": method, "budget_tag": tag, "sequence": "4task", "knob": knob}
        choice |= {"chosen": value, "points": [{"value": value, "aa": 50.0, "bwt": -1.0}]}
        (sel / method / "choice.json").write_text(json.dumps(choice))
    text = lb.table.build_table(rec, tmp_path / "lb.md", s)
    tables = ["### " + t for t in text.split("### ")[1:]]
    four, ten, three = (
        next(t for t in tables if t.splitlines()[0].startswith(f"### {seq} (") and t.splitlines()[0].endswith(b))
        for seq, b in (("4task", tag), ("10task", tag), ("4task", tag.replace("-e1-", "-e3-")))
    )
    assert row_of(four, "l2p")[2] == "lr 0.02 (chosen)" and row_of(four, "ewc")[2] == "-"
    for table in (four, ten, three):  # the 4-task choice, also for 10 tasks and at 3 epochs
        assert row_of(table, "o-lora")[2] == "0.5 (chosen)" and row_of(table, "n-lora")[2] == "-"


def test_results_document_gets_the_main_budget_between_its_markers(lb, tmp_path):
    rec = tmp_path / "records"
    s = dict(lb.spec.BUDGETS["main"])
    tag = lb.spec.budget_tag(s)
    put(rec, "seq-lora", 1, 40.0, -10.0, tag=tag)
    put(rec, "n-lora", 1, 47.0, -3.0, tag=tag.replace("-e1-", "-e3-"))  # the budget question's runs belong too
    put(rec, "o-lora", 1, 12.0, -1.0)  # another budget: the leaderboard's, not the document's
    docs = tmp_path / "docs"
    head, tail = "# Results\n\nWritten by hand.\n", "\n## Earlier studies\n\nAlso by hand.\n"
    (docs / "results.md").parent.mkdir()
    (docs / "results.md").write_text(f"{head}{lb.table.RESULTS_BEGIN}\nold table\n{lb.table.RESULTS_END}{tail}")
    (docs / "other.md").write_text("no markers here\n")
    full = lb.table.build_table(rec, docs / "leaderboard.md", s, docs / "results.md")
    text = (docs / "results.md").read_text()
    assert text.startswith(head + lb.table.RESULTS_BEGIN) and text.endswith(
        lb.table.RESULTS_END + tail
    )  # the rest kept
    block = text.split(lb.table.RESULTS_BEGIN)[1].split(lb.table.RESULTS_END)[0]
    assert "old table" not in block and f"### 4task (agnews → amazon → MNLI → QQP), budget {tag}" in block
    assert row_of(block, "seq-lora")[4] == "40.00" and "### 10task" in block
    assert f"budget {tag.replace('-e1-', '-e3-')}" in block and TAG not in block and TAG in full
    assert f"](leaderboard/{tag}-4task-aa-bwt.png)" in block  # the figure, linked from the document's folder
    lb.table.build_table(rec, docs / "leaderboard.md", s, docs / "other.md")
    assert (docs / "other.md").read_text() == "no markers here\n"  # without markers: left alone


def test_budgets_never_mix(lb, tmp_path):
    rec = tmp_path / "records"
    other = TAG.replace("-e1-", "-e3-")
    put(rec, "n-lora", 1, 50.0, -2.0)
    put(rec, "n-lora", 1, 10.0, -30.0, tag=other)
    put(rec, "o-lora", 1, 40.0, -3.0)
    put(rec, "o-lora", 1, 20.0, -1.0, tag=other)
    wrong = put(rec, "o-lora", 2, 99.0, 0.0)  # a record whose content names another budget than its folder
    data = json.loads(wrong.read_text())
    wrong.write_text(json.dumps({**data, "budget_tag": other}))
    groups = lb.standings.load_runs(rec)
    assert sorted(groups) == [(TAG, "4task"), (other, "4task")]
    assert sorted(r["aa"] for r in groups[(TAG, "4task")]) == [40.0, 50.0]  # the misfiled record is not read
    text = lb.table.build_table(rec, tmp_path / "lb.md")
    assert row_of(text, "n-lora", 0)[4] == "50.00" and row_of(text, "n-lora", 1)[4] == "10.00"  # one seed: no sd
    assert "| 30.00 ±" not in text  # no mean across budgets
    # the budget question: n-lora vs o-lora at each epoch count
    budget = text.split("The budget question")[1]
    assert re.search(r"\| 1 \| 50.00 \(1\) \| 40.00 \(1\) \| \+10.00 .*\| n-lora \|", budget)
    assert re.search(r"\| 3 \| 10.00 \(1\) \| 20.00 \(1\) \| -10.00 .*\| o-lora \|", budget)


def test_the_papers_claims_are_judged_paired_by_seed(lb, tmp_path):
    rec = tmp_path / "records"
    # n-lora against o-lora: AA lower on every seed (diffs -2, -4, -3: t -5.20, beyond 4.30); BWT higher on
    # 2 of 3 (diffs +1, +3, -1: t 0.87); ACR far lower (t beyond); nuclear norm lower on seeds 1-2 only
    for seed, aa, bwt, acr, nn in ((1, 40.0, -5.0, 0.02, 0.1), (2, 41.0, -3.0, 0.03, 0.2), (3, 42.0, -7.0, 0.02, None)):
        put(rec, "n-lora", seed, aa, bwt, acr=acr, nuclear_norm_mean=nn)
    for seed, aa, bwt, acr, nn in ((1, 42.0, -6.0, 0.95, 5.0), (2, 45.0, -6.0, 0.96, 6.0), (3, 45.0, -6.0, 0.97, 7.0)):
        put(rec, "o-lora", seed, aa, bwt, acr=acr, nuclear_norm_mean=nn)
    put(rec, "seq-lora", 2, 30.0, -20.0)  # one shared seed: no t
    text = lb.table.build_table(rec, tmp_path / "lb.md")
    claims = text.split("The N-LoRA paper's claims on this table")[1].split("###")[0]
    said = {line.split(" (paper:")[0][2:]: line for line in claims.splitlines() if line.startswith("- ")}
    assert said["higher AA than o-lora"].endswith(
        "the opposite holds beyond the seed spread: the other way round on 3 of 3 seeds (t -5.20 against ±4.30); "
        "here 41.00 against 44.00 on seeds 1, 2, 3."
    )
    assert (
        "holds in direction, within the seed spread (2 of 3 seeds, t 0.87 against ±4.30); here -5.00 against "
        in (said["less forgetting than o-lora (higher BWT)"])
    )
    assert "holds beyond the seed spread (3 of 3 seeds, t -" in said["fewer collisions than o-lora (ACR)"]
    assert "here 2.3% against 96.0%" in said["fewer collisions than o-lora (ACR)"]
    # seed 3 has no nuclear norm for n-lora: only seeds 1 and 2 are paired (diffs -4.9, -5.8)
    assert said["a lower nuclear norm than o-lora"].endswith("here 0.150 against 5.500 on seeds 1, 2.")
    assert said["higher AA than seq-lora"].endswith(
        "not testable yet (n 1, no t); in its direction on 1 of 1; here 41.00 against 30.00 on seed 2."
    )
    assert "higher AA than inc-lora" not in said  # no inc-lora record: nothing said
    # without n-lora, no claims at all
    text = lb.table.build_table(tmp_path / "none", tmp_path / "none.md")
    assert "paper's claims" not in text


def test_the_budget_question_pairs_by_seed_and_says_whether_the_ranking_changes(lb, tmp_path):
    rec = tmp_path / "records"
    e3 = TAG.replace("-e1-", "-e3-")
    # 1 epoch: o-lora ahead on both seeds (diffs -4, -6: mean -5, sd 1.414, t -5.00 with n 2, within 12.71)
    for seed, n_aa, o_aa in ((1, 40.0, 44.0), (2, 41.0, 47.0)):
        put(rec, "n-lora", seed, n_aa, -10.0 - seed)
        put(rec, "o-lora", seed, o_aa, -5.0)
    # 3 epochs: n-lora gains 10 and 12 on its own seeds and leads; o-lora has seed 1 only (one pair: no t)
    for seed, n_aa in ((1, 50.0), (2, 53.0)):
        put(rec, "n-lora", seed, n_aa, -2.0, tag=e3)
    put(rec, "o-lora", 1, 45.0, -6.0, tag=e3)
    text = lb.table.build_table(rec, tmp_path / "lb.md")
    budget = "### " + text.split("### The budget question")[1].split("### ")[0]
    one = row_of(budget, "1")
    assert one[1:4] == ["40.50 ± 0.71 (2)", "45.50 ± 2.12 (2)", "-5.00 (t -5.00, n 2)"] and one[-1] == "o-lora"
    assert one[4:7] == ["-11.50 ± 0.71", "-5.00 ± 0.00", "-6.50 (t -13.00*, n 2)"]  # BWT paired too
    three = row_of(budget, "3")
    assert three[2] == "45.00 (1)" and three[3] == "+5.00 (t -, n 1)" and three[-1] == "n-lora"
    # what 3 epochs do to each method, paired by seed against its own 1-epoch runs
    gains = [c for c in (row.split("|") for row in budget.splitlines()) if len(c) == 6 and c[2].strip() == "3"]
    assert [[x.strip() for x in g[1:5]] for g in gains] == [
        ["n-lora", "3", "+11.00 (t 11.00, n 2)", "+9.50 (t 19.00*, n 2)"],
        ["o-lora", "3", "+1.00 (t -, n 1)", "-1.00 (t -, n 1)"],
    ]
    assert "- At 1 epoch(s) o-lora is ahead by 5.00 AA (t -5.00, n 2: within the 5% value ±12.71)." in budget
    assert "- At 3 epoch(s) n-lora is ahead by 5.00 AA (n 1, no t)." in budget
    assert "- The ranking on AA changes with the epochs: o-lora at 1, n-lora at 3." in budget
    # the same order at both epoch counts: the ranking holds
    put(rec, "o-lora", 1, 60.0, -6.0, tag=e3)
    text = lb.table.build_table(rec, tmp_path / "lb.md")
    assert "- The ranking on AA holds across 1, 3 epoch(s)." in text


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
    common = load("common")
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
    common = load("common")
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


def test_every_method_has_its_own_figure_style_and_neighbours_differ_in_hue(lb):
    import matplotlib

    from nlora.methods import REGISTRY

    styles = {m: lb.table.method_style(m) for m in REGISTRY}
    assert len(set(styles.values())) == len(REGISTRY)  # no two methods look alike
    tab20 = [tuple(c) for c in matplotlib.colormaps["tab20"].colors]
    hue = {m: tab20.index(tuple(color[:3])) // 2 for m, (color, _) in styles.items()}  # tab20: two shades a hue
    ordered = sorted(REGISTRY)
    assert all(hue[a] != hue[b] for a, b in zip(ordered, ordered[1:]))
    assert lb.table.method_style("seq-lora") == styles["seq-lora"]  # fixed: the same on every call


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
        ["bash", str(ROOT / "leaderboard_queue.sh"), *flags], env=env, capture_output=True, text=True, timeout=60
    )
    calls = [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []
    return done.returncode, calls, done.stderr


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


def test_the_script_runs_as_the_queue_calls_it(tmp_path):
    """`python benchmarks/leaderboard.py ...` as a command (the queue's and the docs' way), not only lb.main: the
    modules beside it import, and the command does its work."""
    records = tmp_path / "records"
    for seed in (1, 2):
        put(records, "seq-lora", seed, 30.0 + seed, -40.0)
    out = tmp_path / "board.md"
    done = subprocess.run(
        [sys.executable, str(ROOT / "leaderboard.py"), "table", "--records", str(records), "--out", str(out)]
        + ["--no-plan"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "| seq-lora |" in out.read_text() and "31.50 ± 0.71" in out.read_text()
