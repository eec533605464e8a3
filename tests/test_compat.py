"""--compat reference (the N-LoRA release's collator, loss and outputs) against --compat clean, gradient clipping,
and presets' global batch on one and two processes."""

import json
import string

import pytest
import torch
from test_dist import CONFIG, launch

from nlora.batching import Encoded, collate_train, encode, encode_prompts, release_denominator, release_loss_mask
from nlora.cli import main
from nlora.config import TaskSettings, resolve
from nlora.data import Example, load_tasks
from nlora.dist import fit_global_batch
from nlora.errors import NloraError
from nlora.evaluate import TaskPredictions, generate_with_lengths, release_prediction_rows, results_dict
from nlora.logits import answer_logits, loss_from_logits
from nlora.models import load_model
from nlora.prompts import build_prompt, load_instructions
from nlora.runtime import Runtime

BASE = {"model": "m", "data_dir": "d", "output_dir": "o"}
ADAMW_STEP = torch.optim.AdamW.step  # before any test wraps it


def llama_style_tokenizer():
    """A character-level stand-in for LLaMA's SentencePiece tokenizer: BOS added in front of every text, "<s>" and
    "</s>" in a text read as the special tokens, and a "▁" piece before the text's first word (Metaspace)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for ch in ["▁", *string.printable]:
        vocab.setdefault(ch, len(vocab))
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<s>"
    )  # the release pads LLaMA with id 1 (BOS)
    tok.add_special_tokens({"additional_special_tokens": []})
    return tok


@pytest.fixture(scope="module")
def ltok():
    return llama_style_tokenizer()


def ids_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


# ---- item 5: the release's LLaMA token-level handling ----


def test_reference_causal_tokens_follow_the_release(ltok):
    prompt, label = "Task:SC\nDataset:mood\nnice\nAnswer:", "positive"
    assert ids_of(ltok, "positive")[0] == ltok.convert_tokens_to_ids("▁")  # alone, the label gets a "▁" piece
    (ref,) = encode(ltok, [Example(prompt, label)], False, 512, 50, "reference")
    # "<s>" + prompt tokenised with special tokens on: two BOS
    assert ref.source[:2] == [1, 1]
    # "Answer:" and the label tokenised together: no "▁" piece before the label, then EOS from "</s>"
    tail = [ltok.convert_tokens_to_ids(c) for c in ":positive"] + [ltok.eos_token_id]
    assert ref.source[-len(tail) :] == tail and not ref.target
    # the release counts the label tokenised alone with its specials: BOS, "▁", 8 letters, EOS
    assert ref.release.label_len == 11
    mask = release_loss_mask([ref])[0]
    first = mask.index(1)
    assert ltok.convert_ids_to_tokens(ref.source[first]) == ":"  # the mask starts at the last prompt token
    assert sum(mask) == 10  # ":" + 8 letters + EOS
    batch = collate_train([ref], ltok.pad_token_id, False)
    counted = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert counted == tail[1:]  # the loss scores the label and EOS, each predicted from the token before
    assert release_denominator([ref]) == len(counted) + 1  # ... and divides by the whole mask, one more
    assert "position_ids" not in batch  # the release's training forward passes none

    (clean,) = encode(ltok, [Example(prompt, label)], False, 512, 50)
    # clean: one BOS, the label tokenised alone (here with its "▁" piece), loss on exactly label + EOS
    assert clean.source[:3] == [1] + ids_of(ltok, "T") and clean.target == ids_of(ltok, "positive") + [2]
    assert "position_ids" in collate_train([clean], ltok.pad_token_id, False)


def test_reference_batch_mask_under_left_padding(ltok):
    """Rows of different lengths: each row's mask covers its own last prompt token, label and EOS."""
    rows = encode(
        ltok,
        [Example("Task:SC\nAnswer:", "no"), Example("Task:SC\nDataset:mood\nlong one\nAnswer:", "positive")],
        False,
        512,
        50,
        "reference",
    )
    batch = collate_train(rows, ltok.pad_token_id, False)
    for r, labels in zip(rows, batch["labels"]):
        label = r.source[r.source.index(ltok.convert_tokens_to_ids(":"), -12) + 1 :]  # after the last ":"
        assert labels[labels != -100].tolist() == label
    assert release_denominator(rows) == sum(int((lab != -100).sum()) + 1 for lab in batch["labels"])


