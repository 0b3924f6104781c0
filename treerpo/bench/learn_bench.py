"""`treerpo bench learn`: does a tree rollout teach more per decoded token than flat GRPO?

Arms, each trained from the task's shipped policy with the task's settings (`treerpo.bench.tasks`)
for the same steps, problems per step, learning rate and seeds:

- `flat`: GRPO (`rollout=flat`) with G samples per problem, G chosen so that it decodes about as
  many tokens as `tree`: G = round(tree tokens per problem / tokens of one free sample), at least
  2, both measured by one calibration step (learning rate 0) of each on the same problems. (The
  mean root-to-leaf path of the trees is no estimate of a free sample: paths that split more
  have more leaves, and on arith those are the long worked solutions.)
- `tree`: TreeRPO with the library's defaults (resample branching, 4 root children).
- `tree-forced`: the original release's algorithm: forced branching and one vote per sibling
  group (`loss_aggregation=group`), with as many root children as `tree`.
- variants, to choose defaults by measurement: `BASE:key=value[:key=value...]` changes a tree
  setting (`tree:root_children=2`, `tree:entropy_threshold=0.3`), the loss aggregation or the
  advantage (`tree:loss_aggregation=leaf`, `tree:advantage=global-local`) or the logprob
  transform (`tree:logprob_temperature=sampling`) of a base arm. The learning rate, steps and
  problems are never an arm's to change.

Each run keeps a checkpoint at `eval_points` evenly spaced steps (the last one is the final
model). The greedy accuracy of each on the task's held-out problems, against the completion
tokens the run decoded up to that step, is the run's learning curve; its first point (step 0, no
tokens) is the shipped policy, evaluated once for all runs. An arm's curve is the mean over seeds,
point by point. The verdict (DESIGN, "Learning"): the cumulative tokens at which `tree`'s mean
curve first reaches flat's final mean accuracy (linear interpolation between points), as a share
of flat's total tokens, against the task's goal.
"""

from __future__ import annotations

import math
import shutil
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from treerpo.bench.tasks import LearnGoal, TaskSettings
from treerpo.config import EngineConfig, OptimizationConfig, slug
from treerpo.demo import greedy_eval, train_chained
from treerpo.errors import BadInputError
from treerpo.growth.settings import TreeSettings
from treerpo.store import repository
from treerpo.store.database import Store, open_store
from treerpo.training.checkpoints import CHECKPOINT_PREFIX

ARMS = ("flat", "tree", "tree-forced")
# What a variant may change besides tree settings: the update's loss and the logprob transform.
OPTIMIZATION_KEYS = ("loss_aggregation", "advantage")
ENGINE_KEYS = ("logprob_temperature",)
# Free samples per problem of the calibration that measures a flat sample's length.
CALIBRATION_SAMPLES = 4
# On-policy reward is reported as its mean over this last share of the steps.
LAST_STEPS_SHARE = 0.1
# Accuracies are means of k/n fractions: a curve "reaches" a target within float noise.
REACH_TOLERANCE = 1e-9

CurvePoint = tuple[float, float]  # (cumulative decoded tokens, greedy accuracy)


@dataclass
class ArmRun:
    """One seed of one arm."""

    seed: int
    accuracy: float  # greedy, after the last step
    tokens: int  # completion tokens of every tree (or flat group) grown
    curve: list[CurvePoint]
    on_policy_reward_last: float  # mean over the last 10% of steps
    nonzero_token_share: float  # mean over the steps
    forced_token_share: float  # mean over the steps


@dataclass
class ArmResult:
    name: str
    num_generations: int | None  # flat only
    runs: list[ArmRun] = field(default_factory=list)

    @property
    def accuracies(self) -> list[float]:
        return [run.accuracy for run in self.runs]

    @property
    def accuracy_mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def accuracy_std(self) -> float:
        return statistics.pstdev(self.accuracies)

    @property
    def tokens_mean(self) -> float:
        return statistics.fmean(run.tokens for run in self.runs)

    @property
    def curve(self) -> list[CurvePoint]:
        return mean_curve([run.curve for run in self.runs])

    @property
    def on_policy_reward_last(self) -> float:
        return statistics.fmean(run.on_policy_reward_last for run in self.runs)

    @property
    def nonzero_token_share(self) -> float:
        return statistics.fmean(run.nonzero_token_share for run in self.runs)

    @property
    def forced_token_share(self) -> float:
        return statistics.fmean(run.forced_token_share for run in self.runs)


