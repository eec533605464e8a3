import json

import pytest
from conftest import CL_BENCHMARK

from nlora.data import cap_indices, load_tasks, resolve_task_dirs
from nlora.errors import NloraError
from nlora.prompts import load_instructions


def load(data_dir, tasks, **kw):
    return load_tasks(data_dir, tasks, load_instructions(), **kw)


def test_reads_layout_and_builds_prompts(data_dir):
    tasks = load(data_dir, ["topic", "COPA"])
    topic = tasks["topic"]
    assert topic.category == "TC" and topic.labels == ["World", "Sports"]
    assert len(topic.splits["train"]) == 24 and len(topic.splits["test"]) == 8
    ex = topic.splits["train"][0]
    assert ex.prompt.startswith("Task:TC\nDataset:topic\nWhat is the topic of the following paragraph?")
    assert "Option: World, Sports \n" in ex.prompt and ex.prompt.endswith("\nAnswer:")
    assert "Option:" not in tasks["COPA"].splits["test"][0].prompt


def test_caps_are_deterministic_and_order_independent(data_dir):
    a = load(data_dir, ["topic", "mood"], max_train=5, max_test=3, seed=7)
    b = load(data_dir, ["mood", "topic"], max_train=5, max_test=3, seed=7)
    c = load(data_dir, ["topic"], max_train=5, seed=8)
    assert [e.prompt for e in a["topic"].splits["train"]] == [e.prompt for e in b["topic"].splits["train"]]
    assert len(a["topic"].splits["train"]) == 5 and len(a["topic"].splits["test"]) == 3
    assert cap_indices(100, 10, 1, "t", "train") != cap_indices(100, 10, 2, "t", "train")
    assert [e.prompt for e in c["topic"].splits["train"]] != [e.prompt for e in a["topic"].splits["train"]]


def test_unknown_task_names_candidates(data_dir):
    with pytest.raises(NloraError, match=r"unknown task\(s\) nope .*found: COPA, mood, topic"):
        load(data_dir, ["topic", "nope"])


def test_missing_files_all_named_before_reading(data_dir):
    (data_dir / "TC" / "topic" / "test.json").unlink()
    (data_dir / "SC" / "mood" / "labels.json").unlink()
    with pytest.raises(NloraError) as e:
        resolve_task_dirs(data_dir, ["topic", "mood"])
    msg = str(e.value)
    assert "missing data files" in msg and "topic/test.json" in msg and "mood/labels.json" in msg


def test_missing_data_dir(tmp_path):
    with pytest.raises(NloraError, match="data directory not found"):
        load(tmp_path / "none", ["topic"])


def test_malformed_json_names_file_and_position(data_dir):
    f = data_dir / "TC" / "topic" / "train.json"
    f.write_text('[{"label": "World", "sentence": "a"},\n {"label": ')
    with pytest.raises(NloraError, match=r"topic/train.json: malformed JSON at line 2 column"):
        load(data_dir, ["topic"])


def test_empty_split(data_dir):
    (data_dir / "TC" / "topic" / "test.json").write_text("[]")
    with pytest.raises(NloraError, match=r"topic/test.json: split is empty"):
        load(data_dir, ["topic"])


def test_missing_fields(data_dir):
    (data_dir / "TC" / "topic" / "train.json").write_text(json.dumps([{"label": "World"}]))
    with pytest.raises(NloraError, match=r"example 0 needs string fields"):
        load(data_dir, ["topic"])


def test_unknown_label_policies(data_dir):
    f = data_dir / "TC" / "topic" / "test.json"
    rows = json.loads(f.read_text())
    rows[2]["label"] = "-"
    f.write_text(json.dumps(rows))
    with pytest.raises(NloraError, match=r"topic/test.json: example 2 has label '-', not in labels.json"):
        load(data_dir, ["topic"])
    assert len(load(data_dir, ["topic"], unknown_labels="drop")["topic"].splits["test"]) == 7
    kept = load(data_dir, ["topic"], unknown_labels="keep")["topic"].splits["test"]
    assert len(kept) == 8 and kept[2].label == "-"


@pytest.mark.skipif(not CL_BENCHMARK.is_dir(), reason="../shared/CL_Benchmark not present")
def test_real_benchmark_layout():
    tasks = load(CL_BENCHMARK, ["agnews", "COPA", "BoolQA"], max_train=3, max_test=2)
    p = tasks["agnews"].splits["test"][0].prompt
    assert p.startswith(
        "Task:TC\nDataset:agnews\nWhat is the topic of the following paragraph? Choose one from "
        "the option.\nOption: World, Sports, Business, Science or Technology \n"
    )
    assert tasks["COPA"].splits["test"][0].prompt.startswith("Task:COPA\nDataset:COPA\n")
    assert tasks["BoolQA"].category == "BoolQA"
    with pytest.raises(NloraError, match=r"missing data files: .*yahoo/train.json, .*yahoo/test.json"):
        resolve_task_dirs(CL_BENCHMARK, ["dbpedia", "amazon", "yahoo", "agnews"])