# ---- item 1: over-long inputs ----


def long_task(root, n=6, words=400):
    """A data file whose prompts are far over the limit (the label at the very end)."""
    d = root / "SC" / "longmood"
    d.mkdir(parents=True)
    (d / "labels.json").write_text(json.dumps(["positive", "negative"]))
    rows = [{"label": ["positive", "negative"][i % 2], "sentence": " ".join(["word"] * (words + i))} for i in range(n)]
    for split in ("train", "test"):
        (d / f"{split}.json").write_text(json.dumps(rows))
    return load_tasks(root, ["longmood"], load_instructions())["longmood"]


def test_over_long_causal_reference_keeps_the_first_tokens_and_loses_the_label(ltok, tmp_path, model_dirs):
    task = long_task(tmp_path)
    examples = task.splits["train"]
    n = 128
    ref = encode(ltok, examples, False, n, 8, "reference")
    for e, r in zip(examples, ref):
        # the first tokens of BOS + "<s>" + prompt; the release's decode and re-tokenisation of a cut input
        # adds one more BOS in front
        assert r.source == [1] + ltok("<s>" + e.prompt)["input_ids"][: n - 1] and r.truncated
        assert ltok.decode(r.source).count("Answer:") == 0
    batch = collate_train(ref[:3], ltok.pad_token_id, False)
    assert int((batch["labels"] != -100).sum()) == 0  # no label token left to score

    model = load_model(str(model_dirs["llama"])).model  # vocab 384 covers the character tokenizer
    logits, targets = answer_logits(model, batch, False, False)
    loss_sum, count = loss_from_logits(logits, targets)
    assert float(loss_sum) == 0.0 and count == 0
    assert release_denominator(ref[:3]) == 3  # the mask's last column: loss 0 / 3 = 0, not 0 / 0

    clean = encode(ltok, examples, False, n, 16)
    for e, c in zip(examples, clean):
        assert len(c.source) == n and c.truncated
        assert ltok.decode(c.source).endswith("\nAnswer:")  # head + tail: "Answer:" kept
        assert c.target == ids_of(ltok, e.label) + [ltok.eos_token_id]  # and the label
    batch = collate_train(clean[:3], ltok.pad_token_id, False)
    assert int((batch["labels"] != -100).sum()) == sum(len(c.target) for c in clean[:3])


def test_over_long_seq2seq_reference_keeps_the_first_tokens(tmp_path, model_dirs):
    tok = load_model(str(model_dirs["t5"])).tokenizer  # ByT5: one token per byte, EOS appended
    task = long_task(tmp_path)
    n = 100
    for e, r, c in zip(
        task.splits["test"],
        encode_prompts(tok, [e.prompt for e in task.splits["test"]], True, n, "reference"),
        encode_prompts(tok, [e.prompt for e in task.splits["test"]], True, n),
    ):
        full = tok(e.prompt)["input_ids"]
        # the first n tokens, decoded and tokenised again with truncation: n - 1 of them and EOS
        assert r.source == full[: n - 1] + [tok.eos_token_id] and r.truncated
        assert "Answer:" not in tok.decode(r.source)
        assert tok.decode(c.source, skip_special_tokens=True).endswith("Answer:") and c.truncated
    (lab,) = encode(tok, [task.splits["train"][0]], True, n, 16, "reference")
    assert lab.target == tok(task.splits["train"][0].label)["input_ids"]  # the label, with EOS, in both modes


def test_reference_prediction_is_empty_when_the_prompt_lost_its_answer_marker(tmp_path, model_dirs):
    loaded = load_model(str(model_dirs["llama"]))
    task = long_task(tmp_path, n=2)
    prompts = [e.prompt for e in task.splits["test"]] + ["Task:SC\nDataset:longmood\nshort\nAnswer:"]
    kw = {"eval_batch_size": 4, "max_source": 64, "max_target": 4}
    reference = Runtime(loaded.tokenizer, loaded.family, torch.device("cpu"), compat="reference", **kw)
    preds, lens, truncated = generate_with_lengths(loaded.model, reference, prompts)
    assert truncated == 2 and preds[:2] == ["", ""]
    assert all(n > 0 for n in lens)
    clean = Runtime(loaded.tokenizer, loaded.family, torch.device("cpu"), **kw)
    _, _, truncated = generate_with_lengths(loaded.model, clean, prompts)
    assert truncated == 2


