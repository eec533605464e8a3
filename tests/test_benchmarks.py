"""The benchmark scripts: their bookkeeping, and the throughput script's lines and code paths (its speed figures
are measured, not tested)."""

import statistics

import pytest
import torch
from conftest import load_benchmark
from test_fetch import write_tree


def test_paper_workload_counts_examples_epochs_and_generations(tmp_path):
    paper = load_benchmark("paper")
    write_tree(tmp_path / "cl")  # every task, 3 examples per split
    train, tests, missing = paper.workload("t5-order1", tmp_path / "cl")  # 4 tasks, 10 epochs each
    assert missing == [] and train == 4 * 3 * 10 and tests == 3 + 6 + 9 + 12
    (tmp_path / "cl" / "TC" / "yahoo" / "train.json").unlink()
    assert paper.workload("t5-order1", tmp_path / "cl")[2] == ["yahoo/train.json"]


def test_paper_estimate_from_given_rates(tmp_path, capsys):
    paper = load_benchmark("paper")
    write_tree(tmp_path / "cl")
    paper.main(
        [
            "--family",
            "t5",
            "--model",
            "m",
            "--data-dir",
            str(tmp_path / "cl"),
            "--out",
            str(tmp_path / "o"),
            "--estimate-only",
            "--rates",
            "0.12,0.03",
        ]
    )
    out = capsys.readouterr().out
    # order 1: 120 training examples x epochs at 0.12/s and 30 generations at 0.03/s = 2000 s
    assert "t5-order1: 120 training examples x epochs, 30 generations: about 0.56 h" in out
    assert not (tmp_path / "o").exists()  # estimate only: nothing run or written


def test_accuracy_validation_split_never_uses_test_rows(tmp_path):
    import json

    acc = load_benchmark("accuracy")
    write_tree(tmp_path / "cl")
    out = acc.carve_validation(tmp_path / "cl", ["SST-2"], tmp_path / "val", n_val=2, seed=0)
    train = json.loads((out / "SC" / "SST-2" / "train.json").read_text())
    val = json.loads((out / "SC" / "SST-2" / "test.json").read_text())
    original = json.loads((tmp_path / "cl" / "SC" / "SST-2" / "train.json").read_text())
    assert len(val) == 2 and len(train) == 1 and sorted(map(str, train + val)) == sorted(map(str, original))
    assert all("train.json" in r["sentence"] for r in val)  # fixture sentences name their file


def test_accuracy_paired_comparisons_pair_runs_by_seed():
    acc = load_benchmark("accuracy")
    runs = {
        "n-lora": [(1, 50.0, -2.0), (2, 48.0, -4.0), (3, 52.0, None)],
        "o-lora": [(2, 45.0, -1.0), (1, 46.0, -3.0), (3, 47.0, -2.0)],
    }  # seeds out of order on purpose
    rows = [
        {"sequence": "4task", "method": m, "runs": [{"seed": s, "aa": aa, "bwt": bwt} for s, aa, bwt in r]}
        for m, r in runs.items()
    ]
    aa, bwt = acc.paired_comparisons(rows)
    assert aa["metric"] == "AA" and aa["diffs"] == [4.0, 3.0, 5.0] and aa["mean"] == 4.0 and aa["sd"] == 1.0
    assert aa["t"] == pytest.approx(4.0 / (1.0 / 3**0.5))
    assert bwt["diffs"] == [1.0, -3.0]  # seed 3 has no BWT for n-lora: left out, not counted as 0


# ---------------------------------------------------------------------------------------- throughput.py


def _lines(capsys) -> list[dict]:
    import json

    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def _counting(monkeypatch, module, name: str) -> list:
    """Replace module.name by a wrapper that records each call's arguments and calls the original."""
    calls, original = [], getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


@pytest.fixture
def toy_cl(tmp_path):
    from conftest import write_task

    for name in ("topic", "mood"):
        write_task(tmp_path / "CL", name, n_train=8, n_test=4)
    return tmp_path / "CL"