@dataclass(frozen=True)
class GoalVerdict:
    goal: LearnGoal
    target_accuracy: float  # flat's final mean accuracy
    flat_tokens: float  # flat's mean total tokens
    tree_tokens: float | None  # where tree's mean curve first reaches the target; None: never
    accuracy_gap: float  # tree's final mean accuracy - flat's
    # Flat's final accuracy rose above the start: without that there is nothing to reach, and
    # "tree reaches it at 0 tokens" would read as a win.
    flat_improved: bool = True

    @property
    def token_fraction(self) -> float | None:
        if self.tree_tokens is None:
            return None
        return self.tree_tokens / self.flat_tokens if self.flat_tokens > 0 else math.inf

    @property
    def met(self) -> bool:
        fraction = self.token_fraction
        if not self.flat_improved or fraction is None or fraction > self.goal.max_token_fraction:
            return False
        deficit = self.goal.max_accuracy_deficit
        return deficit is None or self.accuracy_gap >= -deficit - REACH_TOLERANCE


@dataclass
class LearnBenchResult:
    task: str
    steps: int
    problems_per_step: int
    seeds: list[int]
    eval_steps: list[int]  # the steps of the curve points after step 0
    accuracy_before: float
    arms: list[ArmResult]
    goal: GoalVerdict | None  # None unless both `flat` and `tree` ran


@dataclass(frozen=True)
class ArmSpec:
    """What one arm trains with: its tree settings and its changes to the update and engine."""

    name: str
    tree: TreeSettings
    optimization: dict[str, Any] = field(default_factory=dict)
    engine: dict[str, Any] = field(default_factory=dict)


def parse_arms(text: str) -> list[str]:
    """`flat,tree` → ["flat", "tree"]; an unknown, repeated or missing arm is a BadInputError."""
    return checked_arms([name.strip() for name in text.split(",") if name.strip()])


def checked_arms(arms: Sequence[str]) -> list[str]:
    """`arms` as a list, each a known base arm or a valid variant, each once; otherwise a
    BadInputError."""
    if not arms or len(set(arms)) != len(arms):
        raise BadInputError(f"--arms: name each arm once, some of {', '.join(ARMS)} "
                            f"(got {','.join(arms)!r})")
    default_tree = TreeSettings()
    for arm in arms:
        arm_spec(arm=arm, tree=default_tree, flat_generations=2)
    return list(arms)


def arm_spec(*, arm: str, tree: TreeSettings, flat_generations: int) -> ArmSpec:
    """The settings of `arm` (module docstring), from the task's tree settings."""
    base, *changes = arm.split(":")
    if base not in ARMS:
        raise BadInputError(f"--arms: unknown arm {base!r}; use some of {', '.join(ARMS)}, "
                            "optionally with :key=value changes")
    tree_updates: dict[str, Any] = {
        "flat": {"rollout": "flat", "num_generations": flat_generations},
        "tree": {},
        "tree-forced": {"branching": "forced", "root_children": tree.resolved_root_children},
    }[base]
    # tree-forced is the original release's algorithm: its loss gives every group one vote.
    optimization: dict[str, Any] = {"loss_aggregation": "group"} if base == "tree-forced" else {}
    engine: dict[str, Any] = {}
    for change in changes:
        key, equals, value = change.partition("=")
        if not equals or not key:
            raise BadInputError(f"--arms: {change!r} in {arm!r} is not key=value")
        if key in OPTIMIZATION_KEYS:
            optimization[key] = value
        elif key in ENGINE_KEYS:
            engine[key] = value
        elif key in TreeSettings.model_fields and key != "rollout":
            tree_updates[key] = value.split("|") if key == "split_delimiters" else value
        else:
            raise BadInputError(f"--arms: {arm!r} cannot change {key!r}; changes name a tree "
                                f"setting or one of {', '.join(OPTIMIZATION_KEYS + ENGINE_KEYS)}")
    try:
        settings = TreeSettings.model_validate({**tree.model_dump(), **tree_updates})
        OptimizationConfig(**optimization)
        EngineConfig(model="-", **engine)
    except ValidationError as error:
        raise BadInputError(f"--arms: {arm!r}: {error.errors()[0]['msg']}") from None
    return ArmSpec(name=arm, tree=settings, optimization=optimization, engine=engine)


