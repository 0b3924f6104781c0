"""One optimizer step of `treerpo train` on hand-built scored trees: what moves and what does not.

Also home of `write_scored_trees`, the store fixture the other test_train_* files import: small
trees whose behaviour logprobs are the tiny model's own (ratio 1), with mixed leaf rewards.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from treerpo.config import OptimizationConfig
from treerpo.scoring.values import apply_scores
from treerpo.store import repository
from treerpo.store.database import open_store
from treerpo.training.packed_forward import packed_token_logprobs, packed_tree_loss
from treerpo.training.packing import pack_tree
from treerpo.training.trainer import PolicyUpdater, trained_counts
from treerpo.trees import Tree, build_tree

# root -> a, b (root split); a -> a1, a2; b -> b1, b2, b3 (a coverage-like split); all leaves
# below the first level. Rewards decide which groups carry signal.
_PARENTS = [None, 0, 0, 1, 1, 2, 2, 2]
_KINDS = ["root", "split", "coverage", "leaf", "leaf", "leaf", "leaf", "leaf"]
_LEAVES = [3, 4, 5, 6, 7]


class _SingleProcess:
    num_processes = 1
    process_index = 0
    device = torch.device("cpu")


def make_tree(*, model, rng: np.random.Generator, rewards: list[float], vocab: int) -> Tree:
    """A scored tree over random tokens whose behaviour logprobs are `model`'s own."""
    lengths = [6, 3, 4, 5, 2, 3, 4, 2]
    token_ids = [rng.integers(3, vocab, size=length) for length in lengths]
    tree = build_tree(parents=_PARENTS, kinds=_KINDS, token_ids=token_ids,
                      logprobs=[np.zeros(0)] + [np.zeros(length) for length in lengths[1:]],
                      texts=[f"node {index}" for index in range(len(lengths))],
                      finish_reasons=[None, None, None] + ["eos"] * 5)
    with torch.no_grad():
        (pack,) = pack_tree(tree=tree, max_packed_tokens=None)
        (logprobs,) = packed_token_logprobs(model=model, packs=[pack])
    for node_index in range(1, len(tree.nodes)):
        rows = (pack.trained_nodes == node_index).numpy()
        tree.nodes[node_index].logprobs = logprobs.numpy()[rows].astype(np.float32)
    apply_scores(tree, dict(zip(_LEAVES, rewards, strict=True)))
    tree.scored = True
    return tree


def write_scored_trees(*, db_url: str, model_dir, rewards: list[list[float]],
                       run_name: str = "hand-built", seed: int = 0) -> list[int]:
    """Store one scored tree per reward list (5 leaves each) in run `run_name`, recorded as
    grown by the model in `model_dir` (its tokenizer and weights); returns ids."""
    from treerpo.engines.loading import load_policy, load_tokenizer, policy_version
    from treerpo.provenance import tokenizer_fingerprint

    model = load_policy(str(model_dir), torch_dtype="float32", device="cpu")
    rng = np.random.default_rng(seed)
    trees = [make_tree(model=model, rng=rng, rewards=leaf_rewards,
                       vocab=model.config.vocab_size) for leaf_rewards in rewards]
    store = open_store(db_url)
    try:
        run = repository.get_or_create_run(store, name=run_name, kind="generate",
                                           model=str(model_dir), config={})
        keys = [(repository.ProblemKey("hand", "train", index), f"problem {index}", "4")
                for index in range(len(trees))]
        problem_ids = repository.upsert_problems(store, keys)
        return repository.write_trees(store, trees=trees, run_id=run.id,
                                      problem_ids=problem_ids,
                                      policy_version=policy_version(str(model_dir)),
                                      tokenizer_hash=tokenizer_fingerprint(
                                          load_tokenizer(str(model_dir))))
    finally:
        store.close()


@pytest.fixture
def tiny_model(tiny_model_dir):
    from treerpo.engines.loading import load_policy

    return load_policy(str(tiny_model_dir), torch_dtype="float32", device="cpu")


def _updater(model, **optimization) -> PolicyUpdater:
    return PolicyUpdater(model=model, ref_model=None,
                         optimization=OptimizationConfig(**optimization), total_steps=10,
                         accelerator=_SingleProcess(), autocast_dtype=None)


def _trees(model, rewards: list[list[float]], seed: int = 0) -> list[Tree]:
    rng = np.random.default_rng(seed)
    return [make_tree(model=model, rng=rng, rewards=r, vocab=model.config.vocab_size)
            for r in rewards]