def test_throughput_times_the_real_train_task_and_predict_tasks(toy_cl, monkeypatch, capsys):
    import nlora.evaluate
    import nlora.train

    tp = load_benchmark("throughput")
    import nlora.recipe

    trained = _counting(monkeypatch, nlora.train, "train_task")
    predicted = _counting(monkeypatch, nlora.evaluate, "predict_tasks")
    cast = _counting(monkeypatch, nlora.recipe, "cast_frozen_linears")
    tp.main(
        [
            "--shape",
            "tiny",
            "--cases",
            "train,scaling,eval",
            "--data-dir",
            str(toy_cl),
            "--tasks",
            "topic,mood",
            "--examples",
            "8",
            "--batch",
            "4",
            "--eval-per-task",
            "2",
            "--repeats",
            "2",
            "--threads",
            "1",
            "--also-bf16",
            "--ablate-frozen-cast",
        ]
    )
    train, scaling, evals = _lines(capsys)
    assert [train["case"], scaling["case"], evals["case"]] == ["train", "scaling", "eval"]
    for rec in (train, scaling, evals):
        assert rec["device"] and rec["threads"] == 1 and len(rec["load_avg"]) == 3
        assert rec["prompts"] == str(toy_cl)  # the prompts came from the data folder given
    # CPU: the default is fp32, bf16 asked for, and bf16 with the frozen weights left in fp32
    variants = {"ours", "ours-bf16", "ours-bf16-nocast", "reference", "peft-bf16"}
    assert set(train["s_per_step"]) == set(train["peak_rss_mib"]) == set(train["pass_times_s"]) == variants
    assert all(len(ts) == 2 for ts in train["pass_times_s"].values())  # every variant timed in each round
    assert all(m > 0 for m in train["peak_rss_mib"].values())
    assert train["steps_per_pass"] == 2 and train["examples"] == 8
    # the ratio is the reference's median time over ours
    med = {k: statistics.median(v) for k, v in train["pass_times_s"].items()}
    assert train["speedup"]["ours vs reference"] == pytest.approx(med["reference"] / med["ours"], rel=0.02, abs=0.01)
    assert set(scaling["ratio_task16_vs_task1"]) == {"ours (folded)", "reference (stacked, live)"}
    assert {"ours-generate", "ours-score", "reference", "peft-bf16"} <= set(evals["prompts_per_s"])
    assert {"ours-generate-bf16-nocast", "ours-score-bf16-nocast"} <= set(evals["prompts_per_s"])
    assert evals["test_prompts"] == 4 and evals["ours_batch"] == 32 and evals["reference_batch"] == 16
    # "ours" is nlora's own code: train_task ran for every ours pass (train: 2 variants x (warm-up + 2 rounds);
    # scaling: 2 x 3), predict_tasks in both modes, both precisions, on every pass
    assert len(trained) == 3 * 3 + 2 * 3
    # (train_task and predict_tasks take the run's Runtime: train_task first, predict_tasks second)
    assert {args[0].amp_dtype for args, _ in trained} == {None, torch.bfloat16}
    assert sorted((args[1].eval_mode, str(args[1].amp_dtype)) for args, _ in predicted) == sorted(
        [(m, str(a)) for m in ("generate", "score") for a in (None, torch.bfloat16, torch.bfloat16)] * 3
    )
    # the frozen weights were stored in bf16 once per bf16 "ours" that casts (train and eval), never for -nocast
    assert [str(args[1]) for args, _ in cast] == ["torch.bfloat16"] * 2


def test_throughput_e2e_runs_nlora_recipe_against_the_reference_loop(toy_cl, model_dirs, monkeypatch, capsys):
    import nlora.recipe

    tp = load_benchmark("throughput")
    runs = _counting(monkeypatch, nlora.recipe, "run")
    tp.main(
        [
            "--shape",
            "tiny",
            "--cases",
            "e2e",
            "--data-dir",
            str(toy_cl),
            "--e2e-model",
            str(model_dirs["llama"]),
            "--e2e-tasks",
            "topic,mood",
            "--e2e-train",
            "8",
            "--e2e-test",
            "4",
            "--threads",
            "1",
        ]
    )
    (rec,) = _lines(capsys)
    assert rec["case"] == "e2e" and rec["tasks"] == ["topic", "mood"] and "skipped" not in rec
    assert set(rec["wall_s"]) == {"ours", "reference", "ours-score"} and all(v > 0 for v in rec["wall_s"].values())
    assert rec["speedup"]["ours vs reference"] == pytest.approx(
        rec["wall_s"]["reference"] / rec["wall_s"]["ours"], rel=0.05, abs=0.03
    )
    assert rec["train_steps"] == 2 and rec["test_generations"] == 4 + 8
    assert set(rec["aa"]) == set(rec["peak_rss_mib"]) == set(rec["wall_s"]) and len(rec["load_avg"]) == 3
    for k, wall in rec["wall_s"].items():  # training and evaluation are parts of the run's wall time
        assert 0 < rec["train_s"][k] + rec["eval_s"][k] <= wall + 0.1
    # an untimed warm-up on the first task, then ours with the defaults and with label scoring, all through
    # nlora.recipe.run
    assert runs[0][0][0].task_names == ["topic"]
    assert sorted((args[0].eval_mode, tuple(args[0].task_names)) for args, _ in runs[1:]) == [
        ("generate", ("topic", "mood")),
        ("score", ("topic", "mood")),
    ]


def test_throughput_e2e_skips_cleanly_without_the_data(tmp_path, capsys):
    tp = load_benchmark("throughput")
    tp.main(["--cases", "e2e", "--data-dir", str(tmp_path / "absent"), "--e2e-tasks", "agnews"])
    (rec,) = _lines(capsys)
    assert rec["case"] == "e2e" and "not found" in rec["skipped"] and "wall_s" not in rec


