"""`treerpo bench learn`: the arms, their curves and the verdict on DESIGN's learning goal."""

from __future__ import annotations

import pytest
from cli_runner import run_cli

from treerpo.bench.learn_bench import (
    arm_spec,
    arm_tree,
    eval_steps,
    goal_verdict,
    mean_curve,
    parse_arms,
    tokens_to_reach,
)
from treerpo.bench.tasks import LearnGoal, task_settings
from treerpo.errors import BadInputError


def test_bench_learn_tiny_runs_every_arm_and_reports_curves():
    result = run_cli("bench", "learn", "--seeds", "1", "--steps", "2", "--problems-per-step", "2",
                     "--eval-problems", "8", "--eval-points", "2", "--json")
    assert result.exit_code == 0, result.stderr
    payload = result.json()
    assert set(payload) == {"task", "steps", "problems_per_step", "seeds", "accuracy_before",
                            "arms", "goal"}
    assert (payload["task"], payload["steps"], payload["problems_per_step"],
            payload["seeds"]) == ("arith", 2, 2, [0])
    arms = {arm["name"]: arm for arm in payload["arms"]}
    assert list(arms) == ["flat", "tree", "tree-forced"]
    assert arms["flat"]["num_generations"] >= 2
    assert arms["tree"]["num_generations"] is None
    assert arms["tree-forced"]["num_generations"] is None
    for arm in arms.values():
        assert set(arm) == {"name", "num_generations", "accuracies", "accuracy_mean",
                            "accuracy_std", "tokens_mean", "curve", "on_policy_reward_last",
                            "nonzero_token_share", "forced_token_share"}
        assert len(arm["accuracies"]) == 1 and arm["accuracy_std"] == 0.0
        assert arm["accuracy_mean"] == arm["accuracies"][0]
        curve = arm["curve"]
        assert len(curve) == 3  # step 0 and the 2 evaluation points
        assert curve[0] == [0.0, payload["accuracy_before"]]
        tokens = [point[0] for point in curve]
        assert tokens == sorted(tokens) and tokens[1] > 0
        assert curve[-1] == [arm["tokens_mean"], arm["accuracy_mean"]]
        assert 0.0 <= arm["on_policy_reward_last"] <= 1.0
        assert 0.0 <= arm["nonzero_token_share"] <= 1.0
    # Only forced branching hangs subtrees under forced alternatives.
    assert arms["tree-forced"]["forced_token_share"] > 0.0
    assert arms["tree"]["forced_token_share"] == 0.0 == arms["flat"]["forced_token_share"]
    goal = payload["goal"]
    assert goal["target_accuracy"] == arms["flat"]["accuracy_mean"]
    assert goal["flat_tokens"] == arms["flat"]["tokens_mean"]
    assert goal["max_token_fraction"] == 0.9
    assert goal["accuracy_gap"] == pytest.approx(arms["tree"]["accuracy_mean"]
                                                 - arms["flat"]["accuracy_mean"])


def test_bench_learn_on_arith_long_with_one_arm_has_no_verdict():
    result = run_cli("bench", "learn", "--task", "arith-long", "--arms", "tree", "--seeds", "1",
                     "--steps", "1", "--problems-per-step", "1", "--eval-problems", "2",
                     "--eval-points", "1", "--json")
    assert result.exit_code == 0, result.stderr
    payload = result.json()
    assert payload["task"] == "arith-long" and payload["goal"] is None
    (arm,) = payload["arms"]
    assert arm["name"] == "tree" and len(arm["curve"]) == 2 and arm["curve"][1][0] > 0


@pytest.mark.parametrize(("args", "message"), [
    (["--arms", "flat,bushy"], "--arms: unknown arm 'bushy'"),
    (["--arms", "tree,tree"], "--arms: name each arm once"),
    (["--task", "gsm8k"], "unknown task 'gsm8k'"),
    (["--steps", "2", "--eval-points", "3"], "--eval-points must be between 1 and --steps (2)"),
])
def test_bench_learn_bad_input_is_one_line_and_exit_2(args, message):
    result = run_cli("bench", "learn", *args, "--json")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_parse_arms_keeps_the_order_given():
    assert parse_arms("tree-forced, flat") == ["tree-forced", "flat"]
    with pytest.raises(BadInputError):
        parse_arms(" , ")


