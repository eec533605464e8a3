"""The run directory's promises, tried as a careless or hostile user would: nothing of the user's is deleted,
one process per run directory, every bad value refused in one line before anything is written."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import slowed_nlora_script, start_script
from conftest import toy_run_args as run_args

from nlora import rundir
from nlora.cli import main


def snapshot(root: Path) -> dict | None:
    """Every file's bytes and every folder under ``root`` (None when it does not exist)."""
    if not root.exists():
        return None
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else "dir") for p in sorted(root.rglob("*"))}


def assert_refused(argv, capsys, expect: str, watched: Path) -> str:
    """Exit 2, exactly one line on stderr naming the problem, no traceback, ``watched`` unchanged."""
    before = snapshot(watched)
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nlora: error: ") and expect in err[0], err
    assert "Traceback" not in captured.err + captured.out
    assert snapshot(watched) == before
    return err[0]


@pytest.fixture
def finished_run(model_dirs, data_dir, tmp_path):
    out = tmp_path / "run"
    assert main(run_args(model_dirs["t5"], data_dir, out)) == 0
    return out


# -- --overwrite never deletes what nlora did not write ------------------------------------------------------


def test_foreign_folder_survives_overwrite(model_dirs, data_dir, tmp_path, capsys):
    out = tmp_path / "mine"
    for name in ("eval/notes.txt", "tasks/todo.md", "figure1.png", "summary.json", "config.yaml"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(f"user's {name}")
    assert_refused(run_args(model_dirs["t5"], data_dir, out, "--overwrite"), capsys, "holds no nlora run", out)


@pytest.mark.parametrize(
    "bad,expect",
    [
        (["--target-modules", "bogus_proj"], "no linear layer named bogus_proj"),
        (["--target-modules", "q,bogus_proj"], "no linear layer named bogus_proj"),
        (["--lr", "nan"], "setting 'lr' must be a finite number, got nan"),
        (["--method", "nope"], "unknown method 'nope'"),
        (["--model", "/nonexistent/model"], "model path not found"),
    ],
)
def test_finished_run_survives_overwrite_whose_input_fails(finished_run, model_dirs, data_dir, capsys, bad, expect):
    (finished_run / "notes.md").write_text("the user's")
    assert_refused(
        run_args(model_dirs["t5"], data_dir, finished_run, "--overwrite", *bad), capsys, expect, finished_run
    )  # (a flag given twice: the last one counts)


def test_overwrite_removes_only_what_the_manifest_names(finished_run, model_dirs, data_dir):
    assert main(["analyze", str(finished_run)]) == 0
    (finished_run / "figure1.png").write_bytes(b"user's figure")
    names = json.loads((finished_run / rundir.MANIFEST).read_text())["outputs"]
    assert {"config.yaml", "tasks", "summary.json", "analysis.json", "collision.png"} <= set(names)
    assert "figure1.png" not in names
    assert main(run_args(model_dirs["t5"], data_dir, finished_run, "--overwrite", "--lr", "0.02")) == 0
    assert (finished_run / "figure1.png").read_bytes() == b"user's figure"
    assert not (finished_run / "analysis.json").exists()  # the old run's analysis went with it


def test_demo_overwrite_refuses_foreign_folder_and_bad_model(tmp_path, capsys, model_dirs):
    foreign = tmp_path / "foreign"
    for name in ("data/keep.json", "report/report.md", "seq-lora/mine.txt", "n-lora/mine.txt"):
        (foreign / name).parent.mkdir(parents=True, exist_ok=True)
        (foreign / name).write_text("user's")
    assert_refused(
        ["demo", "--output-dir", str(foreign), "--overwrite", "--model", str(model_dirs["llama"])],
        capsys,
        "holds no nlora demo",
        foreign,
    )
    demo = tmp_path / "demo"  # an earlier demo's folder: a bad --model is found before it is cleared
    (demo / "data").mkdir(parents=True)
    (demo / "data" / "instructions.json").write_text("{}")
    rundir.record(demo, "data", "report", "seq-lora", "n-lora", manifest=rundir.DEMO_MANIFEST)
    assert_refused(
        ["demo", "--output-dir", str(demo), "--overwrite", "--model", str(tmp_path / "no-model")],
        capsys,
        "model path not found",
        demo,
    )


# -- one process per run directory ---------------------------------------------------------------------------


def start_slow_run(script_dir: Path, args: list[str], ready) -> subprocess.Popen:
    script = slowed_nlora_script(script_dir, 0.15)
    proc = start_script(script, args)
    deadline = time.time() + 180
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended too early: {proc.stderr.read().decode()[-800:]}"
    return proc


def test_second_process_refused_while_first_runs_then_allowed_after_sigkill(model_dirs, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = run_args(
        model_dirs["t5"],
        data_dir,
        out,
        "--max-train-per-task",
        "24",
        "--batch-size",
        "2",
        "--epochs",
        "2",
        "--save-every",
        "1",
    )
    first = start_slow_run(tmp_path, args, lambda: (out / "tasks/01-topic/checkpoint/state.pt").is_file())
    try:
        line = assert_refused(
            args[:-4] + ["--overwrite", "--lr", "0.005"] + args[-4:], capsys, "is in use by", tmp_path / "nothing"
        )
        assert f"process {first.pid}" in line
        assert main(args) == 2  # a plain resume is refused too, and changes nothing the first one wrote
        assert main(["eval", str(out), "--tasks", "topic"]) == 2
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert main(args) == 0  # the kernel dropped the dead process's lock: this one resumes
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed"] is True and "lr: 0.01" in (out / "config.yaml").read_text()  # not the refused 0.005


def test_sigterm_is_one_line_and_resumable(model_dirs, data_dir, tmp_path):
    out = tmp_path / "run"
    args = run_args(
        model_dirs["t5"], data_dir, out, "--max-train-per-task", "24", "--batch-size", "2", "--save-every", "1"
    )
    proc = start_slow_run(tmp_path, args, lambda: (out / "tasks/01-topic/checkpoint/state.pt").is_file())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    last = [x for x in err.decode().replace("\r", "\n").splitlines() if x.strip()][-1]
    assert last.startswith("nlora: terminated (SIGTERM)")
    assert "Traceback" not in err.decode()
    assert main(args) == 0 and json.loads((out / "summary.json").read_text())["resumed"] is True


# -- every value checked before anything is written ----------------------------------------------------------

FLAG_CASES = {
    "nan lr": (["--lr", "nan"], "setting 'lr' must be a finite number, got nan"),
    "infinite epochs": (["--epochs", "inf"], "setting 'epochs' must be a finite number, got inf"),
    "nan lambda": (["--lambda", "nan"], "setting 'lambda' must be a finite number"),
    "negative lambda": (["--lambda", "-0.5"], "lambda (task topic) must be >= 0"),
    "infinite lora alpha": (["--lora-alpha", "inf"], "setting 'lora.alpha' must be a finite number"),
    "dropout above 1": (["--lora-dropout", "1.5"], "lora dropout must be >= 0 and < 1"),
    "seed beyond 2**32": (["--seed", str(2**32)], "seed must be >= 0 and <= 4294967295"),
    "negative seed": (["--seed", "-1"], "seed must be >= 0"),
    "source length 1": (["--max-source-length", "1"], "max_source_length must be >= 8"),
    "negative source length": (["--max-source-length", "-5"], "max_source_length must be >= 8"),
    "target length 0": (["--max-target-length", "0"], "max_target_length must be >= 1"),
    "zero batch": (["--batch-size", "0"], "batch_size (task topic) must be >= 1"),
    "zero rank": (["--lora-r", "0"], "lora r must be >= 1"),
    "device typo": (["--device", "gpu"], "device must be auto, cpu, cuda or cuda:N"),
    "missing target module": (["--target-modules", "bogus_proj"], "no linear layer named bogus_proj"),
    "partly missing target modules": (["--target-modules", "q,bogus_proj"], "no linear layer named bogus_proj"),
    "lr as text": (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    "unknown flag": (["--learning-rate", "1"], "unrecognized arguments: --learning-rate"),
}


@pytest.mark.parametrize("case", sorted(FLAG_CASES))
def test_bad_flag_value(model_dirs, data_dir, tmp_path, capsys, case):
    extra, expect = FLAG_CASES[case]
    out = tmp_path / "run"
    before = snapshot(out)
    capsys.readouterr()
    code = (
        main(run_args(model_dirs["t5"], data_dir, out, *extra))
        if "argument" not in expect and "unrecognized" not in expect
        else _argparse_exit(run_args(model_dirs["t5"], data_dir, out, *extra))
    )
    assert code == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nlora") and "error: " in err[0] and expect in err[0], err
    assert "Traceback" not in captured.err and "usage:" not in captured.err
    assert snapshot(out) == before is None


def _argparse_exit(argv) -> int:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    return stop.value.code


CONFIG_CASES = {
    "full_matrix as text": ("full_matrix: 'false'\n", "setting 'full_matrix' must be true or false, got 'false'"),
    "lora null": ("lora: null\n", "setting 'lora' must be a mapping"),
    "seed as text": ("seed: '0'\n", "setting 'seed' must be a whole number, got '0'"),
    "fractional cap": ("max_train_per_task: 16.5\n", "setting 'max_train_per_task' must be a whole number"),
    "lora rank as text": ("lora: {r: eight}\n", "setting 'lora.r' must be a whole number"),
    "tasks as text": ("tasks: topic\n", "setting 'tasks' must be a list"),
    "task entry as number": ("tasks: [topic, 7]\n", "a task entry must be a name or a mapping"),
    "per-task lr as text": ("tasks: [{name: topic, lr: fast}, mood]\n", "setting 'lr' must be a number"),
    "alias bomb": (
        "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
        "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
        "expands to over 100000 values",
    ),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES) + ["not UTF-8", "nested too deeply"])
def test_bad_config_file(model_dirs, data_dir, tmp_path, capsys, case):
    cfg = tmp_path / "config.yaml"
    if case == "not UTF-8":
        cfg.write_bytes(b"seed: 1\nmethod: n-lora\xff\xfe\n")
        expect = "not UTF-8 text"
    elif case == "nested too deeply":
        cfg.write_text("x: " + "[" * 5000 + "]" * 5000 + "\n")
        expect = str(cfg)
    else:
        body, expect = CONFIG_CASES[case]
        cfg.write_text(body)
    out = tmp_path / "run"
    line = assert_refused(
        ["run", "--config", str(cfg), *run_args(model_dirs["t5"], data_dir, out)[1:]], capsys, expect, out
    )
    assert not out.exists()
    if case in ("not UTF-8", "full_matrix as text", "lora null", "seed as text"):
        assert str(cfg) in line  # the file is named


# -- paths and the environment -------------------------------------------------------------------------------


def test_output_dir_under_a_file(model_dirs, data_dir, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert_refused(
        run_args(model_dirs["t5"], data_dir, tmp_path / "afile" / "run"),
        capsys,
        f"is under {tmp_path / 'afile'}, which is a file",
        tmp_path / "afile",
    )


def test_over_long_output_path(model_dirs, data_dir, tmp_path, capsys):
    out = tmp_path / ("x" * 300) / "run"
    assert_refused(run_args(model_dirs["t5"], data_dir, out), capsys, "File name too long", tmp_path / "none")


@pytest.mark.parametrize(
    "env,expect",
    [
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 is set but"),
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not a number"),
    ],
)
def test_stray_world_size(model_dirs, data_dir, tmp_path, capsys, monkeypatch, env, expect):
    for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "run"
    assert_refused(run_args(model_dirs["t5"], data_dir, out), capsys, expect, out)
    assert not out.exists()


# -- a damaged or changed run met on resume ------------------------------------------------------------------


def _damage(out: Path, data: Path) -> dict:
    return {
        "corrupt train_stats.json": (
            lambda: (out / "tasks/01-topic/train_stats.json").write_text('{"task": '),
            "01-topic/train_stats.json: malformed JSON at line 1",
        ),
        "truncated adapter": (
            lambda: _truncate(out / "tasks/01-topic/adapter/adapter_model.safetensors"),
            "01-topic/adapter/adapter_model.safetensors: not a readable safetensors file",
        ),
        "corrupt predict_results.json": (
            lambda: (out / "tasks/02-mood/predict_results.json").write_text("[1, 2]"),
            "02-mood/predict_results.json: damaged",
        ),
        "corrupt config.yaml": (
            lambda: (out / "config.yaml").write_text("model: [unclosed\n"),
            "config.yaml: not a readable nlora config",
        ),
        "config.yaml not UTF-8": (
            lambda: (out / "config.yaml").write_bytes(b"\xff\xfe\x00"),
            "config.yaml: not a readable nlora config",
        ),
        "data changed": (
            lambda: (data / "TC/topic/train.json").write_text(
                (data / "TC/topic/train.json").read_text().replace("war", "peace")
            ),
            "task topic: train.json changed since this run started",
        ),
    }


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-40])


@pytest.mark.parametrize(
    "case",
    [
        "corrupt train_stats.json",
        "corrupt predict_results.json",
        "corrupt config.yaml",
        "config.yaml not UTF-8",
        "data changed",
        "truncated adapter",
    ],
)
def test_damaged_run_met_on_resume(finished_run, model_dirs, data_dir, capsys, case):
    (finished_run / "summary.json").unlink()  # as if stopped after the last evaluation
    breaker, expect = _damage(finished_run, data_dir)[case]
    breaker()
    assert_refused(run_args(model_dirs["t5"], data_dir, finished_run), capsys, expect, finished_run)


def test_lock_holder_is_named(tmp_path):
    held = rundir.DirectoryLock(tmp_path).acquire()
    try:
        assert rundir.lock_holder(tmp_path) == os.getpid()
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from nlora.rundir import DirectoryLock\n"
                "try:\n DirectoryLock(sys.argv[1]).acquire()\nexcept Exception as e: print(e)",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert f"is in use by process {os.getpid()}" in probe.stdout
    finally:
        held.release()
    assert rundir.lock_holder(tmp_path) is None


@pytest.mark.parametrize("code,expect", [(28, "No space left on device"), (30, "Read-only file system")])
def test_disk_full_or_read_only_when_the_run_directory_is_made(
    model_dirs, data_dir, tmp_path, capsys, monkeypatch, code, expect
):
    def failing_save(cfg, path):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(rundir, "save_config", failing_save)  # the run directory is made by rundir.make_run_dir
    out = tmp_path / "run"
    assert_refused(run_args(model_dirs["t5"], data_dir, out), capsys, expect, out)
    assert not out.exists()  # made by this run, so removed again


def test_non_finite_loss_message_is_not_glued_to_the_progress_bar(model_dirs, data_dir, tmp_path, capsys, monkeypatch):
    import torch

    from nlora.methods.nlora import NLoRA

    monkeypatch.setattr(NLoRA, "penalty", lambda self, lora, settings: torch.tensor(float("nan")))
    assert main(run_args(model_dirs["t5"], data_dir, tmp_path / "run")) == 2
    last = capsys.readouterr().err.rstrip("\n").split("\n")[-1]
    assert last.split("\r")[-1].startswith("nlora: error: non-finite loss")
