"""`treerpo bench replay`: the tree-packed update against two replays of the same trees.

All three compute the same TreeRPO loss and gradient on the same scored, seed-shaped synthetic
trees (a ~200-token prompt, depth up to 7, ~150-token segments, coverage children) with the same
random Qwen2 model, then backpropagate:

- `packed`: every unique token forwarded once, one packed sequence per tree, attention through
  the tree mask with the chosen implementation ("tree" on CPU, FlexAttention on CUDA: cost
  follows what each token sees);
- `paths`: the fair baseline (`treerpo.training.paths_replay`): every root-to-leaf path in one
  right-padded sdpa batch, LM head only at trained positions, optionally length-bucketed
  micro-batches. Path tokens / unique tokens is the limit of any packing's speed-up;
- `groups`: the per-sibling-group replay (`treerpo.training.naive`): each child re-forwarded with
  its whole prefix, a full log-softmax at every position, one backward per group.

The model has Qwen2.5-0.5B's proportions (head dim 64, 2 KV heads, MLP 5.5x wide) at width 512,
8 layers and a 32,000-token vocabulary by default, so the decoder, not the LM head, is most of
the work, as in real models. Its final norm is scaled so that its logits have a standard
deviation of about `logit_std` (a random model's logits are nearly flat, which would hide
numerical differences in the logprobs).

Timing: `rounds` rounds, each running every method once, in an order rotated by one each round
(so no method always runs first or after the same neighbour); each method's wall time and
process CPU time are the median over rounds, and its peak memory is the largest over rounds
(`treerpo.bench.peak_memory`: sampled RSS above the start on CPU, the allocator's peak on CUDA).
Exactness is checked in float32 without autocast: the packed logprob of every trained token
against the same token's logprob on its own root-to-leaf path, and the cosine between the
packed gradient and each baseline's.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from treerpo.bench.peak_memory import measure_peak_memory, release_freed_memory
from treerpo.bench.synthetic import synthetic_tree
from treerpo.engines.loading import resolve_attn_implementation
from treerpo.engines.tree_attention import register_tree_attention
from treerpo.errors import BadInputError
from treerpo.scoring.values import apply_scores
from treerpo.tiny_model import build_random_model, build_tokenizer
from treerpo.training.naive import naive_tree_update
from treerpo.training.packed_forward import packed_token_logprobs, packed_tree_loss
from treerpo.training.packing import pack_tree
from treerpo.training.paths_replay import path_rows, path_token_logprobs, paths_update
from treerpo.trees import Tree

METHODS = ("packed", "paths", "groups")


@dataclass
class MethodMeasurement:
    wall_seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    peak_mb: list[float] = field(default_factory=list)

    @property
    def median_wall(self) -> float:
        return statistics.median(self.wall_seconds)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu_seconds)

    @property
    def max_peak_mb(self) -> float:
        return max(self.peak_mb)


@dataclass
class ReplayBenchResult:
    device: str
    attn_implementation: str
    autocast: str  # "none" or the autocast dtype
    num_trees: int
    num_nodes: int
    num_layers: int
    hidden_size: int
    vocab_size: int
    logit_std: float
    unique_tokens: int
    packed_tokens: int
    path_tokens: int
    groups_tokens: int
    attended_share: float  # tree attention: pairs computed / L^2 (0 when not "tree")
    rounds: int
    measurements: dict[str, MethodMeasurement]
    max_abs_logprob_diff: float
    max_path_tokens: int
    grad_cosine_paths: float
    grad_cosine_groups: float

    def speedup(self, baseline: str, *, clock: str = "wall") -> float:
        def seconds(method: str) -> float:
            measured = self.measurements[method]
            return measured.median_wall if clock == "wall" else measured.median_cpu
        return seconds(baseline) / seconds("packed")

    @property
    def token_ratio_limit(self) -> float:
        return self.path_tokens / self.unique_tokens

    @property
    def efficiency(self) -> float:
        return self.speedup("paths") / self.token_ratio_limit

    @property
    def grad_cosine(self) -> float:
        return min(self.grad_cosine_paths, self.grad_cosine_groups)

    def json_fields(self) -> dict[str, float]:
        """The `--json` line: exactly the issue's keys (wall-clock speed-ups)."""
        return {
            "speedup_vs_paths": round(self.speedup("paths"), 3),
            "speedup_vs_groups": round(self.speedup("groups"), 3),
            "token_ratio_limit": round(self.token_ratio_limit, 3),
            "efficiency": round(self.efficiency, 3),
            "max_abs_logprob_diff": self.max_abs_logprob_diff,
            "grad_cosine": self.grad_cosine,
            "packed_peak_mb": round(self.measurements["packed"].max_peak_mb, 1),
            "paths_peak_mb": round(self.measurements["paths"].max_peak_mb, 1),
        }