def test_eval_steps_are_evenly_spaced_and_end_at_the_last_step():
    assert eval_steps(steps=120, points=6) == [20, 40, 60, 80, 100, 120]
    assert eval_steps(steps=10, points=3) == [3, 6, 10]
    assert eval_steps(steps=5, points=1) == [5]
    with pytest.raises(BadInputError):
        eval_steps(steps=5, points=0)


def test_arm_tree_changes_only_what_the_arm_names():
    tree = task_settings("arith").tree
    assert tree.branching == "resample" and tree.root_children is None
    assert tree.resolved_root_children == 4
    forced = arm_tree(arm="tree-forced", tree=tree, flat_generations=5)
    assert forced.branching == "forced" and forced.resolved_root_children == 4
    flat = arm_tree(arm="flat", tree=tree, flat_generations=5)
    assert (flat.rollout, flat.num_generations) == ("flat", 5)
    assert arm_tree(arm="tree", tree=tree, flat_generations=5) == tree
    for arm in (forced, flat):
        changed = {"branching", "rollout", "num_generations", "root_children"}
        assert arm.model_dump(exclude=changed) == tree.model_dump(exclude=changed)


def test_tokens_to_reach_interpolates_between_the_points_around_the_target():
    curve = [(0.0, 0.30), (100.0, 0.40), (200.0, 0.60), (300.0, 0.50)]
    assert tokens_to_reach(curve=curve, target=0.50) == pytest.approx(150.0)
    assert tokens_to_reach(curve=curve, target=0.40) == pytest.approx(100.0)
    assert tokens_to_reach(curve=curve, target=0.60) == pytest.approx(200.0)
    assert tokens_to_reach(curve=curve, target=0.25) == 0.0  # already there at the start
    assert tokens_to_reach(curve=curve, target=0.61) is None


def test_tokens_to_reach_takes_the_first_crossing():
    curve = [(0.0, 0.2), (10.0, 0.6), (20.0, 0.3), (30.0, 0.7)]
    assert tokens_to_reach(curve=curve, target=0.5) == pytest.approx(7.5)


def test_goal_verdict_compares_with_flats_final_accuracy_and_tokens():
    flat = [(0.0, 0.30), (500.0, 0.45), (1000.0, 0.50)]
    early = [(0.0, 0.30), (300.0, 0.40), (600.0, 0.60)]
    verdict = goal_verdict(tree_curve=early, flat_curve=flat,
                           goal=LearnGoal(max_token_fraction=0.70, max_accuracy_deficit=None))
    assert verdict.target_accuracy == 0.50 and verdict.flat_tokens == 1000.0
    assert verdict.tree_tokens == pytest.approx(450.0)
    assert verdict.token_fraction == pytest.approx(0.45)
    assert verdict.accuracy_gap == pytest.approx(0.10)
    assert verdict.met

    late = [(0.0, 0.30), (400.0, 0.35), (800.0, 0.50)]
    verdict = goal_verdict(tree_curve=late, flat_curve=flat,
                           goal=LearnGoal(max_token_fraction=0.70, max_accuracy_deficit=None))
    assert verdict.token_fraction == pytest.approx(0.80) and not verdict.met

    never = [(0.0, 0.30), (400.0, 0.45), (800.0, 0.495)]
    verdict = goal_verdict(tree_curve=never, flat_curve=flat,
                           goal=LearnGoal(max_token_fraction=0.90, max_accuracy_deficit=0.01))
    assert verdict.tree_tokens is None and verdict.token_fraction is None and not verdict.met


def test_goal_verdict_checks_the_final_accuracy_when_the_goal_asks():
    flat = [(0.0, 0.30), (1000.0, 0.50)]
    peak_then_drop = [(0.0, 0.30), (400.0, 0.55), (800.0, 0.48)]
    parity = LearnGoal(max_token_fraction=0.90, max_accuracy_deficit=0.01)
    verdict = goal_verdict(tree_curve=peak_then_drop, flat_curve=flat, goal=parity)
    assert verdict.token_fraction == pytest.approx(0.32)
    assert verdict.accuracy_gap == pytest.approx(-0.02) and not verdict.met
    verdict = goal_verdict(tree_curve=[*peak_then_drop[:2], (800.0, 0.495)], flat_curve=flat,
                           goal=parity)
    assert verdict.met


