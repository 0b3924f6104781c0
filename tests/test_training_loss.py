"""The TreeRPO loss: PPO clipping by hand, aggregation, KL, and packed == naive gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from treerpo.training.loss import aggregation_weights, ppo_tree_loss
from treerpo.training.naive import naive_token_logprobs, naive_tree_loss
from treerpo.training.packed_forward import packed_tree_loss
from treerpo.trees import Tree, build_tree

# --- the surrogate on hand-made numbers -------------------------------------------------------


def loss_and_grad(**kwargs) -> tuple[float, dict[str, float], list[float]]:
    new_logprobs = kwargs.pop("new_logprobs").clone().requires_grad_(True)  # (N,)
    loss, metrics = ppo_tree_loss(new_logprobs=new_logprobs, **kwargs)
    loss.backward()
    return loss.item(), metrics, new_logprobs.grad.tolist()


def ratios_to_logprobs(ratios: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    behaviour = torch.full((len(ratios),), -2.0)  # (N,)
    return behaviour + torch.log(torch.tensor(ratios)), behaviour


def test_clipping_removes_the_gradient_where_the_textbook_says():
    # ratio 1.5 with A > 0 and ratio 0.5 with A < 0 are clipped (zero gradient); the other two
    # sides are kept, pessimistically, with the unclipped ratio.
    new, behaviour = ratios_to_logprobs([1.5, 0.5, 1.5, 0.5])
    advantages = torch.tensor([1.0, -1.0, -1.0, 1.0])
    loss, metrics, grad = loss_and_grad(
        new_logprobs=new,
        behaviour_logprobs=behaviour,
        advantages=advantages,
        group_ids=torch.zeros(4, dtype=torch.int64),
        aggregation="token",
    )
    token_losses = [-1.2, 0.8, 1.5, -0.5]  # -min(r * A, clip(r) * A)
    assert loss == pytest.approx(sum(token_losses) / 4, abs=1e-6)
    # d/dlogp of -(r * A) is -r * A, averaged over 4 tokens
    assert grad == pytest.approx([0.0, 0.0, 1.5 / 4, -0.5 / 4], abs=1e-6)
    assert metrics["clip_fraction"] == 0.5
    assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert (metrics["num_tokens"], metrics["num_groups"]) == (4.0, 1.0)
    assert "kl" not in metrics


def test_epsilon_high_clips_asymmetrically():
    new, behaviour = ratios_to_logprobs([1.25, 0.75])
    inputs = dict(
        new_logprobs=new,
        behaviour_logprobs=behaviour,
        advantages=torch.tensor([1.0, -1.0]),
        group_ids=torch.zeros(2, dtype=torch.int64),
        aggregation="token",
    )
    _, symmetric, symmetric_grad = loss_and_grad(**inputs)
    assert symmetric_grad == pytest.approx([0.0, 0.0])  # 1.25 > 1.2 and 0.75 < 0.8: both clipped
    assert symmetric["clip_fraction"] == 1.0
    loss, clip_higher, grad = loss_and_grad(**inputs, epsilon_high=0.28)
    assert grad == pytest.approx([-1.25 / 2, 0.0])  # 1.25 < 1.28 now trains; the low side holds
    assert loss == pytest.approx((-1.25 + 0.8) / 2)
    assert clip_higher["clip_fraction"] == 0.5


def two_groups() -> dict:
    """Group 7: one token with loss -1; group 3: three tokens with loss +1 each (ratio 1)."""
    new = torch.full((4,), -1.0)  # (N,)
    return dict(
        new_logprobs=new,
        behaviour_logprobs=new.clone(),
        advantages=torch.tensor([1.0, -1.0, -1.0, -1.0]),
        group_ids=torch.tensor([7, 3, 3, 3]),
    )


def test_group_aggregation_weighs_groups_equally_token_aggregation_weighs_tokens():
    inputs = two_groups()
    group_loss, metrics, group_grad = loss_and_grad(**inputs, aggregation="group")
    token_loss, _, token_grad = loss_and_grad(**inputs, aggregation="token")
    assert group_loss == pytest.approx((-1.0 + 1.0) / 2, abs=1e-6)
    assert token_loss == pytest.approx((-1.0 + 3.0) / 4)
    assert group_grad == pytest.approx([-0.5, 1 / 6, 1 / 6, 1 / 6])
    assert token_grad == pytest.approx([-0.25, 0.25, 0.25, 0.25])
    assert metrics["num_groups"] == 2.0
    weights = aggregation_weights(group_ids=inputs["group_ids"], aggregation="group")
    assert weights.tolist() == pytest.approx([0.5, 1 / 6, 1 / 6, 1 / 6])


def test_leaf_aggregation_weighs_group_means_by_visitation_share():
    # group 7 (visited by every leaf, v = 1): one token, loss -1; group 3 (v = 0.25): three
    # tokens with loss +1 each. loss = (1 * -1 + 0.25 * 1) / 1.25.
    inputs = dict(two_groups(), group_visits=torch.tensor([1.0, 0.25, 0.25, 0.25]))
    loss, _, grad = loss_and_grad(**inputs, aggregation="leaf")
    assert loss == pytest.approx((-1.0 + 0.25) / 1.25)
    assert grad == pytest.approx([-1 / 1.25, 0.25 / 3 / 1.25, 0.25 / 3 / 1.25, 0.25 / 3 / 1.25])
    weights = aggregation_weights(group_ids=inputs["group_ids"], aggregation="leaf",
                                  group_visits=inputs["group_visits"])
    assert weights.sum().item() == pytest.approx(1.0)
    # Equal visitation shares: "leaf" is "group".
    equal = dict(inputs, group_visits=torch.full((4,), 0.5))
    assert loss_and_grad(**equal, aggregation="leaf")[0] == pytest.approx(
        loss_and_grad(**inputs, aggregation="group")[0])
    with pytest.raises(ValueError, match="group_visits"):
        aggregation_weights(group_ids=inputs["group_ids"], aggregation="leaf")


def test_kl_term_matches_a_hand_computation():
    new = torch.tensor([-1.0, -2.0, -0.5])  # (N,)
    ref = torch.tensor([-1.5, -1.0, -0.5])  # (N,)
    loss, metrics, grad = loss_and_grad(
        new_logprobs=new,
        behaviour_logprobs=new.clone(),
        advantages=torch.zeros(3),
        group_ids=torch.zeros(3, dtype=torch.int64),
        ref_logprobs=ref,
        beta=0.1,
    )
    deltas = [-0.5, 1.0, 0.0]  # ref - new
    k3 = [math.exp(d) - d - 1 for d in deltas]
    assert metrics["kl"] == pytest.approx(sum(k3) / 3, abs=1e-6)
    assert loss == pytest.approx(0.1 * sum(k3) / 3, abs=1e-6)
    assert grad == pytest.approx([0.1 * (1 - math.exp(d)) / 3 for d in deltas], abs=1e-6)


def test_micro_batches_with_batch_weights_sum_to_the_batch_loss():
    generator = torch.Generator().manual_seed(0)
    num_tokens = 50
    new = -torch.rand(num_tokens, generator=generator) * 3  # (N,)
    inputs = dict(
        behaviour_logprobs=new + 0.3 * torch.randn(num_tokens, generator=generator),
        advantages=torch.randn(num_tokens, generator=generator),
        group_ids=torch.randint(0, 6, (num_tokens,), generator=generator),
    )
    full_loss, _, full_grad = loss_and_grad(new_logprobs=new, **inputs)
    weights = aggregation_weights(group_ids=inputs["group_ids"], aggregation="group")  # (N,)
    total, grads = 0.0, []
    for part in (slice(0, 20), slice(20, num_tokens)):
        loss, _, grad = loss_and_grad(
            new_logprobs=new[part],
            **{key: value[part] for key, value in inputs.items()},
            token_weights=weights[part],
        )
        total += loss
        grads += grad
    assert total == pytest.approx(full_loss, abs=1e-6)
    assert grads == pytest.approx(full_grad, abs=1e-7)


def test_bad_loss_inputs_are_refused():
    tokens = dict(
        new_logprobs=torch.zeros(3),
        behaviour_logprobs=torch.zeros(3),
        advantages=torch.zeros(3),
        group_ids=torch.zeros(3, dtype=torch.int64),
    )
    with pytest.raises(ValueError, match="ref_logprobs"):
        ppo_tree_loss(**tokens, beta=0.1)
    with pytest.raises(ValueError, match="same length"):
        ppo_tree_loss(**{**tokens, "advantages": torch.zeros(2)})
    with pytest.raises(ValueError, match="aggregation"):
        ppo_tree_loss(**tokens, aggregation="sequence")
    with pytest.raises(ValueError, match="epsilon"):
        ppo_tree_loss(**tokens, epsilon=1.5)


def test_no_tokens_gives_a_zero_loss_attached_to_the_graph():
    new = torch.zeros(0, requires_grad=True)
    empty = torch.zeros(0)
    loss, metrics = ppo_tree_loss(
        new_logprobs=new,
        behaviour_logprobs=empty,
        advantages=empty,
        group_ids=empty.long(),
    )
    loss.backward()
    assert loss.item() == 0.0 and metrics["num_tokens"] == 0.0


# --- whole trees through the model: packed vs naive ------------------------------------------


def score(tree: Tree, *, rewards: dict[int, float]) -> Tree:
    """Leaf rewards -> values (mean over descendant leaves) -> sibling advantages (DESIGN 7-9)."""
    leaf_rewards: list[list[float]] = [[] for _ in tree.nodes]
    for node in reversed(tree.nodes):
        if node.is_leaf:
            leaf_rewards[node.index] = [rewards[node.index]]
            node.reward = rewards[node.index]
        for child in node.children:
            leaf_rewards[node.index] += leaf_rewards[child]
        node.value = float(np.mean(leaf_rewards[node.index]))
    for node in tree.nodes:
        if len(node.children) >= 2:
            mean_value = np.mean([tree.nodes[c].value for c in node.children])
            for child in node.children:
                tree.nodes[child].advantage = tree.nodes[child].value - float(mean_value)
    tree.scored = True
    return tree


def random_scored_tree(
    *,
    rng: np.random.Generator,
    parents: list[int | None],
    rewards: dict[int, float],
    vocab_size: int,
    logprob_temperature: float = 1.0,
) -> Tree:
    lengths = [int(rng.integers(3, 9))] + [int(rng.integers(1, 7)) for _ in parents[1:]]
    token_ids = [rng.integers(0, vocab_size, n) for n in lengths]
    tree = build_tree(
        parents=parents,
        kinds=["root"] + ["split"] * (len(parents) - 1),
        token_ids=token_ids,
        logprobs=[np.zeros(n) for n in lengths],
        texts=[""] * len(parents),
        logprob_temperature=logprob_temperature,
    )
    return score(tree, rewards=rewards)


def tree_batch(*, vocab_size: int, seed: int = 0, logprob_temperature: float = 1.0) -> list[Tree]:
    """A deep tree (with a single child, which carries no advantage) and a flat GRPO-like one."""
    rng = np.random.default_rng(seed)
    deep = random_scored_tree(
        rng=rng,
        parents=[None, 0, 0, 1, 1, 2, 5, 5, 5, 3, 3],
        rewards={4: 1.0, 6: 0.0, 7: 1.0, 8: 0.0, 9: 1.0, 10: 0.0},
        vocab_size=vocab_size,
        logprob_temperature=logprob_temperature,
    )
    assert deep.nodes[5].advantage is None  # node 2's only child
    flat = random_scored_tree(
        rng=rng,
        parents=[None, 0, 0, 0, 0],
        rewards={1: 1.0, 2: 0.0, 3: 0.0, 4: 1.0},
        vocab_size=vocab_size,
        logprob_temperature=logprob_temperature,
    )
    return [deep, flat]


def store_behaviour_logprobs(*, model, trees: list[Tree], noise: float, seed: int = 0) -> None:
    """Behaviour logprobs as an engine would store them (same transform), optionally perturbed."""
    rng = np.random.default_rng(seed)
    for tree in trees:
        with torch.no_grad():
            logprobs = naive_token_logprobs(
                model=model, tree=tree, logprob_temperature=tree.logprob_temperature
            )
        for node in tree.nodes[1:]:
            stored = logprobs[node.index].numpy().astype(np.float32)  # (T,)
            node.logprobs = stored + rng.normal(0.0, noise, stored.shape).astype(np.float32)


def flat_grad(model) -> torch.Tensor:
    return torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
            for p in model.parameters()
        ]
    )  # (P,)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def ref_model(tiny_model_dir):
    from transformers import AutoTokenizer

    from treerpo.tiny_model import build_random_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return build_random_model(tokenizer, seed=1).requires_grad_(False)


@pytest.mark.parametrize(
    ("aggregation", "beta", "sub_packed"),
    [("group", 0.0, False), ("token", 0.0, False), ("group", 0.1, False), ("token", 0.0, True),
     ("leaf", 0.0, False), ("leaf", 0.1, True)],
)
def test_packed_loss_gradient_equals_the_per_group_gradient(
    model, ref_model, aggregation, beta, sub_packed
):
    trees = tree_batch(vocab_size=model.config.vocab_size, seed=1, logprob_temperature=0.8)
    longest_path = max(
        sum(n.num_tokens for n in tree.path(leaf.index)) for tree in trees for leaf in tree.leaves()
    )
    max_packed_tokens = longest_path if sub_packed else None
    # Perturbed behaviour logprobs: ratios spread around 1, some beyond the clip range.
    store_behaviour_logprobs(model=model, trees=trees, noise=0.3)
    options = dict(aggregation=aggregation, beta=beta, ref_model=ref_model if beta else None)

    model.zero_grad(set_to_none=True)
    packed_loss, metrics = packed_tree_loss(
        model=model, trees=trees, max_packed_tokens=max_packed_tokens, **options
    )
    packed_loss.backward()
    packed_grad = flat_grad(model)  # (P,)

    model.zero_grad(set_to_none=True)
    naive_loss, naive_metrics = naive_tree_loss(model=model, trees=trees, **options)
    naive_loss.backward()
    naive_grad = flat_grad(model)  # (P,)
    model.zero_grad(set_to_none=True)

    assert 0.0 < metrics["clip_fraction"] < 1.0
    trained = sum(n.num_tokens for t in trees for n in t.nodes[1:] if n.advantage is not None)
    assert metrics["num_tokens"] == naive_metrics["num_tokens"] == trained
    assert metrics["num_groups"] == naive_metrics["num_groups"] == 5  # 4 in the deep tree, 1 flat
    assert packed_loss.item() == pytest.approx(naive_loss.item(), abs=1e-6)
    assert naive_grad.abs().max() > 0
    cosine = torch.nn.functional.cosine_similarity(packed_grad, naive_grad, dim=0)
    assert cosine >= 0.9999
    assert torch.allclose(packed_grad, naive_grad, rtol=1e-4, atol=1e-5 * naive_grad.abs().max())


def test_an_unchanged_policy_has_ratio_one_and_loss_minus_mean_advantage(model):
    trees = tree_batch(vocab_size=model.config.vocab_size, logprob_temperature=0.7)
    store_behaviour_logprobs(model=model, trees=trees, noise=0.0)
    with torch.no_grad():
        loss, metrics = packed_tree_loss(model=model, trees=trees)
    assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["ratio_max"] - 1.0 < 1e-4 and 1.0 - metrics["ratio_min"] < 1e-4
    assert metrics["clip_fraction"] == 0.0
    group_means = []  # per sibling group: token-mean advantage
    for tree in trees:
        for parent in tree.nodes:
            children = [
                tree.nodes[c] for c in parent.children if tree.nodes[c].advantage is not None
            ]
            if children:
                tokens = sum(c.num_tokens for c in children)
                group_means.append(sum(c.advantage * c.num_tokens for c in children) / tokens)
    assert loss.item() == pytest.approx(-float(np.mean(group_means)), abs=1e-5)
    assert abs(float(np.mean(group_means))) > 1e-3  # the check above is not 0 == 0


def test_a_tree_whose_leaves_all_agree_contributes_nothing(model):
    rng = np.random.default_rng(3)
    tree = random_scored_tree(
        rng=rng,
        parents=[None, 0, 0, 1, 1, 2, 2, 2],
        rewards={3: 1.0, 4: 1.0, 5: 1.0, 6: 1.0, 7: 1.0},
        vocab_size=model.config.vocab_size,
    )
    assert all(n.advantage == 0.0 for n in tree.nodes[1:])
    store_behaviour_logprobs(model=model, trees=[tree], noise=0.3)
    model.zero_grad(set_to_none=True)
    loss, metrics = packed_tree_loss(model=model, trees=[tree])
    loss.backward()
    assert loss.item() == 0.0
    assert metrics["num_tokens"] > 0
    assert torch.count_nonzero(flat_grad(model)) == 0
    model.zero_grad(set_to_none=True)