def test_one_update_changes_every_trainable_parameter(tiny_model):
    trees = _trees(tiny_model, [[1, 0, 0, 1, 0], [0, 1, 1, 0, 0]])
    before = {name: p.detach().clone() for name, p in tiny_model.named_parameters()}
    metrics = _updater(tiny_model, learning_rate=1e-3, lr_scheduler_type="constant").update(trees)
    unchanged = [name for name, p in tiny_model.named_parameters()
                 if torch.equal(p.detach(), before[name])]
    assert unchanged == []
    assert metrics["num_trees"] == 2 and metrics["grad_norm"] > 0
    assert metrics["clip_fraction"] == 0.0  # behaviour = the model's own logprobs: ratio 1
    assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["peak_memory_mb"] is None  # CPU
    assert metrics["mean_reward"] == pytest.approx(0.4)


def test_ratio_mean_reports_how_far_behaviour_logprobs_are(tiny_model):
    trees = _trees(tiny_model, [[1, 0, 0, 1, 0]])
    for node in trees[0].nodes:  # behaviour logprobs 0.1 nats above the policy's: ratio e^-0.1
        node.logprobs = (node.logprobs + 0.1).astype(np.float32)
    metrics = _updater(tiny_model, learning_rate=1e-3).update(trees)
    assert metrics["ratio_mean"] == pytest.approx(math.exp(-0.1), rel=1e-4)


def test_a_tree_whose_leaves_all_agree_contributes_zero_loss(tiny_model):
    trees = _trees(tiny_model, [[1, 1, 1, 1, 1]])
    before = copy.deepcopy(tiny_model.state_dict())
    metrics = _updater(tiny_model, learning_rate=1e-3).update(trees)
    assert metrics["loss"] == 0.0 and metrics["grad_norm"] == 0.0
    assert metrics["num_groups"] == 3  # it still counts in the mean over groups
    for name, value in tiny_model.state_dict().items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("aggregation", ["group", "token", "leaf"])
def test_the_step_gradient_is_the_mean_over_all_the_steps_groups(tiny_model, aggregation):
    # The updater back-propagates tree by tree with scaled losses; the gradient must be the one
    # of the whole step's loss computed at once (groups of different sizes and trees).
    trees = _trees(tiny_model, [[1, 0, 0, 1, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], seed=3)
    reference = copy.deepcopy(tiny_model)
    loss, _ = packed_tree_loss(model=reference, trees=trees, aggregation=aggregation)
    loss.backward()
    updater = _updater(tiny_model, loss_aggregation=aggregation, max_grad_norm=0.0)
    captured = {}
    updater.optimizer.register_step_pre_hook(lambda *_: captured.update(
        {name: p.grad.clone() for name, p in tiny_model.named_parameters()}))
    metrics = updater.update(trees)
    assert metrics["loss"] == pytest.approx(loss.item(), rel=1e-5)
    for name, parameter in reference.named_parameters():
        torch.testing.assert_close(captured[name], parameter.grad, rtol=1e-4, atol=1e-7)


def test_trained_counts_match_what_the_loss_sees(tiny_model):
    (tree,) = _trees(tiny_model, [[1, 0, 0, 1, 0]])
    _, metrics = packed_tree_loss(model=tiny_model, trees=[tree])
    tokens, groups, visit_mass = trained_counts(tree)
    assert (tokens, groups) == (metrics["num_tokens"], metrics["num_groups"]) == (23, 3)
    # Groups under the root (5 of 5 leaves), node 1 (2 of 5) and node 2 (3 of 5).
    assert visit_mass == pytest.approx(1.0 + 2 / 5 + 3 / 5)


def test_global_local_advantages_train_on_the_recomputed_advantages(tiny_model):
    # Node 1's leaves agree (1, 1) and node 2's agree (0, 0, 0) while the tree's mean is 0.4:
    # local advantages give those groups nothing, global-local moves them (up and down). The
    # stored tree is left as it was.
    (tree,) = _trees(tiny_model, [[1, 1, 0, 0, 0]])
    stored = [node.advantage for node in tree.nodes]
    local = _updater(tiny_model, learning_rate=0.0, lr_scheduler_type="constant",
                     loss_aggregation="group").update([tree])
    global_local = _updater(tiny_model, learning_rate=0.0, lr_scheduler_type="constant",
                            loss_aggregation="group", advantage="global-local").update([tree])
    assert [node.advantage for node in tree.nodes] == stored
    assert local["nonzero_group_share"] == pytest.approx(1 / 3)
    assert global_local["nonzero_group_share"] == 1.0
    # At ratio 1 with "group" aggregation the loss is minus the mean over groups of the token-mean
    # advantage. Tokens: node 1: 3, node 2: 4; leaves 3..7: 5, 2, 3, 4, 2.
    # local: root group (0.5 * 3 - 0.5 * 4) / 7, the other two groups 0.
    assert local["loss"] == pytest.approx(-(-0.5 / 7) / 3, abs=1e-6)
    # global-local: node 1: 0.5 + 0.6, node 2: -0.5 - 0.4, leaves under 1: 0.6, under 2: -0.4.
    assert global_local["loss"] == pytest.approx(-((1.1 * 3 - 0.9 * 4) / 7 + 0.6 - 0.4) / 3,
                                                 abs=1e-6)
