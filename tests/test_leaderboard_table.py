"""benchmarks/leaderboard_table.py and leaderboard_standings.py: the leaderboard document built from records
alone: paired by seed (with a hand-computed t), missing runs shown as missing and never as zero, budgets never
mixed, the upper bound never the best, the sentences (the paper's claims, the budget question), the per-task
table, the time column, the results block, the tie with the best."""

import json
import re

import pytest
from conftest import LEADERBOARD_TAG as TAG
from conftest import load_benchmark, row_of
from conftest import put_run_record as put


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


def test_time_column_names_the_machines_when_rows_ran_on_more_than_one(lb, tmp_path):
    """Minutes from a host twice as fast are no comparison of cost: with more than one machine in a table each row's
    time carries the keys of its machines, listed under the table; with one machine, no keys."""
    rec = tmp_path / "records"
    slow, fast = "AMD EPYC CPU (x86_64, AVX2), 2 threads", "Intel(R) Xeon(R) Processor CPU (x86_64, AVX512), 2 threads"
    put(rec, "seq-lora", 1, 40.0, -1.0, cpu_time_s=600.0, machine=slow)
    put(rec, "o-lora", 1, 42.0, -1.0, cpu_time_s=300.0, machine=fast)
    text = lb.table.build_table(rec, tmp_path / "lb.md")
    assert row_of(text, "o-lora")[-1] == "5.0 [A]" and row_of(text, "seq-lora")[-1] == "10.0 [B]"
    assert f"Machines: [A] {fast}; [B] {slow}." in text
    put(rec, "o-lora", 2, 44.0, -1.0, cpu_time_s=420.0, machine=slow)
    text = lb.table.build_table(rec, tmp_path / "lb.md")
    assert row_of(text, "o-lora")[-1] == "6.0 ± 1.4 [A, B]"  # one row over both: both keys
    assert row_of(text, "seq-lora")[-1] == "10.0 [A]" and f"Machines: [A] {slow}; [B] {fast}." in text
    put(rec, "o-lora", 1, 42.0, -1.0, cpu_time_s=300.0, machine=slow)
    text = lb.table.build_table(rec, tmp_path / "lb.md")
    assert row_of(text, "o-lora")[-1] == "6.0 ± 1.4" and "Machines:" not in text


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


def test_paired_uses_only_shared_seeds_with_values(tmp_path):
    common = load_benchmark("common")
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


def test_what_a_method_keeps_is_said_beside_the_saved_files_column(lb, tmp_path):
    """The saved-per-task column counts a task directory's files, alike for methods that train one LoRA of one
    shape; what each measured method carries from task to task (replay's examples, ewc's Fisher) is its own
    statement under the table, and a method without a record is not listed."""
    rec = tmp_path / "records"
    for seed in (1, 2):
        put(rec, "replay", seed, 50.0 + seed, -5.0)
        put(rec, "ewc", seed, 48.0 + seed, -2.0)
    expected = {"replay": [1, 2], "ewc": [1, 2], "l2": [1, 2]}
    lines, _ = lb.table.group_table(TAG, "4task", lb.standings.load_runs(rec)[(TAG, "4task")], expected)
    text = "\n".join(lines)
    assert row_of(text, "replay")[10] == row_of(text, "ewc")[10] == "2 ± 0"  # 2,048 bytes a task: 2 KiB
    assert "it is not what a method must keep to go on" in text
    at = next(i for i, x in enumerate(lines) if x.startswith("| method | what it keeps from task to task"))
    kept = "\n".join(lines[at + 2 : at + 4])
    # in the table's order (replay's higher AA first), each from the method's own class, and no one else
    assert (
        kept == f"| replay | {lb.REGISTRY['replay'].stored_per_task} |\n| ewc | {lb.REGISTRY['ewc'].stored_per_task} |"
    )
    assert not lines[at + 4].startswith("|")
    assert "training examples" in kept and "Fisher" in kept and "l2:" not in kept


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