# ---- item 2: gradient clipping ----


def one_step_gradients(model_dirs, data_dir, max_grad_norm, monkeypatch, log_path=None):
    """The gradients AdamW steps with, and the parameters it leaves, after one step of train_task (its
    train_log.jsonl line at LOG_PATH, if given)."""
    from nlora.adapters import LoraBank
    from nlora.config import LoraSettings
    from nlora.methods import get_method
    from nlora.models import default_target_modules
    from nlora.train import TrainLoop, train_task
    from nlora.trainlog import TaskLog

    seen = {}
    original = ADAMW_STEP

    def spy(self, *a, **k):
        seen["grads"] = [p.grad.detach().clone() for g in self.param_groups for p in g["params"]]
        seen["before"] = [p.detach().clone() for g in self.param_groups for p in g["params"]]
        out = original(self, *a, **k)
        seen["after"] = [p.detach().clone() for g in self.param_groups for p in g["params"]]
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    loaded = load_model(str(model_dirs["llama"]))
    torch.manual_seed(0)
    lora = LoraBank(loaded.model, LoraSettings(dropout=0.0), default_target_modules(loaded.model), loaded.family)
    method = get_method("seq-lora")()
    tasks = load_tasks(data_dir, ["topic"], load_instructions(), max_train=4, max_test=4)
    data = encode(loaded.tokenizer, tasks["topic"].splits["train"], False, 256, 8)
    settings = TaskSettings(name="topic", lr=1e-2, epochs=1, batch_size=4, grad_accum=1)
    method.begin_task(lora, 0, settings)
    rt = Runtime(loaded.tokenizer, loaded.family, torch.device("cpu"))
    log = None if log_path is None else TaskLog(log_path, 1, None, 0, "topic")
    train_task(rt, lora, method, data, settings, TrainLoop(seed=0, max_grad_norm=max_grad_norm, log=log))
    return seen


def test_clipping_changes_a_step_exactly_as_clip_grad_norm(model_dirs, data_dir, monkeypatch, tmp_path):
    free = one_step_gradients(model_dirs, data_dir, None, monkeypatch)
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in free["grads"]])))
    limit = norm / 4
    log_path = tmp_path / "train_log.jsonl"
    clipped = one_step_gradients(model_dirs, data_dir, limit, monkeypatch, log_path)
    logged = [json.loads(line)["grad_norm"] for line in log_path.read_text().splitlines()]
    assert logged == [pytest.approx(norm, rel=1e-4)]  # the log keeps the norm before clipping
    expected = [g.clone() for g in free["grads"]]
    params = [torch.nn.Parameter(p.clone()) for p in free["before"]]
    for p, g in zip(params, expected):
        p.grad = g
    torch.nn.utils.clip_grad_norm_(params, limit)
    for got, want in zip(clipped["grads"], [p.grad for p in params]):
        torch.testing.assert_close(got, want)
    # the same AdamW step from the clipped gradients: the parameters it leaves agree too
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    monkeypatch.undo()
    opt.step()
    for got, want in zip(clipped["after"], params):
        torch.testing.assert_close(got, want.detach())
    assert any(not torch.equal(a, b) for a, b in zip(clipped["grads"], free["grads"]))
    # a limit above the norm leaves the step alone
    loose = one_step_gradients(model_dirs, data_dir, norm * 4, monkeypatch)
    for a, b in zip(loose["grads"], free["grads"]):
        torch.testing.assert_close(a, b)


def test_max_grad_norm_setting():
    assert resolve(overrides={**BASE, "task_names": ["a"]}).max_grad_norm == 1.0  # the release's default
    assert resolve(overrides={**BASE, "task_names": ["a"], "max_grad_norm": 0}).max_grad_norm == 0
    with pytest.raises(NloraError, match="max_grad_norm"):
        resolve(overrides={**BASE, "task_names": ["a"], "max_grad_norm": -1})


