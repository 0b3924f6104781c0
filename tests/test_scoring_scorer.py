"""score_trees: rewards of every leaf, values and advantages in memory, in or out of process."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treerpo.errors import BadInputError, RunFailure
from treerpo.scoring import score_trees, scorer
from treerpo.trees import build_tree


def make_tree(parents, answers, *, reference="4", problem="What is 2 + 2?"):
    """A tree whose leaf i ends its path with `\\boxed{answers[i]}` (None: no box)."""
    has_children = {parent for parent in parents if parent is not None}
    texts, kinds = [], []
    for index, parent in enumerate(parents):
        if parent is None:
            kinds.append("root")
            texts.append("<prompt>")
        elif index in has_children:
            kinds.append("split")
            texts.append(f"Step {index}: 1 + 3 = {index}. ")  # wrong steps are not boxed answers
        else:
            kinds.append("leaf")
            answer = answers[index]
            texts.append(
                "I give up." if answer is None else f"So the answer is $\\boxed{{{answer}}}$."
            )
    tree = build_tree(
        parents=list(parents),
        kinds=kinds,
        token_ids=[np.arange(3) for _ in parents],
        logprobs=[np.zeros(0 if index == 0 else 3) for index in range(len(parents))],
        texts=texts,
    )
    tree.reference = reference
    tree.problem = problem
    return tree


# 0 -> 1, 2; 1 -> 3, 4; 4 -> 6, 7, 8; 2 -> 5 (single child). Leaves: 3, 5, 6, 7, 8.
UNBALANCED = [None, 0, 0, 1, 1, 2, 4, 4, 4]
UNBALANCED_ANSWERS = {3: "4", 5: r"\frac{8}{2}", 6: "5", 7: None, 8: "4,000"}


def test_scores_a_hand_built_tree_in_process():
    tree = make_tree(UNBALANCED, UNBALANCED_ANSWERS)
    all_right = make_tree([None, 0, 0], {1: "4", 2: "4.0"})
    progress = []
    stats = score_trees([tree, all_right], workers=1, on_progress=lambda *p: progress.append(p))

    assert [node.reward for node in tree.nodes] == [None, None, None, 1.0, None, 1.0, 0.0, 0.0, 0.0]
    assert [node.value for node in tree.nodes] == pytest.approx(
        [0.4, 0.25, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    )
    assert [node.advantage for node in tree.nodes] == pytest.approx(
        [None, -0.375, 0.375, 0.5, -0.5, None, 0.0, 0.0, 0.0]
    )
    assert tree.scored and all_right.scored
    assert [node.advantage for node in all_right.nodes] == [None, 0.0, 0.0]

    assert (stats.num_trees, stats.num_leaves, stats.workers) == (2, 7, 1)
    assert stats.mean_reward == pytest.approx(4 / 7)
    assert stats.uniform_tree_share == pytest.approx(0.5)
    assert stats.mean_abs_advantage == pytest.approx((0.375 * 2 + 0.5 * 2) / 9)
    assert stats.seconds > 0 and stats.leaves_per_second > 0
    assert progress[-1] == (7, 7)


def test_workers_none_moves_slow_work_to_a_pool_after_a_probe(monkeypatch):
    """The first leaves are scored here; the rest go to a pool when they would take long."""
    monkeypatch.setattr(scorer, "_POOL_PAYS_OFF_S", 0.0)
    monkeypatch.setattr(scorer, "_available_cpus", lambda: 2)
    rng = np.random.default_rng(0)
    shapes = []
    for _ in range(40):
        parents = [None] + [int(rng.integers(0, index)) for index in range(1, 30)]
        answers = {index: str(int(rng.integers(3, 6))) for index in range(30)}
        shapes.append((parents, answers))
    trees = [make_tree(parents, answers) for parents, answers in shapes]
    twins = [make_tree(parents, answers) for parents, answers in shapes]

    progress = []
    pooled = score_trees(trees, on_progress=lambda *p: progress.append(p))
    in_process = score_trees(twins, workers=1)
    assert pooled.num_leaves > scorer._PROBE_LEAVES

    assert pooled.workers == 2 and pooled.num_leaves == in_process.num_leaves
    assert pooled.mean_reward == pytest.approx(in_process.mean_reward)
    for tree, twin in zip(trees, twins, strict=True):
        assert [n.reward for n in tree.nodes] == [n.reward for n in twin.nodes]
        assert [n.value for n in tree.nodes] == [n.value for n in twin.nodes]
        assert [n.advantage for n in tree.nodes] == [n.advantage for n in twin.nodes]
    done = [done_leaves for done_leaves, _ in progress]
    assert done == sorted(done) and len(done) > 1
    assert progress[-1] == (pooled.num_leaves, pooled.num_leaves)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    name = f"scorer_rewards_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(
        "def rewards_giving_up(*, completion, reference, problem):\n"
        "    return 1.0 if completion.endswith('I give up.') else 0.0\n"
        "def broken(*, completion, reference, problem):\n"
        "    return 7.0 if 'give up' in completion else 1.0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers inherit sys.path
    return name


def test_workers_import_a_plugin_by_its_spec(plugin):
    tree = make_tree(UNBALANCED, UNBALANCED_ANSWERS)
    score_trees([tree], reward_fn_spec=f"{plugin}:rewards_giving_up", workers=2)
    assert {leaf.index: leaf.reward for leaf in tree.leaves()} == {
        3: 0.0,
        5: 0.0,
        6: 0.0,
        7: 1.0,
        8: 0.0,
    }


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_plugin_fails_the_run_and_leaves_the_trees_unscored(plugin, workers):
    trees = [make_tree(UNBALANCED, UNBALANCED_ANSWERS) for _ in range(3)]
    with pytest.raises(RunFailure, match=f"{plugin}:broken returned 7.0"):
        score_trees(trees, reward_fn_spec=f"{plugin}:broken", workers=workers)
    assert not any(tree.scored for tree in trees)
    assert all(node.value is None for tree in trees for node in tree.nodes)


def test_an_unloadable_plugin_is_bad_input():
    tree = make_tree(UNBALANCED, UNBALANCED_ANSWERS)
    with pytest.raises(BadInputError, match="no_such_module_xyz:reward"):
        score_trees([tree], reward_fn_spec="no_such_module_xyz:reward", workers=2)
    assert not tree.scored


def test_workers_none_stays_in_process_when_scoring_is_quick():
    trees = [make_tree(UNBALANCED, UNBALANCED_ANSWERS) for _ in range(100)]
    stats = score_trees(trees)
    assert stats.workers == 1 and stats.num_leaves == 500
    assert all(tree.scored for tree in trees)


def test_no_trees_and_a_tree_without_leaves():
    stats = score_trees([], workers=1)
    assert (stats.num_trees, stats.num_leaves, stats.mean_reward) == (0, 0, None)
    lonely_root = make_tree([None], {})
    stats = score_trees([lonely_root], workers=1)
    assert lonely_root.scored and lonely_root.root.value is None
    assert (stats.uniform_tree_share, stats.mean_abs_advantage) == (None, None)


@st.composite
def answer_trees(draw):
    num_nodes = draw(st.integers(min_value=2, max_value=25))
    parents = [None] + [draw(st.integers(0, index - 1)) for index in range(1, num_nodes)]
    answers = {
        index: draw(st.sampled_from(["3", "4", "4.0", r"\frac{8}{2}", "5", None]))
        for index in range(num_nodes)
    }
    return parents, answers


@settings(max_examples=60, deadline=None)
@given(answer_trees())
def test_default_reward_properties_on_random_trees(tree_spec):
    parents, answers = tree_spec
    tree = make_tree(parents, answers)
    score_trees([tree], workers=1)

    leaves = tree.leaves()
    for leaf in leaves:
        assert leaf.value in (0.0, 1.0)
        assert leaf.value == (1.0 if answers[leaf.index] in ("4", "4.0", r"\frac{8}{2}") else 0.0)
    assert tree.root.value == pytest.approx(sum(leaf.reward for leaf in leaves) / len(leaves))
    for node in tree.nodes:
        if len(node.children) == 1:
            assert tree.nodes[node.children[0]].advantage is None
        elif len(node.children) >= 2:
            group = [tree.nodes[child].advantage for child in node.children]
            assert sum(group) == pytest.approx(0.0, abs=1e-9)
    assert tree.root.advantage is None
