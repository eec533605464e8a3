"""Continual adapters: old tasks frozen and kept in the forward pass; saved adapters load with PEFT alone."""

import pytest
import torch
from peft import PeftModel

from nlora.adapters import ContinualLoRA
from nlora.batching import collate_train, encode
from nlora.config import LoraSettings, TaskSettings, resolve
from nlora.data import load_tasks
from nlora.methods import get_method
from nlora.models import default_target_modules, load_model
from nlora.prompts import load_instructions
from nlora.train import train_task

SEQ2SEQ = {"t5": True, "llama": False}


def setup(model_dirs, kind, data_dir, method="n-lora"):
    loaded = load_model(str(model_dirs[kind]))
    lora = ContinualLoRA(loaded.model, LoraSettings(dropout=0.0), default_target_modules(loaded.model),
                         loaded.seq2seq)
    tasks = load_tasks(data_dir, ["topic", "mood"], load_instructions(), 16, 4, 0)
    enc = {n: encode(loaded.tokenizer, t.splits["train"], loaded.seq2seq, 256, 8) for n, t in tasks.items()}
    cfg = resolve(overrides={"model": "m", "data_dir": "d", "output_dir": "o", "task_names": ["topic", "mood"],
                             "method": method})
    return loaded, lora, enc, get_method(method)(cfg)


def fit(lora, method, enc, index, name, loaded):
    settings = TaskSettings(name=name, lr=5e-2, epochs=1, batch_size=4, grad_accum=1, lam=1e-3)
    method.begin_task(lora, index, settings)
    train_task(lora, method, enc, settings, pad_id=loaded.tokenizer.pad_token_id, seq2seq=loaded.seq2seq,
               device=torch.device("cpu"), amp_dtype=None, seed=index)


@torch.no_grad()
def logits(model, batch):
    model.eval()
    return model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels",
                                                              "position_ids")}).logits


def test_new_task_leaves_old_function_untouched(model_dirs, model_kind, data_dir, tmp_path):
    loaded, lora, enc, method = setup(model_dirs, model_kind, data_dir)
    fit(lora, method, enc["topic"], 0, "topic", loaded)
    probe = collate_train(enc["topic"][:4], loaded.tokenizer.pad_token_id, loaded.seq2seq)
    before = logits(lora.model, probe)
    old = {n: p.detach().clone() for n, p in lora.model.named_parameters() if ".task0." in n}
    base = {n: p.detach().clone() for n, p in lora.model.named_parameters() if "lora_" not in n}
    lora.save_adapter("task0", tmp_path / "task0")

    fit(lora, method, enc["mood"], 1, "mood", loaded)
    assert lora.adapters == ["task0", "task1"]
    after = logits(lora.model, probe)
    assert not torch.allclose(before, after), "the new adapter should change the function"
    for n, p in lora.model.named_parameters():  # frozen parameters are bit-identical
        if n in old:
            assert torch.equal(p, old[n]), n
        if n in base:
            assert torch.equal(p, base[n]), n
    with torch.no_grad():  # zero the new adapter: the function is exactly that before task 2
        for f in lora.factors("task1"):
            f.B.zero_()
    assert torch.equal(logits(lora.model, probe), before)

    # PEFT alone reloads the saved adapter and gives the same function
    fresh = load_model(str(model_dirs[model_kind])).model
    peft_model = PeftModel.from_pretrained(fresh, str(tmp_path / "task0"))
    torch.testing.assert_close(logits(peft_model, probe), before, rtol=1e-5, atol=1e-6)


def test_only_current_adapter_trains(model_dirs, data_dir):
    loaded, lora, enc, method = setup(model_dirs, "llama", data_dir)
    lora.start_adapter("task0")
    lora.start_adapter("task1")
    names = [n for n, p in lora.model.named_parameters() if p.requires_grad]
    assert names and all(".task1." in n for n in names)
    assert lora.model.base_model.active_adapters == ["task0", "task1"]


def test_seq_lora_keeps_one_adapter(model_dirs, data_dir):
    loaded, lora, enc, method = setup(model_dirs, "t5", data_dir, method="seq-lora")
    fit(lora, method, enc["topic"], 0, "topic", loaded)
    first = {n: p.detach().clone() for n, p in lora.model.named_parameters() if p.requires_grad}
    fit(lora, method, enc["mood"], 1, "mood", loaded)
    assert lora.adapters == ["seq"]
    assert any(not torch.equal(p, first[n]) for n, p in lora.model.named_parameters() if n in first)


def test_reference_form_refused_for_gqa(model_dirs, data_dir):
    loaded, lora, enc, _ = setup(model_dirs, "llama", data_dir)
    cfg = resolve(overrides={"model": "m", "data_dir": "d", "output_dir": "o", "task_names": ["a"],
                             "nlora_form": "reference"})
    from nlora.errors import NloraError

    with pytest.raises(NloraError, match=r"v_proj is 16 x 32 .*grouped-query"):
        get_method("n-lora")(cfg).begin_task(lora, 0, cfg.tasks[0])