def arm_tree(*, arm: str, tree: TreeSettings, flat_generations: int) -> TreeSettings:
    """The tree settings of `arm`, from the task's. `tree-forced` changes the branching rule
    only: it keeps the tree arm's number of root children (4, which is also what the forced
    figures before resample branching were measured with), not forced mode's default of 2."""
    return arm_spec(arm=arm, tree=tree, flat_generations=flat_generations).tree


def eval_steps(*, steps: int, points: int) -> list[int]:
    """The steps evaluated after step 0: every `steps // points` steps, the last one `steps`."""
    if not 1 <= points <= steps:
        raise BadInputError(f"--eval-points must be between 1 and --steps ({steps}), "
                            f"got {points}")
    interval = steps // points
    return [interval * k for k in range(1, points)] + [steps]


def tokens_to_reach(*, curve: Sequence[CurvePoint], target: float) -> float | None:
    """The tokens at which `curve` first reaches `target` accuracy, linearly interpolated between
    the last point below and the first at or above it; None when it never does."""
    previous: CurvePoint | None = None
    for tokens, accuracy in curve:
        if accuracy >= target - REACH_TOLERANCE:
            if previous is None:
                return tokens
            before_tokens, before_accuracy = previous
            share = (target - before_accuracy) / (accuracy - before_accuracy)
            return before_tokens + min(1.0, max(0.0, share)) * (tokens - before_tokens)
        previous = (tokens, accuracy)
    return None


def goal_verdict(
    *, tree_curve: Sequence[CurvePoint], flat_curve: Sequence[CurvePoint], goal: LearnGoal
) -> GoalVerdict:
    """Where the tree arm's mean curve reaches the flat arm's final mean accuracy."""
    flat_tokens, target = flat_curve[-1]
    return GoalVerdict(goal=goal, target_accuracy=target, flat_tokens=flat_tokens,
                       tree_tokens=tokens_to_reach(curve=tree_curve, target=target),
                       accuracy_gap=tree_curve[-1][1] - target,
                       flat_improved=target > flat_curve[0][1] + REACH_TOLERANCE)


def mean_curve(curves: Sequence[Sequence[CurvePoint]]) -> list[CurvePoint]:
    """Point-by-point means of curves sampled at the same steps."""
    return [(statistics.fmean(point[0] for point in points),
             statistics.fmean(point[1] for point in points))
            for points in zip(*curves, strict=True)]


def run_learn_bench(
    *,
    settings: TaskSettings,
    arms: Sequence[str],
    seeds: Sequence[int],
    eval_points: int,
    on_message: Callable[[str], None] = lambda message: None,
) -> LearnBenchResult:
    """Train every arm for every seed from `settings`' policy and evaluate the curves."""
    checked_arms(arms)
    curve_steps = eval_steps(steps=settings.steps, points=eval_points)
    with tempfile.TemporaryDirectory(prefix="treerpo-learn-") as folder:
        store = open_store(f"sqlite:///{Path(folder) / 'learn.db'}")
        try:
            before = greedy_eval(store=store, model=settings.policy, settings=settings,
                                 run_name="learn-eval-before")
            on_message(f"{settings.task}: greedy accuracy before {before.accuracy:.1%}")
            flat_generations = 0
            if any(arm.split(":")[0] == "flat" for arm in arms):
                flat_generations = _calibrate_flat(store=store, folder=Path(folder),
                                                   settings=settings, on_message=on_message)
            results = [ArmResult(arm, flat_generations if arm == "flat" else None)
                       for arm in arms]
            for seed in seeds:
                for result in results:
                    run = _run_arm(
                        store=store, folder=Path(folder), settings=replace(settings, seed=seed),
                        spec=arm_spec(arm=result.name, tree=settings.tree,
                                      flat_generations=flat_generations),
                        tag=f"learn-{slug(result.name)}-{seed}", curve_steps=curve_steps,
                        accuracy_before=before.accuracy)
                    result.runs.append(run)
                    on_message(f"{result.name} seed {seed}: {run.accuracy:.1%} after "
                               f"{run.tokens:,} tokens")
        finally:
            store.close()
    by_name = {result.name: result for result in results}
    goal = None
    if "flat" in by_name and "tree" in by_name:
        goal = goal_verdict(tree_curve=by_name["tree"].curve, flat_curve=by_name["flat"].curve,
                            goal=settings.goal)
    return LearnBenchResult(
        task=settings.task, steps=settings.steps, problems_per_step=settings.problems_per_step,
        seeds=list(seeds), eval_steps=curve_steps, accuracy_before=before.accuracy,
        arms=results, goal=goal)