def test_mean_curve_averages_point_by_point():
    assert mean_curve([[(0.0, 0.3), (100.0, 0.5)], [(0.0, 0.3), (300.0, 0.7)]]) == \
        [(0.0, 0.3), (200.0, pytest.approx(0.6))]


def test_goal_is_not_met_when_flat_does_not_improve_on_the_start():
    flat = [(0.0, 0.30), (500.0, 0.25), (1000.0, 0.30)]
    tree = [(0.0, 0.30), (400.0, 0.20), (800.0, 0.22)]
    verdict = goal_verdict(tree_curve=tree, flat_curve=flat,
                           goal=LearnGoal(max_token_fraction=0.7, max_accuracy_deficit=None))
    assert verdict.tree_tokens == 0.0 and not verdict.flat_improved and not verdict.met


def test_arm_variants_change_what_they_name_and_nothing_else():
    tree = task_settings("arith-long").tree
    spec = arm_spec(arm="tree:root_children=2:entropy_threshold=0.3:loss_aggregation=leaf"
                        ":advantage=global-local:logprob_temperature=sampling",
                    tree=tree, flat_generations=5)
    assert (spec.tree.root_children, spec.tree.entropy_threshold) == (2, 0.3)
    assert spec.optimization == {"loss_aggregation": "leaf", "advantage": "global-local"}
    assert spec.engine == {"logprob_temperature": "sampling"}
    changed = {"root_children", "entropy_threshold"}
    assert spec.tree.model_dump(exclude=changed) == tree.model_dump(exclude=changed)
    for bad in ("tree:learning_rate=1", "tree:root_children", "tree:root_children=1",
                "tree:loss_aggregation=sequence", "bush:root_children=2"):
        with pytest.raises(BadInputError, match="--arms"):
            arm_spec(arm=bad, tree=tree, flat_generations=5)


def test_learn_tables_keep_every_figure_whole_beside_a_long_variant_name():
    """On an 80-column terminal a variant's long name folds; no figure is cut to `…`."""
    import io

    from rich.console import Console

    from treerpo.bench.learn_bench import ArmResult, ArmRun, LearnBenchResult
    from treerpo.cli.bench_commands import print_learn_tables

    variant = "tree:max_depth=2:entropy_threshold=0:min_segment_len=60"

    def arm(name: str, generations: int | None, accuracy: float, tokens: int) -> ArmResult:
        run = ArmRun(seed=0, accuracy=accuracy, tokens=tokens,
                     curve=[(0.0, 0.265), (tokens / 2, 0.3), (float(tokens), accuracy)],
                     on_policy_reward_last=0.211, nonzero_token_share=0.48,
                     forced_token_share=0.0)
        return ArmResult(name=name, num_generations=generations, runs=[run])

    result = LearnBenchResult(
        task="arith-long", steps=80, problems_per_step=16, seeds=[0], eval_steps=[40, 80],
        accuracy_before=0.265, goal=None,
        arms=[arm("flat", 5, 0.332, 775_907), arm(variant, None, 0.347, 924_010)])
    out = io.StringIO()
    print_learn_tables(result, Console(file=out, width=80, color_system=None))
    text = out.getvalue()
    assert "…" not in text
    for figure in ("33.2% ± 0.0%", "34.7% ± 0.0%", "924,010", "1.19", "0.211", "48%",
                   "34.7% @ 924,010", "33.2% @ 775,907"):
        assert figure in text, figure
    # The folded name, read back from the arm cells of the first table, is the whole name.
    first_table = text.split("└")[0]
    arm_cells = [line.split("│")[1].strip() for line in first_table.splitlines()
                 if line.startswith("│")]
    assert arm_cells[0] == "flat G=5" and "".join(arm_cells[1:]) == variant