# ---- item 3: a preset's global batch on any number of processes ----


def test_fit_global_batch_derives_accumulation():
    def first(tasks, global_batch, world):
        t = fit_global_batch(tasks, global_batch, world)[0]
        return t.batch_size, t.grad_accum

    tasks = resolve(preset="llama-order3", overrides=BASE).tasks
    assert first(tasks, 32, 1) == (1, 32)
    assert first(tasks, 32, 2) == (2, 16)
    assert first(tasks, 32, 4) == (4, 8)  # the release's 4 GPUs x 1 x 8
    with pytest.raises(NloraError, match="global batch 32 cannot be split evenly over 3 processes"):
        fit_global_batch(tasks, 32, 3)
    t5 = resolve(preset="t5-order1", overrides=BASE).tasks
    assert first(t5, 48, 1) == (48, 1)
    assert first(t5, 48, 2) == (48, 1)  # 24 per process
    assert first(resolve(preset="llama-order1", overrides=BASE).tasks, 48, 4) == (24, 2)  # 6 per process


def test_batch_flags_replace_a_presets_global_batch():
    assert resolve(preset="llama-order3", overrides={**BASE, "grad_accum": 4}).global_batch is None
    assert resolve(preset="llama-order3", overrides={**BASE, "batch_size": 2, "global_batch": 64}).global_batch == 64
    with pytest.raises(NloraError, match="global_batch derives"):
        resolve(overrides={**BASE, "task_names": ["a"], "global_batch": 16, "grad_accum": 2})


def preset_args(model_dir, data_dir, out):
    # tasks outside the preset get batch_size 8 (the per-process cap): 8 x 4 on one process, 16 x 2 on two;
    # dropout 0 so that ranks draw no different masks; the paper form: the tiny model's v_proj is not square
    return [
        "run",
        "--preset",
        "llama-order3",
        "--model",
        str(model_dir),
        "--data-dir",
        str(data_dir),
        "--output-dir",
        str(out),
        "--tasks",
        "topic,mood",
        "--max-train-per-task",
        "16",
        "--max-test-per-task",
        "4",
        "--max-target-length",
        "6",
        "--lora-dropout",
        "0",
        "--nlora-form",
        "paper",
        "--lr",
        "0.01",
        "--device",
        "cpu",
    ]


