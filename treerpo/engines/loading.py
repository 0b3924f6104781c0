"""Load a policy and its tokenizer from a local folder or the Hugging Face hub, safely.

Only safetensors weights are ever loaded (`use_safetensors=True`: a pickled `pytorch_model.bin`
can run code on load), and `trust_remote_code` is off unless the user asks for it. Every way a
model can fail to load becomes one `BadInputError` line that names the model.

`resolve_attn_implementation` picks the attention kernel: "auto" is FlexAttention (block-sparse
tree mask) for training on CUDA, treerpo's "tree" attention (`treerpo.engines.tree_attention`)
for training on CPU, and sdpa for generation, where nothing is packed.

`policy_version` gives a checkpoint a short content fingerprint for provenance: the trees in the
store record which weights sampled them.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Literal

import torch

from treerpo.errors import BadInputError

TorchDtypeName = Literal["auto", "bfloat16", "float16", "float32"]
AttnImplementationName = Literal["auto", "tree", "flex_attention", "sdpa", "eager"]
ATTN_IMPLEMENTATIONS = ("auto", "tree", "flex_attention", "sdpa", "eager")

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# `org/name` or `name`, as the hub spells repository ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# Bytes read per weight file by `policy_version`: the header and evenly spaced chunks of the data.
_FINGERPRINT_HEAD_BYTES = 1 << 20
_FINGERPRINT_CHUNKS = 16
_FINGERPRINT_CHUNK_BYTES = 1 << 16


def resolve_dtype(torch_dtype: TorchDtypeName, *, device: str | torch.device) -> torch.dtype:
    """`auto` = bfloat16 on a GPU that supports it, else float32 (CPU, or a GPU without bf16)."""
    if torch_dtype != "auto":
        if torch_dtype not in _DTYPES:
            raise BadInputError(
                f"unknown dtype {torch_dtype!r}: use auto, bfloat16, float16 or float32"
            )
        return _DTYPES[torch_dtype]
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def resolve_attn_implementation(
    attn_implementation: AttnImplementationName, *, device: str | torch.device, training: bool
) -> str:
    """The attention implementation a model is loaded with (module docstring for "auto")."""
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise BadInputError(
            f"unknown attention implementation {attn_implementation!r}: use "
            + ", ".join(ATTN_IMPLEMENTATIONS)
        )
    device = torch.device(device)
    if attn_implementation == "flex_attention" and device.type != "cuda":
        raise BadInputError(
            "--attn-implementation flex_attention needs a CUDA GPU (torch's FlexAttention has no "
            "CPU backward); use tree on CPU"
        )
    if attn_implementation != "auto":
        return attn_implementation
    if not training:
        return "sdpa"
    return "flex_attention" if device.type == "cuda" else "tree"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_model_reference(model: str, *, require_weights: bool = True) -> Path | None:
    """The local folder `model` names, None for a hub id; BadInputError when it is neither."""
    path = Path(model).expanduser()
    if path.is_dir():
        if require_weights and not any(path.glob("*.safetensors")):
            raise BadInputError(
                f"model {model} has no .safetensors weights (treerpo loads only safetensors)"
            )
        return path
    if path.exists():
        raise BadInputError(f"model {model} is a file, not a model folder or hub id")
    if not _HUB_ID.match(model) or model.startswith((".", "~")):
        raise BadInputError(f"model {model} not found: no such folder, and not a hub id")
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_tokenizer(model: str, *, trust_remote_code: bool = False):
    """The model's tokenizer (`AutoTokenizer`), or BadInputError naming the model."""
    from transformers import AutoTokenizer

    check_model_reference(model, require_weights=False)
    try:
        return AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise BadInputError(
            f"cannot load the tokenizer of {model}: {_first_line(error)}"
        ) from error


def _dtype_keyword() -> str:
    """transformers >= 4.56 takes `dtype=` and warns on the older `torch_dtype=`."""
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def load_policy(
    model: str,
    *,
    torch_dtype: TorchDtypeName = "auto",
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    attn_implementation: AttnImplementationName = "auto",
    training: bool = False,
):
    """An `AutoModelForCausalLM` from safetensors weights, on `device`, in eval mode.

    `training` says what "auto" attention resolves to (`resolve_attn_implementation`)."""
    from transformers import AutoModelForCausalLM

    from treerpo.engines.tree_attention import register_tree_attention

    check_model_reference(model)
    device = torch.device(device or default_device())
    dtype = resolve_dtype(torch_dtype, device=device)
    attention = resolve_attn_implementation(attn_implementation, device=device,
                                            training=training)
    register_tree_attention()
    try:
        policy = AutoModelForCausalLM.from_pretrained(
            model,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            attn_implementation=attention,
            **{_dtype_keyword(): dtype},
        )
    except (OSError, ValueError) as error:
        raise BadInputError(f"cannot load model {model}: {_first_line(error)}") from error
    except RuntimeError as error:  # config.json's sizes disagree with the weights
        if "size mismatch" not in str(error):
            raise
        raise BadInputError(f"cannot load model {model}: its config.json does not match its "
                            f"weights ({_first_line(error)})") from error
    return policy.to(device).eval()


def eos_token_ids(tokenizer, generation_config=None) -> tuple[int, ...]:
    """Every id that ends a sequence: the tokenizer's EOS and the generation config's EOS ids."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    config_ids = getattr(generation_config, "eos_token_id", None)
    if isinstance(config_ids, int):
        ids.add(config_ids)
    elif config_ids is not None:
        ids.update(int(token_id) for token_id in config_ids)
    return tuple(sorted(ids))


def load_generation_config(model: str):
    """The model's `GenerationConfig` when it has one, else None (it is optional)."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model)
    except OSError:
        return None


def _weight_files(model: str) -> list[Path]:
    folder = check_model_reference(model)
    if folder is None:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(
                snapshot_download(model, allow_patterns=["*.safetensors"], local_files_only=True)
            )
        except (OSError, ValueError) as error:
            raise BadInputError(
                f"cannot find the weights of {model} offline: {_first_line(error)}"
            ) from error
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise BadInputError(f"model {model} has no .safetensors weights")
    return files


def policy_version(model: str) -> str:
    """`model@<12 hex digits>`: a fingerprint of the safetensors weight files' contents.

    Cheap on multi-GB checkpoints: it hashes each file's name, size, header (tensor names, dtypes,
    shapes) and a few evenly spaced chunks of its data. An optimizer step changes nearly every
    weight, so any two checkpoints of a run differ in the sampled chunks; a copy of a checkpoint
    keeps its fingerprint.
    """
    digest = hashlib.sha256()
    for weight_file in _weight_files(model):
        size = weight_file.stat().st_size
        digest.update(f"{weight_file.name}:{size}".encode())
        with weight_file.open("rb") as handle:
            digest.update(handle.read(_FINGERPRINT_HEAD_BYTES))
            stride = max(size // _FINGERPRINT_CHUNKS, 1)
            for offset in range(0, size, stride):
                handle.seek(offset)
                digest.update(handle.read(_FINGERPRINT_CHUNK_BYTES))
    return f"{model}@{digest.hexdigest()[:12]}"
