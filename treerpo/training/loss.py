"""The TreeRPO policy loss: a PPO-clipped surrogate over tree tokens, averaged per sibling group.

Algorithm (DESIGN step 10). Every token of a non-root node c carries c's advantage A (value(c)
minus the mean value of c and its siblings). For each such token,

    ratio    = exp(logp_new - logp_behaviour)
    loss_tok = -min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon_high) * A)
             + beta * (exp(logp_ref - logp_new) - (logp_ref - logp_new) - 1)      # only if beta > 0

and the batch loss is, with `aggregation="group"` (the default), the token mean within each
sibling group (all tokens of all children of one parent), then the mean over groups; with
`aggregation="token"`, one mean over all tokens of the batch; with `aggregation="leaf"`, the
token mean within each group, then the mean over groups weighted by each group's visitation share
v_g = (leaves below the group's parent) / (leaves of its tree):

    loss = sum_g v_g * tokenmean_g / sum_g v_g

Training on every root-to-leaf path with its segments' advantages visits group g once per leaf
below its parent, so v_g is the policy-gradient weight of the state the group branches from: the
decisive early groups (the root's: v = 1) weigh more than deep ones, which "group" gives one
vote each. For a flat tree (one group) all three coincide up to the token weighting.

The logprobs are all the same transform: log_softmax(logits / logprob_temperature) of the model,
gathered at the token, in float32. That is what the engines store as behaviour logprobs (before
any sampling transform: repetition penalty, sampling temperature, top-k/top-p), so the ratio of an
unchanged policy is 1 up to numerical noise.

Departures from the textbook, on purpose:

- Advantages are sibling-relative means with **no std scaling** (Dr. GRPO-style; a group whose
  children all agree has advantage 0 and contributes neither loss nor gradient).
- **No KL term by default** (`beta=0`, no reference model loaded). When on, it is the k3 estimator
  of KL(new || ref) per token, aggregated like the surrogate, not a penalty folded into rewards.
- **Group mean, not sequence mean**: a sibling group weighs the same whatever its token count, and
  within a group longer segments weigh more by token count (GRPO averages per sequence first).
- Clipping may be asymmetric (`epsilon_high`, "clip-higher"); it defaults to `epsilon`.
- Tokens of nodes without an advantage (a single child: no sibling to compare with) carry no
  signal and are not trained: the caller drops them before calling `ppo_tree_loss`.

For micro-batches (one backward per pack), compute `aggregation_weights` over the whole batch and
pass each micro-batch its slice as `token_weights`: the per-micro-batch losses then sum to the
batch loss.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Aggregation = Literal["group", "token", "leaf"]
AGGREGATIONS = ("group", "token", "leaf")


def aggregation_weights(
    *, group_ids: Tensor, aggregation: Aggregation, group_visits: Tensor | None = None
) -> Tensor:
    """Per-token weights that sum to 1 and turn per-token losses into the batch loss.

    "group": 1 / (num_groups * tokens in the token's group); "token": 1 / num_tokens;
    "leaf": v_g / (sum of v over groups * tokens in the group), where `group_visits` (N,) gives
    each token its group's visitation share v_g (the same value for every token of a group).
    """
    num_tokens = group_ids.shape[0]
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    if aggregation == "token":
        return torch.full((num_tokens,), 1.0 / max(num_tokens, 1), device=group_ids.device)
    _, group_index, group_sizes = torch.unique(
        group_ids, return_inverse=True, return_counts=True
    )  # (N,), (G,)
    tokens_in_group = group_sizes[group_index].to(torch.float32)  # (N,)
    if aggregation == "group":
        return 1.0 / (group_sizes.shape[0] * tokens_in_group)  # (N,)
    if group_visits is None:
        raise ValueError("aggregation 'leaf' needs group_visits")
    visits = group_visits.to(device=group_ids.device, dtype=torch.float32)  # (N,)
    per_group_visit = torch.zeros(group_sizes.shape[0], device=group_ids.device)  # (G,)
    per_group_visit.scatter_(0, group_index, visits)  # every token of a group writes the same v
    total_visit = per_group_visit.sum()
    if total_visit <= 0:
        raise ValueError("aggregation 'leaf' needs a group with a positive visitation share")
    return visits / (total_visit * tokens_in_group)  # (N,)


def ppo_tree_loss(
    *,
    new_logprobs: Tensor,
    behaviour_logprobs: Tensor,
    advantages: Tensor,
    group_ids: Tensor,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    aggregation: Aggregation = "group",
    ref_logprobs: Tensor | None = None,
    beta: float = 0.0,
    token_weights: Tensor | None = None,
    group_visits: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The clipped surrogate (plus optional k3 KL) over N trained tokens; see the module docstring.

    All tensors are (N,) and aligned: `new_logprobs` carries the gradient, the others are data.
    `group_ids` names each token's sibling group (its node's parent, unique across trees).
    `token_weights` (N,), when given, replaces the aggregation (see `aggregation_weights`).
    `group_visits` (N,) is each token's group visitation share, needed by `aggregation="leaf"`.

    Returns the scalar loss and float metrics: `clip_fraction` (share of tokens whose gradient the
    clip removes: ratio > 1 + epsilon_high with A > 0, or ratio < 1 - epsilon with A < 0),
    `ratio_mean`, `ratio_max`, `ratio_min`, `advantage_mean`, `kl` (token mean, only when beta > 0),
    `num_tokens` and `num_groups`. With N = 0 the loss is a zero still attached to the graph.
    """
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    if not 0.0 < epsilon < 1.0 or epsilon_high <= 0.0:
        raise ValueError(
            f"need 0 < epsilon < 1 and epsilon_high > 0, got {epsilon} and {epsilon_high}"
        )
    if beta < 0.0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta > 0.0 and ref_logprobs is None:
        raise ValueError("beta > 0 needs ref_logprobs from the frozen reference model")
    shape = new_logprobs.shape
    aligned = [behaviour_logprobs, advantages, group_ids]
    aligned += [t for t in (ref_logprobs, token_weights, group_visits) if t is not None]
    if len(shape) != 1 or any(t.shape != shape for t in aligned):
        raise ValueError("all per-token tensors must be 1-D and of the same length")

    num_tokens = shape[0]
    if num_tokens == 0:
        return new_logprobs.sum() * 0.0, _empty_metrics(beta=beta)

    new_logprobs = new_logprobs.float()  # (N,)
    behaviour_logprobs = behaviour_logprobs.to(new_logprobs)  # (N,)
    advantages = advantages.to(new_logprobs)  # (N,)
    ratio = torch.exp(new_logprobs - behaviour_logprobs)  # (N,)
    clipped_ratio = torch.clamp(ratio, 1.0 - epsilon, 1.0 + epsilon_high)  # (N,)
    per_token = -torch.minimum(ratio * advantages, clipped_ratio * advantages)  # (N,)

    kl = None
    if beta > 0.0:
        ref_minus_new = ref_logprobs.to(new_logprobs) - new_logprobs  # (N,)
        kl = torch.exp(ref_minus_new) - ref_minus_new - 1.0  # (N,)
        per_token = per_token + beta * kl  # (N,)

    if token_weights is None:
        token_weights = aggregation_weights(group_ids=group_ids, aggregation=aggregation,
                                            group_visits=group_visits)
    loss = (token_weights.to(per_token) * per_token).sum()

    with torch.no_grad():
        clipped = ((ratio > 1.0 + epsilon_high) & (advantages > 0)) | (
            (ratio < 1.0 - epsilon) & (advantages < 0)
        )  # (N,)
        metrics = {
            "clip_fraction": clipped.float().mean().item(),
            "ratio_mean": ratio.mean().item(),
            "ratio_max": ratio.max().item(),
            "ratio_min": ratio.min().item(),
            "advantage_mean": advantages.mean().item(),
            "num_tokens": float(num_tokens),
            "num_groups": float(torch.unique(group_ids).shape[0]),
        }
        if kl is not None:
            metrics["kl"] = kl.mean().item()
    return loss, metrics


def _empty_metrics(*, beta: float) -> dict[str, float]:
    metrics = {
        "clip_fraction": 0.0,
        "ratio_mean": 1.0,
        "ratio_max": 1.0,
        "ratio_min": 1.0,
        "advantage_mean": 0.0,
        "num_tokens": 0.0,
        "num_groups": 0.0,
    }
    if beta > 0.0:
        metrics["kl"] = 0.0
    return metrics
