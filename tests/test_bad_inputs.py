"""Bad input files, models and arguments of the read-only commands (issue 19, items 3, 5, 6, 8 and 9).

Each case of the table runs the command line on one bad input and asserts: exit code 2, exactly one line on
stderr that names the file, field or value, no traceback, and every output folder the command could write
byte-identical afterwards (or still absent). Model-folder cases fail before a model loads; eval, analyze
and report cases use copies of one tiny finished run.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from test_fetch import write_tree

from nlora.cli import main

RUN_FLAGS = [
    "--tasks",
    "topic,mood",
    "--max-train-per-task",
    "4",
    "--max-test-per-task",
    "2",
    "--batch-size",
    "4",
    "--eval-batch-size",
    "4",
    "--max-target-length",
    "3",
]


@pytest.fixture(scope="module")
def finished_run(model_dirs, tmp_path_factory) -> Path:
    """A complete two-task n-lora run on the tiny LLaMA (a few seconds); cases copy it before damaging it."""
    from conftest import write_task

    root = tmp_path_factory.mktemp("bad-inputs-run")
    for name in ("topic", "mood", "COPA"):
        write_task(root / "CL", name)
    out = root / "run"
    assert (
        main(
            [
                "run",
                "--model",
                str(model_dirs["llama"]),
                "--data-dir",
                str(root / "CL"),
                "--output-dir",
                str(out),
                *RUN_FLAGS,
            ]
        )
        == 0
    )
    return out


class Ctx:
    """What a case may damage: copies of the toy data, of a tiny model, of the finished run."""

    def __init__(self, tmp: Path, data: Path, model_dirs: dict, run: Path | None):
        self.tmp, self.data, self._models, self._run = tmp, data, model_dirs, run
        self.out = tmp / "out"  # the output directory of `nlora run`; never created by a bad input
        self.watched: list[Path] = [self.out]

    def model(self, kind: str = "llama") -> Path:
        dest = self.tmp / f"model-{kind}"
        if not dest.exists():
            shutil.copytree(self._models[kind], dest)
        return dest

    def run_copy(self, name: str = "run") -> Path:
        dest = self.tmp / name
        shutil.copytree(self._run, dest)
        self.watched.append(dest)
        return dest

    def run_argv(self, model: Path | str | None = None, *extra: str) -> list[str]:
        return [
            "run",
            "--model",
            str(model or self.model()),
            "--data-dir",
            str(self.data),
            "--output-dir",
            str(self.out),
            *RUN_FLAGS,
            *extra,
        ]


def set_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def adapter(run: Path, index: int = 1) -> Path:
    return next((run / "tasks").glob(f"{index:02d}-*")) / "adapter"


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# -- the cases: name -> (ctx) -> (argv, what the one error line must contain) --------------------------------


def instructions_not_utf8(c):
    f = c.tmp / "ins.json"
    f.write_bytes(b'{"TC": "Topic \xff\xfe?"}')
    return c.run_argv(None, "--instructions", str(f)), f"{f}: not UTF-8 text"


def instructions_a_list(c):
    f = c.tmp / "ins.json"
    f.write_text('["TC", "Topic?"]')
    return c.run_argv(None, "--instructions", str(f)), f"{f}: expected a JSON object"


def instructions_entry_a_number(c):
    f = c.tmp / "ins.json"
    f.write_text('{"TC": 7}')
    return c.run_argv(None, "--instructions", str(f)), "instruction for category 'TC' must be a string"


def instructions_reference_form_without_objects(c):
    f = c.tmp / "ins.json"
    f.write_text('{"TC": ["Topic?"]}')
    return c.run_argv(None, "--instructions", str(f)), "instruction for category 'TC' must be a string"


def instructions_a_directory(c):
    (c.tmp / "ins").mkdir()
    return c.run_argv(None, "--instructions", str(c.tmp / "ins")), f"instruction file {c.tmp / 'ins'} is a directory"


def data_not_utf8(c):
    f = c.data / "TC" / "topic" / "train.json"
    f.write_bytes(b'[{"label": "World", "sentence": "caf\xe9"}]')
    return c.run_argv(), f"{f}: not UTF-8 text"


def data_nested_deeply(c):
    f = c.data / "SC" / "mood" / "test.json"
    f.write_text("[" * 100_000 + "]" * 100_000)
    return c.run_argv(), f"{f}: JSON nested too deeply"


def data_5000_digit_number(c):
    f = c.data / "TC" / "topic" / "train.json"
    f.write_text('[{"label": "World", "sentence": "a", "id": ' + "7" * 5000 + "}]")
    return c.run_argv(), f"{f}: holds an integer of more than"


def labels_not_a_list(c):
    f = c.data / "TC" / "topic" / "labels.json"
    f.write_text('{"World": 0, "Sports": 1}')
    return c.run_argv(), f"{f}: expected a non-empty JSON list of label strings"


def split_an_object(c):
    f = c.data / "TC" / "topic" / "test.json"
    f.write_text('{"label": "World", "sentence": "a"}')
    return c.run_argv(), f"{f}: expected a JSON list"


def data_dir_a_file(c):
    f = c.data / "TC" / "topic" / "train.json"
    argv = c.run_argv()
    argv[argv.index("--data-dir") + 1] = str(f)
    return argv, f"data directory {f} is not a directory"


def dataset_in_two_categories(c):
    shutil.copytree(c.data / "TC" / "topic", c.data / "SC" / "topic")
    return c.run_argv(), (
        f"task 'topic' is in more than one category: {c.data / 'SC' / 'topic'} and "
        f"{c.data / 'TC' / 'topic'}; name the one you mean with its category, e.g. SC/topic"
    )


def model_auto_map(c):
    m = c.model()
    set_json(
        m / "config.json",
        model_type="acme-net",
        auto_map={"AutoConfig": "acme.AcmeConfig", "AutoModelForCausalLM": "acme.AcmeModel"},
    )
    (m / "acme.py").write_text(f"open({str(c.tmp / 'ran')!r}, 'w').close()\n")
    return c.run_argv(m), f"{m}: the model's config.json (auto_map) asks to run Python code from the folder"


def model_unknown_type(c):
    m = c.model()
    set_json(m / "config.json", model_type="acme-net")
    return c.run_argv(m), f"{m / 'config.json'}: unknown model_type 'acme-net'"


def model_config_malformed(c):
    m = c.model()
    (m / "config.json").write_text('{"model_type": "llama",')
    return c.run_argv(m), f"{m / 'config.json'}: malformed JSON at line 1"


def model_config_not_utf8(c):
    m = c.model()
    (m / "config.json").write_bytes(b'{"model_type": "ll\xffama"}')
    return c.run_argv(m), f"{m / 'config.json'}: not UTF-8 text"


def model_folder_without_config(c):
    m = c.model()
    (m / "config.json").unlink()
    return c.run_argv(m), f"{m}: not a model folder (no config.json)"


def model_without_tokenizer(c):
    m = c.model()
    for f in ("tokenizer_config.json", "added_tokens.json", "special_tokens_map.json"):
        (m / f).unlink(missing_ok=True)
    return c.run_argv(m), f"{m}: no tokenizer"


def model_weights_truncated(c):
    m = c.model()
    truncate(m / "model.safetensors")
    return c.run_argv(m), f"{m / 'model.safetensors'}: not a readable safetensors file, truncated"


def model_weights_pickle_only(c):
    m = c.model()
    pickle_only(m)
    return c.run_argv(m), f"{m}: weights only as pytorch_model.bin, a pickle file"


def model_without_weights(c):
    m = c.model()
    (m / "model.safetensors").unlink()
    return c.run_argv(m), f"{m}: no model weights"


def model_a_plain_file(c):
    f = c.tmp / "model.bin"
    f.write_bytes(b"\0" * 64)
    return c.run_argv(f), f"model {f} is a file but not a .gguf model"


def gguf_random_bytes(c):
    f = c.tmp / "model.gguf"
    f.write_bytes(os.urandom(4096).replace(b"GGUF", b"...."))
    return c.run_argv(f), f"{f}: not a GGUF model file"


def gguf_signature_then_junk(c):
    f = c.tmp / "model.gguf"
    f.write_bytes(b"GGUF" + b"\xfe" * 4092)
    return c.run_argv(f), f"{f}: not a readable GGUF model file"


def eval_max_test_zero(c):
    return [
        "eval",
        str(c.run_copy()),
        "--tasks",
        "topic",
        "--max-test-per-task",
        "0",
    ], "--max-test-per-task must be >= 1, got 0"


def eval_batch_size_negative(c):
    return [
        "eval",
        str(c.run_copy()),
        "--tasks",
        "topic",
        "--eval-batch-size",
        "-4",
    ], "--eval-batch-size must be >= 1, got -4"


def eval_run_config_malformed(c):
    run = c.run_copy()
    (run / "config.yaml").write_text("model: [unclosed\n")
    return ["eval", str(run), "--tasks", "topic"], f"{run / 'config.yaml'}: malformed YAML"


def eval_run_config_not_a_run_config(c):
    run = c.run_copy()
    (run / "config.yaml").write_text("model: x\ntasks: 3\n")
    return ["eval", str(run), "--tasks", "topic"], f"{run / 'config.yaml'}: not an nlora run config"


def eval_adapter_truncated(c):
    run = c.run_copy()
    truncate(adapter(run, 2) / "adapter_model.safetensors")
    return [
        "eval",
        str(run),
        "--tasks",
        "topic",
    ], f"{adapter(run, 2) / 'adapter_model.safetensors'}: not a readable safetensors file"


def eval_adapter_config_malformed(c):
    run = c.run_copy()
    (adapter(run, 1) / "adapter_config.json").write_text('{"r": 8,')
    return ["eval", str(run), "--tasks", "topic"], f"{adapter(run, 1) / 'adapter_config.json'}: malformed JSON"


def eval_run_dir_a_file(c):
    f = c.tmp / "run.txt"
    f.write_text("x")
    return ["eval", str(f), "--tasks", "topic"], f"run directory {f} is not a directory"


def analyze_threshold_nan(c):
    return ["analyze", str(c.run_copy()), "--threshold", "nan"], "--threshold must be a finite number > 0, got nan"


def analyze_threshold_negative(c):
    return ["analyze", str(c.run_copy()), "--threshold=-1e-4"], "--threshold must be a finite number > 0, got -0.0001"


def analyze_threshold_infinite(c):
    return ["analyze", str(c.run_copy()), "--threshold", "inf"], "--threshold must be a finite number > 0, got inf"


def analyze_summary_malformed(c):
    run = c.run_copy()
    (run / "summary.json").write_text('{"tasks": ["topic", "mood"], "method": ')
    return ["analyze", str(run)], f"{run / 'summary.json'}: malformed JSON"


def analyze_summary_wrong_shape(c):
    run = c.run_copy()
    set_json(run / "summary.json", accuracy_matrix=[[50.0]])
    return ["analyze", str(run)], f"{run / 'summary.json'}: not an nlora run summary ('accuracy_matrix' must be"


def analyze_adapter_truncated(c):
    run = c.run_copy()
    truncate(adapter(run, 1) / "adapter_model.safetensors")
    return ["analyze", str(run)], f"{adapter(run, 1) / 'adapter_model.safetensors'}: not a readable safetensors"


def analyze_adapter_config_without_rank(c):
    run = c.run_copy()
    cfg = adapter(run, 2) / "adapter_config.json"
    set_json(cfg, r=None)
    return ["analyze", str(run)], f"{cfg}: not a LoRA adapter config (needs numbers 'r' > 0"


def analyze_second_run_damaged(c):
    good, bad = c.run_copy("good"), c.run_copy("bad")
    (bad / "summary.json").write_bytes(b"\xff\xfe")
    return ["analyze", str(good), str(bad)], f"{bad / 'summary.json'}: not UTF-8 text"


def analyze_partial_run(c):
    run = c.run_copy()
    (run / "summary.json").unlink()
    shutil.rmtree(run / "tasks")
    return ["analyze", str(run)], f"{run}: no trained adapters under tasks/"


def report_threshold_nan(c):
    c.watched.append(c.tmp / "rep")
    return [
        "report",
        str(c.run_copy()),
        "--out",
        str(c.tmp / "rep"),
        "--threshold",
        "nan",
    ], "--threshold must be a finite number > 0, got nan"


def report_summary_deeply_nested(c):
    run = c.run_copy()
    c.watched.append(c.tmp / "rep")
    (run / "summary.json").write_text("[" * 50_000 + "]" * 50_000)
    return ["report", str(run), "--out", str(c.tmp / "rep")], f"{run / 'summary.json'}: JSON nested too deeply"


def report_partial_run(c):
    good, partial = c.run_copy("good"), c.run_copy("partial")
    c.watched.append(c.tmp / "rep")
    (partial / "summary.json").unlink()
    return [
        "report",
        str(good),
        str(partial),
        "--out",
        str(c.tmp / "rep"),
    ], f"{partial}: no summary.json (the run is not complete)"


def report_adapter_truncated(c):
    good, bad = c.run_copy("good"), c.run_copy("bad")
    c.watched.append(c.tmp / "rep")
    truncate(adapter(bad, 2) / "adapter_model.safetensors")
    return [
        "report",
        str(good),
        str(bad),
        "--out",
        str(c.tmp / "rep"),
    ], f"{adapter(bad, 2) / 'adapter_model.safetensors'}: not a readable safetensors file"


def report_out_under_a_file(c):
    (c.tmp / "notes.txt").write_text("mine")
    c.watched.append(c.tmp / "notes.txt")
    return [
        "report",
        str(c.run_copy()),
        "--out",
        str(c.tmp / "notes.txt" / "rep"),
    ], f"--out {c.tmp / 'notes.txt' / 'rep'} is under {c.tmp / 'notes.txt'}, which is a file"


def fetch_argv(c, *extra):
    c.watched.append(c.tmp / "cl")
    return ["data", "fetch", "--dest", str(c.tmp / "cl"), *extra]


def fetch_timeout_nan(c):
    return fetch_argv(
        c, "--url", "http://127.0.0.1:9/x", "--timeout", "nan"
    ), "--timeout must be a number of seconds > 0"


def fetch_timeout_negative(c):
    return fetch_argv(c, "--url", "http://127.0.0.1:9/x", "--timeout", "-5"), "got -5.0"


def fetch_timeout_zero(c):
    return fetch_argv(c, "--url", "http://127.0.0.1:9/x", "--timeout", "0"), "--timeout must be a number of seconds > 0"


def fetch_timeout_huge(c):
    return fetch_argv(c, "--url", "http://127.0.0.1:9/x", "--timeout", "1e300"), "got 1e+300"


def fetch_url_unsupported_scheme(c):
    return fetch_argv(
        c, "--url", "ftp://mirror.example/CL"
    ), "--url 'ftp://mirror.example/CL': unsupported scheme 'ftp'"


def fetch_url_without_scheme(c):
    return fetch_argv(c, "--url", "mirror.example/CL"), "--url 'mirror.example/CL': unsupported scheme '(none)'"


def fetch_url_malformed_host(c):
    return fetch_argv(c, "--url", "http://[::1/CL"), "--url 'http://[::1/CL' is not a valid URL"


def fetch_url_bad_port(c):
    return fetch_argv(c, "--url", "http://127.0.0.1:99999/CL"), "--url 'http://127.0.0.1:99999/CL' is not a valid URL"


def fetch_url_without_host(c):
    return fetch_argv(c, "--url", "https:///CL"), "--url 'https:///CL' is not a valid URL (no host name)"


def fetch_url_with_spaces(c):
    return fetch_argv(c, "--url", "http://127.0.0.1/CL Benchmark"), "contains whitespace or control characters"


def fetch_dest_under_a_file(c):
    (c.tmp / "notes.txt").write_text("mine")
    c.watched.append(c.tmp / "notes.txt")
    return [
        "data",
        "fetch",
        "--dest",
        str(c.tmp / "notes.txt" / "cl"),
        "--url",
        "http://127.0.0.1:9/x",
    ], f"is under {c.tmp / 'notes.txt'}, which is a file"


def check_dir_a_file(c):
    (c.tmp / "notes.txt").write_text("mine")
    return ["data", "check", str(c.tmp / "notes.txt")], f"data directory {c.tmp / 'notes.txt'} is not a directory"


def pickle_only(model: Path) -> None:
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()


CASES = {
    f.__name__: f
    for f in [
        instructions_not_utf8,
        instructions_a_list,
        instructions_entry_a_number,
        instructions_reference_form_without_objects,
        instructions_a_directory,
        data_not_utf8,
        data_nested_deeply,
        data_5000_digit_number,
        labels_not_a_list,
        split_an_object,
        data_dir_a_file,
        dataset_in_two_categories,
        model_auto_map,
        model_unknown_type,
        model_config_malformed,
        model_config_not_utf8,
        model_folder_without_config,
        model_without_tokenizer,
        model_weights_truncated,
        model_weights_pickle_only,
        model_without_weights,
        model_a_plain_file,
        gguf_random_bytes,
        gguf_signature_then_junk,
        eval_max_test_zero,
        eval_batch_size_negative,
        eval_run_config_malformed,
        eval_run_config_not_a_run_config,
        eval_adapter_truncated,
        eval_adapter_config_malformed,
        eval_run_dir_a_file,
        analyze_threshold_nan,
        analyze_threshold_negative,
        analyze_threshold_infinite,
        analyze_summary_malformed,
        analyze_summary_wrong_shape,
        analyze_adapter_truncated,
        analyze_adapter_config_without_rank,
        analyze_second_run_damaged,
        analyze_partial_run,
        report_threshold_nan,
        report_summary_deeply_nested,
        report_partial_run,
        report_adapter_truncated,
        report_out_under_a_file,
        fetch_timeout_nan,
        fetch_timeout_negative,
        fetch_timeout_zero,
        fetch_timeout_huge,
        fetch_url_unsupported_scheme,
        fetch_url_without_scheme,
        fetch_url_malformed_host,
        fetch_url_bad_port,
        fetch_url_without_host,
        fetch_url_with_spaces,
        fetch_dest_under_a_file,
        check_dir_a_file,
    ]
}
NEEDS_RUN = ("eval_", "analyze_", "report_")


def snapshot(path: Path):
    """Every byte under path (None: absent), to compare before and after."""
    if not path.exists():
        return None
    if path.is_file():
        return path.read_bytes()
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else "dir" for p in sorted(path.rglob("*"))}


def assert_one_line_error(capsys, argv, expect, watched):
    before = {p: snapshot(p) for p in watched}
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("nlora: error: ") and expect in lines[0], lines[0]
    for p, snap in before.items():
        assert snapshot(p) == snap, f"{p} changed"


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_writes_nothing(case, request, data_dir, model_dirs, tmp_path, capsys):
    run = request.getfixturevalue("finished_run") if case.startswith(NEEDS_RUN) else None
    c = Ctx(tmp_path, data_dir, model_dirs, run)
    argv, expect = CASES[case](c)
    assert_one_line_error(capsys, argv, expect, c.watched)
    if case == "model_auto_map":
        assert not (tmp_path / "ran").exists()  # the folder's code never ran


# -- downloads cut short (item 8) ---------------------------------------------------------------------------


class ShortBodyServer:
    """Serves valid JSON for every file but announces more bytes than it sends for ``short``."""

    def __init__(self, short: str):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = json.dumps([{"label": "yes", "sentence": "x"}] * 3).encode()
                announced = len(body) + (100 if self.path.endswith(short) else 0)
                self.send_response(200)
                self.send_header("Content-Length", str(announced))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/CL_Benchmark"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_fetch_short_body_is_never_saved_under_its_name(tmp_path, capsys):
    dest = tmp_path / "cl"
    write_tree(dest, skip={"TC/agnews/train.json"})
    server = ShortBodyServer("TC/agnews/train.json")
    try:
        assert_one_line_error(
            capsys,
            ["data", "fetch", "--dest", str(dest), "--url", server.url],
            f"{server.url}/TC/agnews/train.json: download cut short",
            [dest],
        )
    finally:
        server.close()
    assert not (dest / "TC/agnews/train.json").exists() and not list(dest.rglob("*.part"))


# -- what the checks let through, and the flags that allow more ----------------------------------------------


def test_data_check_names_a_deeply_nested_file_as_invalid(tmp_path, capsys):
    write_tree(tmp_path / "cl")
    (tmp_path / "cl/WiC/WiC/test.json").write_text("[" * 100_000 + "]" * 100_000)
    assert main(["data", "check", str(tmp_path / "cl")]) == 1
    captured = capsys.readouterr()
    assert "invalid: WiC/WiC/test.json: not valid JSON (JSON nested too deeply" in captured.out
    assert "Traceback" not in captured.err


def test_a_dataset_under_two_categories_is_chosen_by_its_category(data_dir):
    from nlora.data import load_tasks
    from nlora.prompts import load_instructions

    shutil.copytree(data_dir / "TC" / "topic", data_dir / "SC" / "topic")
    (data_dir / "SC" / "topic" / "labels.json").write_text('["World", "Sports", "Other"]')
    tasks = load_tasks(data_dir, ["SC/topic", "TC/topic"], load_instructions())
    sc, tc = tasks["SC/topic"], tasks["TC/topic"]
    assert sc.name == "SC/topic" and sc.category == "SC" and sc.labels == ["World", "Sports", "Other"]
    assert tc.category == "TC" and tc.labels == ["World", "Sports"]
    assert sc.splits["test"][0].prompt.startswith("Task:SC\nDataset:topic\n")  # the prompt names the folder


def test_run_and_eval_on_a_task_named_with_its_category(model_dirs, data_dir, tmp_path, capsys):
    shutil.copytree(data_dir / "TC" / "topic", data_dir / "SC" / "topic")
    out = tmp_path / "run"
    flags = [a if a != "topic,mood" else "SC/topic,mood" for a in RUN_FLAGS]
    assert (
        main(
            ["run", "--model", str(model_dirs["llama"]), "--data-dir", str(data_dir), "--output-dir", str(out), *flags]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tasks"] == ["SC/topic", "mood"]
    assert "predict_exact_match_for_SC/topic" in json.loads(
        (out / "tasks" / "01-SC_topic" / "predict_results.json").read_text()
    )
    assert main(["eval", str(out), "--tasks", "TC/topic", "--max-test-per-task", "2"]) == 0
    assert (out / "eval" / "after-02" / "TC_topic" / "predict_results.json").is_file()
    capsys.readouterr()
    assert main(["eval", str(out), "--tasks", "topic"]) == 2  # the bare name is still ambiguous
    assert "is in more than one category" in capsys.readouterr().err


def test_trust_remote_code_flag_reaches_transformers(model_dirs, data_dir, tmp_path, capsys, monkeypatch):
    """Without the flag transformers is told False (never a prompt); with it, the user's choice is passed on."""
    import transformers

    seen = []

    def record(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        raise OSError("stop here")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", record)
    c = Ctx(tmp_path, data_dir, model_dirs, None)
    model = c.model()
    assert main(c.run_argv(model)) == 2
    set_json(model / "config.json", model_type="acme-net", auto_map={"AutoConfig": "acme.AcmeConfig"})
    assert main(c.run_argv(model, "--trust-remote-code")) == 2
    assert seen == [False, True]
    assert "stop here" in capsys.readouterr().err and not c.out.exists()


def test_no_prompt_for_a_known_architecture_with_auto_map(model_dirs, tmp_path, monkeypatch):
    """auto_map beside a model_type transformers knows: transformers' own code, the folder's never runs."""
    import builtins

    from nlora.models import load_model

    monkeypatch.setattr(builtins, "input", lambda *a: pytest.fail("asked on stdin whether to run code"))
    model = tmp_path / "m"
    shutil.copytree(model_dirs["llama"], model)
    set_json(model / "config.json", auto_map={"AutoConfig": "acme.AcmeConfig", "AutoModelForCausalLM": "acme.M"})
    (model / "acme.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    loaded = load_model(str(model))
    assert type(loaded.model).__name__ == "LlamaForCausalLM" and not (tmp_path / "ran").exists()


def test_pickle_weights_load_only_when_allowed_and_then_weights_only(model_dirs, tmp_path, monkeypatch):
    import torch

    from nlora.models import load_model

    model = tmp_path / "m"
    shutil.copytree(model_dirs["llama"], model)
    pickle_only(model)
    calls, original = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw.get("weights_only")) or original(*a, **kw))
    loaded = load_model(str(model), allow_pickle_weights=True)
    reference = load_model(str(model_dirs["llama"])).model.state_dict()
    assert calls and all(w is True for w in calls)
    assert all(torch.equal(t, reference[k]) for k, t in loaded.model.state_dict().items())
