"""Provenance of a stored tree: which tokenizer its token ids belong to, which policy sampled it.

Every tree records both (`trees.tokenizer_hash`, `trees.policy_version`):

- **tokenizer**: `tokenizer_fingerprint`, 16 hex digits of a SHA-256 over the vocabulary (every
  token string and its id, added and special tokens included) and the chat template. Two
  tokenizers with the same fingerprint map every id to the same token and render prompts alike.
  Trees stored before revision 0003 have none (NULL): "unknown".
- **policy**: `MODEL@WEIGHTS` where WEIGHTS is 12 hex digits of a fingerprint of the safetensors
  files (`treerpo.engines.loading.policy_version`); a copy of a checkpoint keeps it, any optimizer
  step changes it. Two versions name the same policy when their WEIGHTS agree, whatever path the
  model was given by. Chained training grows its first batch with the base model (its version)
  and batch b > 0 after b x num_iterations optimizer steps, recorded as `RUN@step-N`: no saved
  weights match it, so replaying those trees is off-policy, which they are.

Replay (`treerpo train` without `--dataset`) calls `check_replay_provenance` before it scores or
writes anything: trees of another tokenizer are refused outright (their ids mean other tokens to
the trained model), trees of another policy unless `--allow-off-policy`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from treerpo.errors import BadInputError

_WEIGHTS_FINGERPRINT = re.compile(r"@([0-9a-f]{12})$")


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """16 hex digits identifying the tokenizer's vocabulary and chat template."""
    digest = hashlib.sha256()
    vocabulary = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    digest.update(json.dumps(vocabulary, ensure_ascii=False).encode())
    template = getattr(tokenizer, "chat_template", None)
    digest.update(json.dumps(template, sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()[:16]


def policy_identity(policy_version: str) -> str:
    """What makes two policy versions the same policy: the weights fingerprint when there is one
    (`MODEL@0123456789ab`), else the whole version string (`RUN@step-N`, hand-made labels)."""
    match = _WEIGHTS_FINGERPRINT.search(policy_version)
    return match.group(1) if match else policy_version


@dataclass(frozen=True)
class TreeProvenance:
    """What replay needs to know about a stored tree before training on it."""

    tree_id: int
    run_name: str
    tokenizer_hash: str | None
    policy_version: str


def _runs_with_counts(trees: Sequence[TreeProvenance]) -> str:
    counts = Counter(tree.run_name for tree in trees)
    return ", ".join(f"{name} ({count} tree{'s' if count != 1 else ''})"
                     for name, count in sorted(counts.items()))


def check_replay_provenance(
    *,
    trees: Sequence[TreeProvenance],
    tokenizer_hash: str,
    policy_version: str,
    model: str,
    allow_off_policy: bool,
) -> list[str]:
    """Refuse trees the model being trained cannot replay; return the warnings to print.

    Raises `BadInputError` (one line naming the runs) when a tree was tokenized by another
    tokenizer, or grown by another policy without `allow_off_policy`.
    """
    foreign = [tree for tree in trees
               if tree.tokenizer_hash is not None and tree.tokenizer_hash != tokenizer_hash]
    if foreign:
        raise BadInputError(
            f"refusing to replay trees of another tokenizer than {model}'s "
            f"(tokenizer {tokenizer_hash}): {_runs_with_counts(foreign)}; their token ids mean "
            "other tokens to this model. Train the model that grew them, or choose runs with "
            "--run (`treerpo runs` lists them)")
    warnings = []
    unknown = [tree for tree in trees if tree.tokenizer_hash is None]
    if unknown:
        warnings.append(
            f"warning: {len(unknown)} of {len(trees)} trees were stored before treerpo recorded "
            f"their tokenizer, not checked against {model}'s: {_runs_with_counts(unknown)}")
    identity = policy_identity(policy_version)
    off_policy = [tree for tree in trees if policy_identity(tree.policy_version) != identity]
    if off_policy:
        share = len(off_policy) / len(trees)
        where = (f"{len(off_policy)} of {len(trees)} trees ({share:.0%}) were grown by another "
                 f"policy than {model} ({policy_version}): {_runs_with_counts(off_policy)}")
        if not allow_off_policy:
            raise BadInputError(
                f"refusing to train off-policy: {where}. Pass --allow-off-policy to train on "
                "them anyway, or choose runs with --run (`treerpo runs` lists them)")
        warnings.append(f"warning: training off-policy (--allow-off-policy): {where}")
    return warnings
