import json

import pytest

from nlora.errors import NloraError
from nlora.prompts import answer_from_generation, build_prompt, load_instructions


def test_prompt_with_instruction_and_options():
    p = build_prompt("TC", "agnews", "Title: x\nText: y\n", ["World", "Sports"], "What is the topic? Choose.\n")
    assert p == (
        "Task:TC\nDataset:agnews\nWhat is the topic? Choose.\nOption: World, Sports \nTitle: x\nText: y\n\nAnswer:"
    )


def test_copa_has_no_instruction_and_no_option_line():
    instructions = load_instructions()
    assert "COPA" not in instructions
    p = build_prompt("COPA", "COPA", "Which? A: a B: b", ["A", "B"], instructions.get("COPA"))
    assert p == "Task:COPA\nDataset:COPA\nWhich? A: a B: b\nAnswer:"


def test_builtin_instructions_cover_categories():
    ins = load_instructions()
    assert set(ins) == {"NLI", "QQP", "SC", "TC", "BoolQA", "MultiRC", "WiC"}
    assert all(v.endswith("\n") for v in ins.values())


@pytest.mark.parametrize("form", ["flat", "reference"])
def test_user_instruction_file_overrides(tmp_path, form):
    f = tmp_path / "ins.json"
    body = (
        {"TC": "Topic?\n"} if form == "flat" else {"TC": [{"instruction_type": "zero-shot", "instruction": "Topic?\n"}]}
    )
    f.write_text(json.dumps(body))
    assert load_instructions(f) == {"TC": "Topic?\n"}


def test_bad_instruction_file(tmp_path):
    f = tmp_path / "ins.json"
    f.write_text('{"TC": ')
    with pytest.raises(NloraError, match=r"ins.json: malformed JSON at line 1"):
        load_instructions(f)
    with pytest.raises(NloraError, match="not found"):
        load_instructions(tmp_path / "nope.json")


def test_answer_after_last_marker():
    assert answer_from_generation("Task..\nAnswer: x\nAnswer: World") == " World"
    assert answer_from_generation("no marker") == "no marker"