def test_reference_keeps_finished_adapters_live_as_one_stacked_lora(monkeypatch):
    """The baseline's stacked frozen LoRA adds exactly the finished tasks' updates, and only the new one trains."""
    from conftest import tiny_llama

    tp = load_benchmark("throughput")
    model, tok = tiny_llama()
    ref = tp.Reference(model, False, tok, torch.device("cpu"), None)
    deltas = []
    for t in range(3):
        torch.manual_seed(t)
        for _, m in ref._layers():
            torch.nn.init.normal_(m.lora_B[ref.current].weight)
        deltas.append({n: m.get_delta_weight(ref.current).detach().clone() for n, m in ref._layers()})
        ref.next_task()
    for n, m in ref._layers():
        assert m.lora_A["previous"].weight.shape[0] == 8 * 3
        assert torch.allclose(m.get_delta_weight("previous"), sum(d[n] for d in deltas), atol=1e-5)
    assert sorted(ref.model.base_model.active_adapters) == ["previous", "task3"]
    assert ref.trainable and all(
        p.requires_grad == (".task3." in n) for n, p in ref.model.named_parameters() if "lora_" in n
    )


def test_peak_memory_sees_an_allocation_inside_the_block():
    tp = load_benchmark("throughput")
    with tp.PeakMemory(torch.device("cpu")) as pm:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, written (so resident)
        del block
    assert pm.above_start_mib >= 60 and pm.peak_mib >= pm.above_start_mib


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_probe_passes_keep_covariances_as_runs_call_them(model_dirs, data_dir, capsys, kind):
    probe = load_benchmark("probe_passes")
    args = ["--model", str(model_dirs[kind]), "--data-dir", str(data_dir), "--task", "topic", "--rows", "6"]
    result = probe.main([*args, "--batch-size", "4", "--repeats", "1", "--route-prompts", "8"])
    assert result["covariances_bit_identical"] is True and result["layers"] > 0 and result["rows"] == 6
    # decoder-only: the head runs on one position; T5's head reads only the answer tokens, so it is left alone
    assert result["head_kept_to_one_position"] is (kind == "llama")
    assert sorted(result["pass_s"]) == ["as run", "before", "one position", "shared products"]
    assert all(len(v) == 1 and v[0] > 0 for v in result["pass_s"].values())
    assert sorted(result["speedup"]) == ["as run", "one position", "shared products"]
    # rows sorted by length: other batches, the same covariances up to float rounding, never more padding
    assert 0 <= result["sorted_rows_max_relative_difference"] < 1e-5
    padded = result["padded_tokens_per_real_token"]
    assert 1 <= padded["sorted"] <= padded["file order"]
    pooling = result["route_pooling"]  # route's pooled states: the same rows, sorted batches pad no more
    assert pooling["prompts"] == 8 and 0 <= pooling["max_abs_difference"] < 1e-4
    assert (
        1 <= pooling["padded_tokens_per_real_token"]["sorted"] <= pooling["padded_tokens_per_real_token"]["file order"]
    )
    assert '"covariances_bit_identical": true' in capsys.readouterr().out


def test_optimizer_step_times_nlora_adamw_against_torch_default(model_dirs, capsys):
    bench = load_benchmark("optimizer_step")
    result = bench.main(["--model", str(model_dirs["llama"]), "--steps", "2", "--repeats", "1"])
    for kind in ("full fine-tuning", "lora"):
        run = result[kind]
        assert sorted(run["step_s"]) == ["nlora", "torch default"] and all(v[0] > 0 for v in run["step_s"].values())
        # the same update rule: the parameters moved by the steps, the two optimizers' results far closer
        assert run["max_parameter_move"] > 1e-5 and run["max_parameter_gap"] < 1e-3 * run["max_parameter_move"]
    assert result["full fine-tuning"]["parameters"] > result["lora"]["parameters"] > 0
    assert '"full fine-tuning"' in capsys.readouterr().out


def test_dropout_times_the_lora_branches_cpu_dropout_against_torch_dropout(model_dirs, capsys):
    bench = load_benchmark("dropout")
    args = ["--model", str(model_dirs["llama"]), "--tokens", "40", "--live", "1,2", "--steps", "1", "--repeats", "1"]
    result = bench.main(args)
    branch = result["branch"]
    assert branch["shape"] == [8, 40, 32] and sorted(branch["seconds"]) == ["nlora CpuDropout", "torch nn.Dropout"]
    # both kinds keep 1 - p of the entries (10 draws of 10,240 entries: sd 0.001)
    assert all(abs(share - 0.9) < 0.01 for share in branch["kept_share"].values())
    passes = result["forward_and_backward"]
    assert [run["live_adapters"] for run in passes] == [1, 2]
    # tiny LLaMA: 2 blocks x q_proj, v_proj, one dropout per live adapter in each
    assert [run["dropout_branches"] for run in passes] == [4, 8]
    assert all(v[0] > 0 for run in passes for v in run["seconds"].values())
    assert '"forward_and_backward"' in capsys.readouterr().out
