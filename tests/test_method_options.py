"""Each method's options (methods/options.py): from a config's `method:` mapping, --method-arg, the older
--lambda / --lambda2 / --nlora-form, per task; checked at resolve time; listed by `nlora methods NAME`; and a
run directory written before options existed still resumes and evaluates."""

import json
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from conftest import toy_run_args

from nlora.banks import LoraBank
from nlora.cli import OVERRIDE_KEYS, build_parser, main
from nlora.config import LoraSettings, RunConfig, TaskSettings, resolve
from nlora.errors import NloraError
from nlora.methods import REGISTRY, RunFacts, build_method, make_method
from nlora.methods.options import option_specs
from nlora.models import default_target_modules, load_model

BASE = {"model": "m", "data_dir": "d", "output_dir": "o", "task_names": ["a", "b"]}


def from_flags(*flags: str) -> RunConfig:
    args = build_parser().parse_args(["run", "--model", "m", "--data-dir", "d", "--output-dir", "o", *flags])
    return resolve(preset=args.preset, config_file=args.config, overrides={k: getattr(args, k) for k in OVERRIDE_KEYS})


def write(tmp_path, text: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def one_error_line(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors (also one line: cli.OneLineParser)
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nlora"), err
    return err[0]


def test_every_method_declares_typed_options_with_help():
    for name, cls in REGISTRY.items():
        for spec in option_specs(cls.Options):
            assert spec.help and spec.hint in (int, float, str, bool), (name, spec)
        method = make_method(name)  # the defaults alone make a working method
        assert method.options == cls.Options() and method.run == RunFacts()
    assert option_specs(REGISTRY["seq-lora"].Options) == ()


def test_options_from_a_yaml_mapping(tmp_path):
    f = write(tmp_path, "method: {name: n-lora, lambda: 0.3, form: reference}\ntasks: [a, b]\n")
    cfg = resolve(config_file=f, overrides={"model": "m", "data_dir": "d", "output_dir": "o"})
    assert cfg.method == "n-lora" and cfg.method_options == {"form": "reference"}
    assert [t.method_options for t in cfg.tasks] == [{"lambda": 0.3}, {"lambda": 0.3}]
    method = build_method(cfg)
    assert method.options.form == "reference" and method.task_options(cfg.tasks[0]).lam == 0.3
    plain = write(tmp_path, "method: o-lora\ntasks: [a]\n")  # a plain name still works
    assert resolve(config_file=plain, overrides=BASE).tasks[0].method_options == {"lambda": 0.5, "lambda2": 0.0}


def test_older_top_level_keys_still_load(tmp_path):
    f = write(tmp_path, "method: n-lora\nnlora_form: reference\nlambda: 0.3\ntasks: [a]\n")
    cfg = resolve(config_file=f, overrides={"model": "m", "data_dir": "d", "output_dir": "o"})
    assert cfg.method_options == {"form": "reference"} and cfg.tasks[0].method_options == {"lambda": 0.3}


def test_method_args_typed_by_the_field():
    cfg = from_flags("--tasks", "a", "--method", "l2p", "--method-arg", "pool_size=12", "--method-arg", "lambda=1e-3")
    assert cfg.method_options["pool_size"] == 12 and cfg.tasks[0].method_options == {"lambda": 0.001}
    assert build_method(cfg).options.pool_size == 12
    cfg = from_flags("--tasks", "a", "--method", "replay", "--method-arg", "fraction=0.1")
    assert cfg.method_options == {"fraction": 0.1} and build_method(cfg).options.fraction == 0.1


def test_lambda_and_nlora_form_are_aliases():
    via_alias = from_flags("--tasks", "a,b", "--lambda", "0.2", "--nlora-form", "reference")
    via_args = from_flags("--tasks", "a,b", "--method-arg", "lambda=0.2", "--method-arg", "form=reference")
    assert via_alias.to_dict() == via_args.to_dict()
    assert via_alias.method_options == {"form": "reference"} and via_alias.tasks[1].method_options == {"lambda": 0.2}
    olora = from_flags("--tasks", "a", "--method", "o-lora", "--lambda", "0.3", "--lambda2", "0.1")
    assert olora.tasks[0].method_options == {"lambda": 0.3, "lambda2": 0.1}
    replay = from_flags("--tasks", "a", "--method", "replay", "--lambda", "0.05")  # the main coefficient
    assert replay.method_options == {"fraction": 0.05}
    migu = from_flags("--tasks", "a", "--method", "migu", "--lambda", "0.5")
    assert migu.tasks[0].method_options == {"quantile": 0.5}
    inflora = from_flags("--tasks", "a", "--method", "inflora", "--lambda", "0.9999")  # its GPM threshold
    assert inflora.method_options == {"threshold": 0.9999} and build_method(inflora).options.threshold == 0.9999
    # gainlora's thresholds are its own options, not the main knob: --lambda leaves them at the released value
    gainlora = from_flags("--tasks", "a", "--method", "gainlora", "--lambda", "0.9999")
    assert gainlora.method_options.get("threshold", 0.995) == 0.995
    assert build_method(gainlora).options.threshold == build_method(gainlora).options.gate_threshold == 0.995
    # a method without such an option ignores them, as before options existed
    assert (
        from_flags("--tasks", "a", "--method", "seq-lora", "--lambda", "0.3", "--nlora-form", "reference").to_dict()[
            "method_options"
        ]
        == {}
    )


def test_per_task_overrides_and_their_precedence(tmp_path):
    f = write(
        tmp_path,
        "method: {name: o-lora, lambda: 0.7}\ntasks:\n  - {name: a, lambda: 0.1}\n"
        "  - {name: b, method: {lambda2: 0.2}}\n  - c\n",
    )
    over = {"model": "m", "data_dir": "d", "output_dir": "o"}
    cfg = resolve(config_file=f, overrides=over)
    assert [t.method_options for t in cfg.tasks] == [
        {"lambda": 0.1, "lambda2": 0.0},
        {"lambda": 0.7, "lambda2": 0.2},
        {"lambda": 0.7, "lambda2": 0.0},
    ]
    method = build_method(cfg)
    assert [method.lam(t) for t in cfg.tasks] == [0.1, 0.7, 0.7] and method.lam2(cfg.tasks[1]) == 0.2
    cli = resolve(config_file=f, overrides={**over, "method_args": {"lambda": "0.9"}})  # the command line wins
    assert [t.method_options["lambda"] for t in cli.tasks] == [0.9, 0.9, 0.9]
    # a run-wide option is not set per task
    bad = write(tmp_path, "method: replay\ntasks:\n  - {name: a, lambda: 0.1}\n")
    with pytest.raises(NloraError, match="task a: replay's option fraction is one value for the whole run"):
        resolve(config_file=bad, overrides=over)


def test_options_of_a_replaced_method_are_dropped():
    cfg = resolve(preset="t5-order1", overrides={**BASE, "task_names": None, "method": "o-lora"})
    assert cfg.method == "o-lora" and cfg.method_options == {}  # the preset's n-lora form does not follow
    assert cfg.tasks[0].method_options == {"lambda": 0.4, "lambda2": 0.0}  # its per-task lambdas do (as before)


@pytest.mark.parametrize(
    "flags,expect",
    [
        (["--method-arg", "bogus=1"], "method n-lora has no option 'bogus' (its options: lambda, form"),
        (["--method", "l2p", "--method-arg", "pool=3"], "has no option 'pool' (its options: lambda, pool_size"),
        (["--method-arg", "lambda=fast"], "command line: setting 'lambda' must be a number, got 'fast'"),
        (["--method", "l2p", "--method-arg", "top_k=1.5"], "setting 'top_k' must be a whole number, got 1.5"),
        (["--method-arg", "form=sideways"], "n-lora option form must be paper or reference, got 'sideways'"),
        (["--method-arg", "lambda=-1"], "command line: lambda (task topic) must be >= 0"),
        (["--method", "migu", "--lambda", "1"], "quantile (task topic) must be >= 0 and < 1"),
        (["--method", "l2p", "--method-arg", "top_k=11"], "top_k 11 exceeds pool_size 10"),
        (
            ["--lambda", "0.1", "--method-arg", "lambda=0.2"],
            "command line: --lambda and --method-arg lambda both set n-lora's option lambda",
        ),
        (["--method-arg", "lambda"], "argument --method-arg: expected KEY=VALUE, got 'lambda'"),
        (["--method", "nope"], "unknown method 'nope'"),
    ],
)
def test_bad_option_is_one_line_exit_2(tmp_path, capsys, flags, expect):
    out = tmp_path / "run"
    argv = ["run", "--model", "m", "--data-dir", str(tmp_path), "--output-dir", str(out), "--tasks", "topic", *flags]
    line = one_error_line(capsys, argv)
    assert expect in line, line
    assert not out.exists()


def test_bad_option_in_a_config_file_names_the_file(tmp_path, capsys):
    f = write(tmp_path, "method: {name: n-lora, lamda: 0.3}\ntasks: [topic]\n")
    line = one_error_line(capsys, ["run", "--config", f, "--model", "m", "--data-dir", "d", "--output-dir", "o"])
    assert f"{f}: method n-lora has no option 'lamda'" in line
    f = write(tmp_path, "method: n-lora\ntasks:\n  - {name: topic, method: {lambda: -2}}\n")
    line = one_error_line(capsys, ["run", "--config", f, "--model", "m", "--data-dir", "d", "--output-dir", "o"])
    assert f"{f}: lambda (task topic) must be >= 0, got -2" in line


def test_methods_listing_shows_the_options(capsys):
    assert main(["methods", "n-lora"]) == 0
    out = capsys.readouterr().out
    lines = [x.split() for x in out.splitlines()]
    assert ["lambda", "float", "0.4"] in [x[:3] for x in lines] and ["form", "str", "paper"] in [x[:3] for x in lines]
    assert "--nlora-form sets it" in " ".join(out.split()) and "--method-arg KEY=VALUE" in out
    assert main(["methods", "seq-lora"]) == 0 and "options: none" in capsys.readouterr().out


def test_run_help_generated_from_the_fields(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--method-arg KEY=VALUE", "--lambda LAMBDA", "--nlora-form", "--no-fold", "--lora-r R"):
        assert flag in text
    assert "random seed (default: 42)" in text and "learning rate for every task (default: 0.001)" in text
    assert "deprecated: --method-arg form=" in text


LEGACY = {  # a run directory's config.yaml as versions before method options wrote it (tasks: lam, lam2)
    "model": "m",
    "data_dir": "d",
    "output_dir": "o",
    "tasks": [
        {"name": "a", "lr": 0.001, "epochs": 1.0, "batch_size": 8, "grad_accum": 1, "lam": 0.3, "lam2": None},
        {"name": "b", "lr": 0.001, "epochs": 1.0, "batch_size": 8, "grad_accum": 1, "lam": None, "lam2": 0.2},
    ],
    "method": "o-lora",
    "nlora_form": "paper",
    "lora": {"r": 8, "alpha": 32, "dropout": 0.1, "target_modules": None},
}


def test_old_run_config_is_converted_as_resolve_would_make_it():
    old = RunConfig.from_dict(LEGACY)
    assert old.method_options == {} and [t.method_options for t in old.tasks] == [
        {"lambda": 0.3, "lambda2": 0.0},
        {"lambda": 0.5, "lambda2": 0.2},
    ]
    nlora = RunConfig.from_dict({**LEGACY, "method": "n-lora", "nlora_form": "reference"})
    assert nlora.method_options == {"form": "reference"} and nlora.tasks[1].method_options == {"lambda": 0.4}
    replay = RunConfig.from_dict({**LEGACY, "method": "replay", "tasks": [{**t, "lam": 0.05} for t in LEGACY["tasks"]]})
    assert replay.method_options == {"fraction": 0.05} and replay.tasks[0].method_options == {}
    fresh = resolve(overrides={**BASE, "method": "replay", "lambda": 0.05})
    assert replay.to_dict() == fresh.to_dict()
    with pytest.raises(ValueError, match="unknown method"):
        RunConfig.from_dict({**LEGACY, "method": "gone"})


def test_old_style_run_directory_resumes_and_evaluates(model_dirs, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "run",
        "--model",
        str(model_dirs["t5"]),
        "--data-dir",
        str(data_dir),
        "--output-dir",
        str(out),
        "--tasks",
        "topic,mood",
        "--max-train-per-task",
        "8",
        "--max-test-per-task",
        "4",
        "--batch-size",
        "4",
        "--eval-batch-size",
        "4",
        "--max-target-length",
        "4",
        "--lambda",
        "0.1",
    ]
    assert main(argv) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    summary = json.loads((out / "summary.json").read_text())
    # written as before method options: top-level nlora_form, per-task lam / lam2, no method_options
    old = {k: v for k, v in saved.items() if k != "method_options"}
    old["nlora_form"] = saved["method_options"]["form"]
    old["tasks"] = [
        {**{k: v for k, v in t.items() if k != "method_options"}, "lam": t["method_options"]["lambda"], "lam2": None}
        for t in saved["tasks"]
    ]
    (out / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    (out / "summary.json").unlink()  # as if stopped before the end: the resume re-evaluates and writes it
    assert main(argv) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["resumed"] is True and again["accuracy_matrix"] == summary["accuracy_matrix"]
    assert main(["eval", str(out), "--tasks", "topic", "--after-task", "1"]) == 0
    line = one_error_line(capsys, [*argv, "--lambda", "0.2"])  # a different lambda is still a different run
    assert "holds a run with different settings" in line


DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-method.md"


@pytest.fixture
def doc_example(monkeypatch):
    """The worked example of docs/adding-a-method.md, as its module `nlora.methods.l2lora`, registered the way
    the doc's import line would; removed from the registry afterwards."""
    source = DOC.read_text().split("`src/nlora/methods/l2lora.py`:\n\n```python\n", 1)[1].split("```", 1)[0]
    module = types.ModuleType("nlora.methods.l2lora")
    module.__package__ = "nlora.methods"
    monkeypatch.setitem(sys.modules, module.__name__, module)
    assert "l2-lora" not in REGISTRY
    exec(compile(source, str(DOC), "exec"), module.__dict__)
    yield REGISTRY["l2-lora"]
    REGISTRY.pop("l2-lora")


def test_the_docs_worked_example_declares_runs_and_penalises_as_it_says(doc_example, model_dirs, data_dir, tmp_path):
    specs = {s.key: s for s in option_specs(doc_example.Options)}
    assert list(specs) == ["lambda", "only_b"]
    assert (specs["lambda"].alias, specs["lambda"].per_task, specs["lambda"].limit) == (
        "lambda",
        True,
        (0, None, False, False),
    )
    method = make_method("l2-lora", {"lambda": 0.1, "only_b": True}, RunFacts(n_tasks=2))
    assert (method.options.lam, method.options.only_b) == (0.1, True)

    # the penalty against its statement, lambda * sum ||B||^2 with only_b, on a live bank
    loaded = load_model(str(model_dirs["llama"]))
    bank = LoraBank(loaded.model, LoraSettings(dropout=0.0), default_target_modules(loaded.model), loaded.family)
    settings = TaskSettings(name="topic", lr=0.01, epochs=1, batch_size=4, grad_accum=1)
    name = method.begin_task(bank, 0, settings)
    with torch.no_grad():  # B starts at zero: give it values so the penalty is not trivially 0
        for f in bank.factors(name):
            torch.nn.init.normal_(f.B)
        want = 0.1 * sum(float(f.B.pow(2).sum()) for f in bank.factors(name))
    assert want > 0 and float(method.penalty(bank, settings)) == pytest.approx(want, rel=1e-5)

    # and the command line the doc gives runs it
    out = tmp_path / "run"
    args = toy_run_args(model_dirs["llama"], data_dir, out, "--method", "l2-lora", "--lambda", "1e-3")
    assert main([*args, "--method-arg", "only_b=true"]) == 0
    summary = json.loads(next(out.rglob("summary.json")).read_text())
    assert summary["method"] == "l2-lora"