def _scored_trees(*, num_trees: int, tree_nodes: int, prompt_len: int, segment_len: int,
                  vocab_size: int, rng: np.random.Generator) -> list[Tree]:
    """Seed-shaped trees with random leaf rewards. Behaviour logprobs are filled in later from
    the model itself, so the ratio starts at 1 as after generation."""
    trees = []
    for _ in range(num_trees):
        tree = synthetic_tree(rng=rng, num_nodes=tree_nodes, prompt_len=prompt_len,
                              segment_len=segment_len, vocab_size=vocab_size)
        apply_scores(tree, {leaf.index: float(rng.random() < 0.5) for leaf in tree.leaves()})
        trees.append(tree)
    return trees


def _set_behaviour_logprobs(*, model, trees: list[Tree]) -> None:
    with torch.no_grad():
        rows = path_rows(trees=trees)
        logprobs = path_token_logprobs(model=model, rows=rows).cpu().numpy()
    start = 0
    for row in rows:
        end = start + len(row.target_ids)
        tree = trees[row.tree_index]
        for node, offset, value in zip(row.nodes, row.offsets, logprobs[start:end], strict=True):
            tree.nodes[int(node)].logprobs[int(offset)] = value
        start = end


def _groups_tokens(tree: Tree) -> int:
    """Tokens the per-sibling-group replay forwards: every child with its whole prefix."""
    total = 0
    for parent in tree.nodes:
        if parent.children:
            prefix = sum(node.num_tokens for node in tree.path(parent.index))
            total += sum(prefix + tree.nodes[child].num_tokens for child in parent.children)
    return total


def _sharpen_logits(model, *, logit_std: float, probe_ids: torch.Tensor) -> float:
    """Scale the final norm so the logits' standard deviation is about `logit_std`; returns the
    measured standard deviation afterwards."""
    with torch.no_grad():
        measured = float(model(input_ids=probe_ids[None]).logits.std())
        model.model.norm.weight.mul_(logit_std / measured)
        return float(model(input_ids=probe_ids[None]).logits.std())


def _exactness(*, model, trees: list[Tree], attention: str, max_packed_tokens: int | None
               ) -> float:
    """Largest |packed logprob - per-path logprob| over every trained token (float32)."""
    rows = path_rows(trees=trees)
    with torch.no_grad():
        model.config._attn_implementation = "sdpa"
        per_path = path_token_logprobs(model=model, rows=rows).cpu()
        model.config._attn_implementation = attention
        expected: dict[tuple[int, int, int], float] = {}
        start = 0
        for row in rows:
            for node, offset, value in zip(row.nodes, row.offsets,
                                           per_path[start:start + len(row.nodes)], strict=True):
                expected[(row.tree_index, int(node), int(offset))] = float(value)
            start += len(row.nodes)
        worst = 0.0
        for tree_index, tree in enumerate(trees):
            packs = pack_tree(tree=tree, max_packed_tokens=max_packed_tokens)
            packed = packed_token_logprobs(model=model, packs=packs,
                                           logprob_temperature=tree.logprob_temperature)
            for pack, logprobs in zip(packs, packed, strict=True):
                for node, offset, value in zip(pack.trained_nodes.tolist(),
                                               pack.trained_offsets.tolist(),
                                               logprobs.cpu().tolist(), strict=True):
                    key = (tree_index, node, offset)
                    if key in expected:
                        worst = max(worst, abs(value - expected[key]))
    return worst


