"""`treerpo score`: back-fill leaf rewards, node values and sibling advantages."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from treerpo.cli import options as opt
from treerpo.cli.common import (
    DEFAULT_DB,
    DbOption,
    JsonOption,
    print_json,
    progress_bar,
    stdout_console,
    store_at,
)
from treerpo.limits import INT64_MAX

if TYPE_CHECKING:  # the library loads when the command runs
    from treerpo.scoring.scorer import ScoreStats

def score(
    tree_id: Annotated[list[int] | None, typer.Option(
        "--tree-id", min=1, max=INT64_MAX, help="Score only this tree (repeatable).")] = None,
    run: Annotated[str | None, typer.Option("--run", help="Only trees of this run.")] = None,
    rescore: Annotated[bool, typer.Option(
        "--rescore", help="Recompute trees that are already scored.")] = False,
    reward_fn: opt.RewardFn = None,
    reward_weights: opt.RewardWeights = None,
    reward_timeout: opt.RewardTimeout = 10.0,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, max=INT64_MAX, help="Reward worker processes (default: in this "
        "process, or one per CPU when the leaves would take more than a few seconds).")] = None,
    db: DbOption = DEFAULT_DB,
    json_output: JsonOption = False,
) -> None:
    """Score stored trees: leaf rewards, node values (mean of descendant leaves), advantages.

    A leaf's reward is 1 when the last \\boxed{...} of its path's completion equals the
    reference mathematically (math-verify), else 0; `--reward-fn` plugs in your own (repeat it
    for a weighted sum, `--reward-weights`; `./module.py` in the working folder is found). Each
    node's value is the mean reward of all leaves below it; a node with siblings gets
    advantage = value - mean value of its sibling group. Idempotent: scored trees are skipped
    unless `--rescore`. All or nothing: a failing reward function leaves the store unchanged.

    Examples:

        treerpo score

        treerpo score --tree-id 3 --tree-id 4 --rescore

        treerpo score --rescore --reward-fn my_rewards:length_penalised

        treerpo score --reward-fn rw:fmt --reward-fn rw:ans --reward-weights 0.2,0.8
    """
    from treerpo.scoring.rewards import combine_reward_specs, resolve_reward_fn
    from treerpo.scoring.store_scoring import score_stored_trees, select_trees_to_score
    from treerpo.store import repository

    reward_spec = combine_reward_specs(reward_fn or [], opt.parse_reward_weights(reward_weights))
    resolve_reward_fn(reward_spec)  # refuse a bad --reward-fn before opening the store
    console = stdout_console()
    with store_at(db) as store:
        run_id = repository.find_run(store, run).id if run is not None else None
        selected = select_trees_to_score(store, tree_ids=tree_id, run_id=run_id, rescore=rescore)
        progress = progress_bar(label="score", unit="leaves", console=console,
                                disable=json_output)
        task = progress.add_task("leaves", total=None)
        with progress:
            stats = score_stored_trees(
                store, tree_ids=selected, reward_fn_spec=reward_spec, workers=workers,
                reward_timeout=reward_timeout,
                on_progress=lambda done, total: progress.update(task, completed=done,
                                                                total=total))
    if json_output:
        print_json(stats_json(stats))
    else:
        console.print(stats_table(stats))


def stats_json(stats: ScoreStats) -> dict:
    return {
        "trees": stats.num_trees, "leaves": stats.num_leaves, "mean_reward": stats.mean_reward,
        "uniform_tree_share": stats.uniform_tree_share,
        "mean_abs_advantage": stats.mean_abs_advantage,
        "leaves_per_second": round(stats.leaves_per_second, 1), "seconds": round(stats.seconds, 3),
        "workers": stats.workers,
    }


def _fmt(value: float | None, pattern: str = "{:.3f}") -> str:
    return "–" if value is None else pattern.format(value)


def stats_table(stats: ScoreStats) -> Table:
    table = Table(title="score")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for row in [
        ("trees scored", f"{stats.num_trees}"),
        ("leaves", f"{stats.num_leaves}"),
        ("mean reward", _fmt(stats.mean_reward)),
        ("trees whose leaves all agree (no signal)", _fmt(stats.uniform_tree_share, "{:.1%}")),
        ("mean |advantage|", _fmt(stats.mean_abs_advantage)),
        ("leaves / s", f"{stats.leaves_per_second:,.0f}"),
        ("worker processes", f"{stats.workers}"),
        ("seconds", f"{stats.seconds:.2f}"),
    ]:
        table.add_row(*row)
    return table


def register(app: typer.Typer) -> None:
    app.command("score")(score)