def test_preset_global_batch_is_the_same_on_one_and_two_processes(model_dirs, data_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    one, two = tmp_path / "one", tmp_path / "two"
    assert main(preset_args(model_dirs["llama"], data_dir, one)) == 0
    assert "batch 8x4" in "".join(capsys.readouterr())
    proc = launch(CONFIG, preset_args(model_dirs["llama"], data_dir, two))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "batch 16x2" in proc.stderr + proc.stdout  # 2 processes x 8, accumulating 2: 32 per step
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert (s1["processes"], s2["processes"]) == (1, 2)
    for a, b in zip(s1["per_task"], s2["per_task"]):
        assert a["train_steps"] == b["train_steps"] == 1 and a["train_examples"] == b["train_examples"] == 16
    for task in ("01-topic", "02-mood"):
        t1, t2 = (load_file(d / "tasks" / task / "adapter" / "adapter_model.safetensors") for d in (one, two))
        for k in t1:
            torch.testing.assert_close(t2[k], t1[k], rtol=1e-4, atol=1e-5)
    cfg1 = (one / "config.yaml").read_text()
    assert "global_batch: 32" in cfg1 and "compat: reference" in cfg1


# ---- item 6: the release's predictions file and keys ----


def test_release_prediction_rows_read_back_the_prompt():
    instructions = load_instructions()
    sc = build_prompt("SC", "mood", "a fine day\nreally", ["positive", "negative"], instructions["SC"])
    copa = build_prompt("COPA", "COPA", "pick one", ["A", "B"], instructions.get("COPA"))
    preds = [
        TaskPredictions("mood", "SC", [sc], ["positive"], ["positive"]),
        TaskPredictions("COPA", "COPA", [copa], ["A"], ["B"]),
    ]
    rows = release_prediction_rows(preds, [["positive", "negative"], ["A", "B"]])
    assert rows[0] == {
        "Task": "SC",
        "Dataset": "mood",
        "Prediction": "positive",
        "Instance": {
            "id": "0",
            "sentence": "a fine day\nreally",
            "label": "positive",
            "ground_truth": "positive",
            "instruction": instructions["SC"] + "Option: positive, negative \n{0}\nAnswer:",
        },
    }
    assert rows[1]["Instance"]["instruction"] == "{0}\nAnswer:" and rows[1]["Instance"]["sentence"] == "pick one"
    # the release fills the sentence into the template after its Task/Dataset prefix: the prompt again
    for row, prompt in zip(rows, (sc, copa)):
        assert (
            f"Task:{row['Task']}\nDataset:{row['Dataset']}\n"
            + row["Instance"]["instruction"].format(row["Instance"]["sentence"])
            == prompt
        )


def test_results_carry_the_release_keys():
    preds = [
        TaskPredictions("mood", "SC", ["p"] * 2, ["positive", "negative"], ["positive", "bad"], [5, 7], 1),
        TaskPredictions("topic", "TC", ["p"], ["World"], ["World"], [3], 0),
    ]
    r = results_dict(preds, 2.0)
    assert r["predict_rouge1"] == pytest.approx(100 * 2 / 3, abs=1e-3)
    assert r["predict_rouge1_for_mood"] == 50.0 and r["predict_rouge1_for_TC"] == 100.0
    assert r["predict_gen_len"] == 5.0 and r["predict_samples_per_second"] == 1.5
    assert r["predict_truncated"] == 1 and r["predict_truncated_for_topic"] == 0
    assert {
        "predict_exact_match",
        "predict_rougeL",
        "predict_exact_match_for_mood",
        "predict_samples",
        "predict_runtime",
    } <= set(r)


def test_run_writes_the_release_predictions_file(model_dirs, data_dir, tmp_path):
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "--model",
                str(model_dirs["t5"]),
                "--data-dir",
                str(data_dir),
                "--output-dir",
                str(out),
                "--tasks",
                "topic,COPA",
                "--max-train-per-task",
                "4",
                "--max-test-per-task",
                "3",
                "--max-target-length",
                "4",
                "--compat",
                "reference",
                "--method",
                "seq-lora",
            ]
        )
        == 0
    )
    d = out / "tasks" / "02-COPA"
    rows = [json.loads(x) for x in (d / "predict_eval_predictions.jsonl").read_text().splitlines()]
    ours = [json.loads(x) for x in (d / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == len(ours) == 6
    assert [set(r) for r in rows] == [{"Task", "Dataset", "Instance", "Prediction"}] * 6
    assert [r["Prediction"] for r in rows] == [o["prediction"] for o in ours]
    assert {r["Task"] for r in rows} == {"TC", "COPA"} and {r["Dataset"] for r in rows} == {"topic", "COPA"}
    results = json.loads((d / "predict_results.json").read_text())
    for key in (
        "predict_rouge1",
        "predict_rouge1_for_topic",
        "predict_rouge1_for_COPA",
        "predict_rouge1_for_TC",
        "predict_gen_len",
        "predict_samples_per_second",
        "predict_exact_match",
        "predict_rougeL_for_topic",
    ):
        assert key in results, key
    stats = json.loads((out / "tasks" / "01-topic" / "train_stats.json").read_text())
    assert stats["train_truncated"] == 0


def test_compat_setting():
    assert resolve(overrides={**BASE, "task_names": ["a"]}).compat == "clean"
    assert resolve(preset="t5-order1", overrides=BASE).compat == "reference"
    assert resolve(preset="t5-order1", overrides={**BASE, "compat": "clean"}).compat == "clean"
    with pytest.raises(NloraError, match="compat"):
        resolve(overrides={**BASE, "task_names": ["a"], "compat": "release"})


def test_encoded_defaults_keep_clean_rows_unchanged():
    rows = [Encoded([5, 6, 7], [8, 1]), Encoded([5], [9, 1])]
    batch = collate_train(rows, 0, False)
    assert batch["labels"].tolist() == [[-100, -100, -100, 8, 1], [-100, -100, -100, 9, 1]]
    assert "position_ids" in batch
