"""Check a model before anything is loaded or written: its files, and the flags that depend on it.

A model folder that cannot load fails deep inside transformers with an error that names neither
the file nor the remedy (a truncated `model.safetensors` is an `unexpected SafetensorError`, a
`config.json` whose sizes disagree with the weights a `RuntimeError` about
`ignore_mismatched_sizes`). `check_model` reads only small things (config.json, the tokenizer's
presence, each safetensors header, a weightless "meta" copy of the architecture for the expected
shapes) and turns each such failure into one `BadInputError` line naming the file. It returns the
model's limits, which `check_growth_fits_model` compares with the growth and sampling flags
(`--max-new-tokens` against the context length, `--entropy-topk`, `--top-k` and
`--root-children` against the vocabulary): a command runs both before it opens the store.

A hub id that is not in the local cache is not checked here (loading reports it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from treerpo.errors import BadInputError

# Files one of which every loadable tokenizer folder has.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass(frozen=True)
class ModelLimits:
    """What the model's config allows: positions (context length) and vocabulary size."""

    max_positions: int | None
    vocab_size: int | None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _local_folder(model: str) -> Path | None:
    from treerpo.engines.loading import check_model_reference

    path = check_model_reference(model, require_weights=False)  # a missing folder: exit 2
    if path is not None:
        return path
    from huggingface_hub import snapshot_download

    try:  # a hub id already in the cache: check its files too
        return Path(snapshot_download(model, local_files_only=True,
                                      allow_patterns=["*.json", "*.safetensors", "*.model"]))
    except Exception:  # noqa: BLE001 - not cached (or not a hub id): loading reports it
        return None


def _read_config(folder: Path) -> dict:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise BadInputError(f"model folder {folder} has no config.json")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInputError(f"{config_file} is not readable JSON ({_first_line(error)})") from error
    if not isinstance(config, dict):
        raise BadInputError(f"{config_file} is not a JSON object")
    return config


def _safetensors_shapes(weight_file: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weight_file), framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise BadInputError(
            f"{weight_file} is not a readable safetensors file ({_first_line(error)}); "
            "re-download or re-save the model") from error


def _expected_shapes(folder: Path, *, trust_remote_code: bool) -> dict[str, tuple[int, ...]]:
    """The parameter shapes config.json implies, from a weightless (meta-device) model; {} when
    the architecture cannot be built here (loading reports why)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 - unknown or remote-code architectures: no shape check
        return {}
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def check_model(
    model: str, *, trust_remote_code: bool = False, max_new_tokens: int | None = None
) -> ModelLimits:
    """Refuse a local (or cached) model whose files cannot load, naming the file, or a
    `max_new_tokens` beyond its context; return its limits. Reads headers only: fast on
    multi-GB checkpoints."""
    limits = _check_model_files(model, trust_remote_code=trust_remote_code)
    if max_new_tokens is not None:
        check_growth_fits_model(limits=limits, max_new_tokens=max_new_tokens)
    return limits


def check_model_for_growth(*, engine, tree=None, sampling=None) -> ModelLimits:
    """`check_model` for a command that grows trees with `engine` (an `EngineConfig`), `tree`
    (`TreeSettings`, None when it grows none) and `sampling` (`SamplingConfig`)."""
    limits = check_model(engine.model, trust_remote_code=engine.trust_remote_code)
    if tree is not None:
        check_growth_fits_model(
            limits=limits, max_new_tokens=tree.max_new_tokens, entropy_topk=tree.entropy_topk,
            top_k=None if sampling is None else sampling.top_k,
            root_children=tree.resolved_root_children)
    return limits


def _check_model_files(model: str, *, trust_remote_code: bool) -> ModelLimits:
    folder = _local_folder(model)
    if folder is None:
        return ModelLimits(max_positions=None, vocab_size=None)
    config = _read_config(folder)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise BadInputError(
            f"model folder {folder} has no tokenizer ({' / '.join(TOKENIZER_FILES[:2])}): copy "
            "the tokenizer files of the model it was trained from into it")
    weight_files = sorted(folder.glob("*.safetensors"))
    if not weight_files:
        raise BadInputError(f"model {model} has no .safetensors weights "
                            "(treerpo loads only safetensors)")
    stored = {}
    for weight_file in weight_files:
        stored.update({name: (weight_file, shape)
                       for name, shape in _safetensors_shapes(weight_file).items()})
    expected = _expected_shapes(folder, trust_remote_code=trust_remote_code)
    for name, (weight_file, shape) in stored.items():
        if name in expected and expected[name] != shape:
            raise BadInputError(
                f"{weight_file}: tensor {name} has shape {list(shape)} but "
                f"{folder / 'config.json'} implies {list(expected[name])}; config.json does not "
                "belong to these weights")
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    positions = next((value for key in ("max_position_embeddings", "n_positions", "max_seq_len")
                      for value in (config.get(key), text_config.get(key))
                      if isinstance(value, int) and value > 0), None)
    vocab = next((value for value in (config.get("vocab_size"), text_config.get("vocab_size"))
                  if isinstance(value, int) and value > 0), None)
    return ModelLimits(max_positions=positions, vocab_size=vocab)


def check_growth_fits_model(
    *,
    limits: ModelLimits,
    max_new_tokens: int,
    entropy_topk: int | None = None,
    top_k: int | None = None,
    root_children: int | None = None,
) -> None:
    """Refuse token budgets beyond the model's context and counts beyond its vocabulary (a
    `--max-new-tokens 2**40` would otherwise try to allocate terabytes)."""
    if limits.max_positions is not None and max_new_tokens >= limits.max_positions:
        raise BadInputError(
            f"--max-new-tokens {max_new_tokens} does not fit the model's context of "
            f"{limits.max_positions} positions (max_position_embeddings) with a prompt: use at "
            f"most {limits.max_positions - 1}")
    if limits.vocab_size is None:
        return
    for flag, value in (("--entropy-topk", entropy_topk), ("--top-k", top_k),
                        ("--root-children", root_children)):
        if value is not None and value > limits.vocab_size:
            raise BadInputError(f"{flag} {value} is larger than the model's vocabulary "
                                f"({limits.vocab_size} tokens)")
