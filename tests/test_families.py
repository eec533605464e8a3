"""Model families: chosen from the model's config at load time; a hub architecture nlora has no entry for gets
its family from ``is_encoder_decoder`` and its LoRA targets from PEFT's table."""

import pytest
import torch

from nlora.batching import collate_train, encode
from nlora.data import Example
from nlora.families import DECODER_ONLY, ENCODER_DECODER, as_family, family_of
from nlora.models import QUERY_VALUE, check_target_modules, default_target_modules, load_model, peft_target_modules
from nlora.runtime import Runtime


@pytest.mark.parametrize("kind,family", [("t5", ENCODER_DECODER), ("llama", DECODER_ONLY)])
def test_tiny_models_get_their_family(model_dirs, kind, family):
    loaded = load_model(str(model_dirs[kind]))
    assert loaded.family is family
    assert family_of(loaded.model) is family and family_of(loaded.model.config) is family
    assert loaded.seq2seq is family.encoder_decoder


def test_old_seq2seq_flags_name_the_same_families(model_dirs):
    """Callers that still pass True / False get exactly what the family objects give."""
    assert as_family(True) is ENCODER_DECODER and as_family(False) is DECODER_ONLY
    loaded = load_model(str(model_dirs["llama"]))
    examples = [Example("Task:TC\nsentence one\nAnswer:", "World"), Example("Task:TC\ntwo\nAnswer:", "Sports")]
    by_flag = encode(loaded.tokenizer, examples, False, 64, 8)
    by_family = DECODER_ONLY.encode(loaded.tokenizer, examples, 64, 8)
    assert [(e.source, e.target) for e in by_flag] == [(e.source, e.target) for e in by_family]
    for key, value in collate_train(by_flag, 0, False).items():
        assert torch.equal(value, DECODER_ONLY.collate_train(by_family, 0)[key])


def test_padding_side_follows_the_family(model_dirs):
    loaded = load_model(str(model_dirs["t5"]))
    rt = Runtime(loaded.tokenizer, loaded.family, torch.device("cpu"), max_source=64, max_target=8)
    prompts = rt.encode_prompts(["Task:TC\nshort\nAnswer:", "Task:TC\na much longer sentence here\nAnswer:"])
    right = ENCODER_DECODER.collate_prompts(prompts, 0)["attention_mask"]
    left = DECODER_ONLY.collate_prompts(prompts, 0)["attention_mask"]
    assert right[0, 0] == 1 and right[0, -1] == 0  # encoder inputs padded on the right
    assert left[0, 0] == 0 and left[0, -1] == 1  # decoder prompts padded on the left: generation continues them


def _tiny_gpt_neo():
    """A decoder-only architecture nlora's own table does not list (PEFT's does: q_proj, v_proj)."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(0)
    config = GPTNeoConfig(
        vocab_size=64,
        hidden_size=16,
        num_layers=2,
        num_heads=2,
        attention_types=[[["global"], 2]],
        max_position_embeddings=32,
    )
    return GPTNeoForCausalLM(config)


def test_unknown_decoder_architecture_gets_the_decoder_family_and_peft_targets():
    model = _tiny_gpt_neo()
    assert model.config.model_type not in QUERY_VALUE
    assert family_of(model) is DECODER_ONLY
    targets = default_target_modules(model)
    assert targets == peft_target_modules("gpt_neo") == ["q_proj", "v_proj"]
    check_target_modules(model, targets)  # names real linear layers of the model


def test_peft_table_is_consulted_only_where_nlora_has_no_entry():
    class Stub(torch.nn.Module):
        def __init__(self, model_type):
            super().__init__()
            self.config = type("C", (), {"model_type": model_type, "is_encoder_decoder": False})()
            self.query_key_value = torch.nn.Linear(2, 2)

    assert default_target_modules(Stub("bloom")) == peft_target_modules("bloom") == ["query_key_value"]
    assert default_target_modules(Stub("falcon")) == ["query_key_value"]
    for model_type in ("t5", "llama", "gpt2", "phi"):  # nlora's own choice stays (phi: PEFT adds fc1, fc2)
        assert default_target_modules(Stub(model_type)) == QUERY_VALUE[model_type]
    assert family_of(Stub("bloom")) is DECODER_ONLY