def _gradient(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def run_replay_bench(
    *,
    num_trees: int = 1,
    tree_nodes: int = 24,
    prompt_len: int = 200,
    segment_len: int = 150,
    hidden_size: int = 512,
    num_layers: int = 8,
    vocab_size: int = 32_000,
    logit_std: float = 4.0,
    rounds: int = 3,
    attn_implementation: str = "auto",
    device: str = "cpu",
    bf16_autocast: bool = False,
    max_packed_tokens: int | None = None,
    paths_micro_batch_tokens: int | None = None,
    seed: int = 0,
    on_round: Callable[[int, str, float], None] | None = None,
) -> ReplayBenchResult:
    """Build the model and trees, check exactness, then time `rounds` interleaved rounds."""
    if device not in ("cpu", "cuda"):
        raise BadInputError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise BadInputError("--device cuda: no CUDA GPU is available")
    if bf16_autocast and device != "cuda":
        raise BadInputError("--bf16 times under CUDA autocast: use it with --device cuda")
    torch_device = torch.device(device)
    attention = resolve_attn_implementation(attn_implementation, device=torch_device,
                                            training=True)
    register_tree_attention()
    release_freed_memory()
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    model = build_random_model(tokenizer, hidden_size=hidden_size, num_layers=num_layers,
                               num_heads=max(2, hidden_size // 64), num_kv_heads=2,
                               intermediate_size=hidden_size * 11 // 2,
                               max_position_embeddings=8192, vocab_size=vocab_size,
                               seed=seed).to(torch_device)
    model.config._attn_implementation = "sdpa"
    rng = np.random.default_rng(seed)
    trees = _scored_trees(num_trees=num_trees, tree_nodes=tree_nodes, prompt_len=prompt_len,
                          segment_len=segment_len, vocab_size=vocab_size, rng=rng)
    measured_std = _sharpen_logits(model, logit_std=logit_std, probe_ids=torch.from_numpy(
        trees[0].nodes[1].token_ids.astype(np.int64)).to(torch_device))
    _set_behaviour_logprobs(model=model, trees=trees)
    max_diff = _exactness(model=model, trees=trees, attention=attention,
                          max_packed_tokens=max_packed_tokens)

    updates: dict[str, Callable[[], object]] = {
        "packed": lambda: packed_tree_loss(model=model, trees=trees,
                                           max_packed_tokens=max_packed_tokens)[0].backward(),
        "paths": lambda: paths_update(model=model, trees=trees,
                                      max_batch_tokens=paths_micro_batch_tokens),
        "groups": lambda: naive_tree_update(model=model, trees=trees),
    }
    attention_of = {"packed": attention, "paths": "sdpa", "groups": "sdpa"}
    autocast = (torch.autocast(device_type=torch_device.type, dtype=torch.bfloat16)
                if bf16_autocast else nullcontext())
    measurements = {method: MethodMeasurement() for method in METHODS}
    gradients: dict[str, torch.Tensor] = {}
    model.train()
    for round_number in range(rounds):
        order = METHODS[round_number % len(METHODS):] + METHODS[:round_number % len(METHODS)]
        for method in order:
            model.zero_grad(set_to_none=True)
            model.config._attn_implementation = attention_of[method]
            with measure_peak_memory(device=torch_device) as peak:
                wall, cpu = time.perf_counter(), time.process_time()
                with autocast:
                    updates[method]()
                if torch_device.type == "cuda":
                    torch.cuda.synchronize(torch_device)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            measurements[method].wall_seconds.append(wall)
            measurements[method].cpu_seconds.append(cpu)
            measurements[method].peak_mb.append(peak.peak_mb)
            if method not in gradients:
                gradients[method] = _gradient(model).double().cpu()
            if on_round is not None:
                on_round(round_number, method, wall)
    model.zero_grad(set_to_none=True)

    def cosine(baseline: str) -> float:
        return float(torch.nn.functional.cosine_similarity(gradients["packed"],
                                                           gradients[baseline], dim=0))

    layouts = [pack_tree(tree=tree, max_packed_tokens=max_packed_tokens) for tree in trees]
    rows = path_rows(trees=trees)
    attended_share = 0.0
    if attention == "tree":
        from treerpo.engines.tree_attention import tree_attention_layout

        attended = sum(tree_attention_layout(segment_ids=pack.segment_ids,
                                             ancestor_or_self=pack.ancestor_or_self
                                             ).attended_pairs
                       for packs in layouts for pack in packs)
        attended_share = attended / sum(pack.num_tokens ** 2 for p in layouts for pack in p)
    return ReplayBenchResult(
        device=str(torch_device),
        attn_implementation=attention,
        autocast="bfloat16" if bf16_autocast else "none",
        num_trees=num_trees,
        num_nodes=sum(len(tree.nodes) for tree in trees),
        num_layers=num_layers,
        hidden_size=hidden_size,
        vocab_size=vocab_size,
        logit_std=measured_std,
        unique_tokens=sum(node.num_tokens for tree in trees for node in tree.nodes),
        packed_tokens=sum(pack.num_tokens for packs in layouts for pack in packs),
        path_tokens=sum(len(row.input_ids) for row in rows),
        groups_tokens=sum(_groups_tokens(tree) for tree in trees),
        attended_share=attended_share,
        rounds=rounds,
        measurements=measurements,
        max_abs_logprob_diff=max_diff,
        max_path_tokens=max(len(row.input_ids) for row in rows),
        grad_cosine_paths=cosine("paths"),
        grad_cosine_groups=cosine("groups"),
    )