def _calibrate_flat(
    *, store: Store, folder: Path, settings: TaskSettings, on_message: Callable[[str], None]
) -> int:
    """GRPO's samples per problem that decode about as many tokens as the `tree` arm: one step
    (learning rate 0) of each on the same problems gives tree tokens per problem and the tokens
    of one free sample."""
    calibration = replace(settings, steps=1, learning_rate=0.0)
    per_problem: dict[str, float] = {}
    for arm in ("tree", "flat"):
        tree = arm_tree(arm=arm, tree=settings.tree, flat_generations=CALIBRATION_SAMPLES)
        summary = train_chained(store=store, output_dir=folder / f"calibration-{arm}",
                                settings=calibration, run_name=f"learn-calibration-{arm}",
                                tree=tree)
        run_id = repository.find_run(store, summary.run_name).id
        per_problem[arm] = statistics.fmean(
            grown.num_tokens for grown in repository.list_trees(store, run_id=run_id))
    sample_tokens = max(1.0, per_problem["flat"] / CALIBRATION_SAMPLES)
    generations = max(2, round(per_problem["tree"] / sample_tokens))
    on_message(f"tree: {per_problem['tree']:.0f} tokens per problem, a sample "
               f"{sample_tokens:.0f} → flat gets {generations} samples per problem")
    return generations


def _run_arm(
    *, store: Store, folder: Path, settings: TaskSettings, spec: ArmSpec, tag: str,
    curve_steps: list[int], accuracy_before: float,
) -> ArmRun:
    """Train one arm for one seed, then evaluate its checkpoints at `curve_steps` (the first is
    the interval between them) and delete them."""
    output_dir = folder / tag
    summary = train_chained(store=store, output_dir=output_dir, settings=settings,
                            run_name=f"{tag}-train", tree=spec.tree,
                            optimization=spec.optimization, engine=spec.engine,
                            save_steps=curve_steps[0])
    run_id = repository.find_run(store, summary.run_name).id
    tree_tokens = {grown.tree_id: grown.num_tokens
                   for grown in repository.list_trees(store, run_id=run_id)}
    rows = repository.list_train_steps(store, run_id=run_id)
    cumulative, seen, total = {}, set(), 0
    for row in rows:
        total += sum(tree_tokens[tree_id] for tree_id in row.tree_ids if tree_id not in seen)
        seen.update(row.tree_ids)
        cumulative[row.step] = total
    curve: list[CurvePoint] = [(0.0, accuracy_before)]
    for step in curve_steps:
        model = output_dir if step == settings.steps else output_dir / f"{CHECKPOINT_PREFIX}{step}"
        outcome = greedy_eval(store=store, model=str(model), settings=settings,
                              run_name=f"{tag}-eval-{step}")
        curve.append((float(cumulative[step]), outcome.accuracy))
    shutil.rmtree(output_dir)
    metrics = [row.metrics for row in rows]
    last = metrics[-max(1, math.ceil(len(metrics) * LAST_STEPS_SHARE)):]
    return ArmRun(
        seed=settings.seed, accuracy=curve[-1][1], tokens=total, curve=curve,
        on_policy_reward_last=statistics.fmean(m["on_policy_reward"] for m in last),
        nonzero_token_share=statistics.fmean(m["nonzero_token_share"] for m in metrics),
        forced_token_share=statistics.fmean(m["forced_token_share"] for m in metrics))
