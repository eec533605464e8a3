"""Fast training paths against the plain one: torch.compile gives the same updates."""

import shutil

import pytest
import torch

from nlora.adapters import ContinualLoRA
from nlora.batching import encode
from nlora.config import LoraSettings, TaskSettings, resolve
from nlora.data import load_tasks
from nlora.methods import get_method
from nlora.models import default_target_modules, load_model
from nlora.prompts import load_instructions
from nlora.train import train_task


def trained_adapter(model_dirs, data_dir, compile_model):
    loaded = load_model(str(model_dirs["llama"]))
    lora = ContinualLoRA(loaded.model, LoraSettings(dropout=0.0), default_target_modules(loaded.model), False)
    cfg = resolve(
        overrides={
            "model": "m",
            "data_dir": "d",
            "output_dir": "o",
            "task_names": ["topic"],
            "method": "n-lora",
            "lambda": 0.01,
        }
    )
    method = get_method("n-lora")(cfg)
    tasks = load_tasks(data_dir, ["topic"], load_instructions(), 12, 4, 0)
    data = encode(loaded.tokenizer, tasks["topic"].splits["train"], False, 256, 8)
    settings = TaskSettings(name="topic", lr=1e-2, epochs=1, batch_size=4, grad_accum=1, lam=0.01)
    torch.manual_seed(0)
    method.begin_task(lora, 0, settings)
    stats = train_task(
        lora,
        method,
        data,
        settings,
        pad_id=0,
        seq2seq=False,
        device=torch.device("cpu"),
        amp_dtype=None,
        seed=0,
        compile_model=compile_model,
    )
    return {n: p.detach().clone() for n, p in lora.model.named_parameters() if "lora_" in n}, stats


@pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile on CPU needs a C compiler")
def test_compiled_training_matches_eager(model_dirs, data_dir):
    eager, s1 = trained_adapter(model_dirs, data_dir, False)
    compiled, s2 = trained_adapter(model_dirs, data_dir, True)
    assert s1.steps == s2.steps == 3
    assert s2.mean_loss == pytest.approx(s1.mean_loss, rel=1e-4)
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-4, atol=1e-5)
