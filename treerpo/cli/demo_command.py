"""`treerpo demo`: evaluate the shipped tiny policy, train it with chained TreeRPO, evaluate it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from treerpo.cli.common import (
    DEFAULT_DB,
    DbOption,
    JsonOption,
    print_json,
    stdout_console,
    store_at,
)
from treerpo.errors import BadInputError
from treerpo.limits import INT64_MAX, SEED_MAX

SPARK_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], *, width: int = 60) -> tuple[str, float, float]:
    """A curve for the terminal: one line of at most `width` bars, each the mean of consecutive
    values, scaled from the lowest bar (▁) to the highest (█). Returns the line and the lowest
    and highest bar means, which the caller prints as its scale."""
    buckets = max(1, -(-len(values) // width))  # values per bar, rounded up
    means = [sum(values[i:i + buckets]) / len(values[i:i + buckets])
             for i in range(0, len(values), buckets)]
    low, high = min(means), max(means)
    span = high - low
    top = len(SPARK_BARS) - 1
    line = "".join(SPARK_BARS[round((mean - low) / span * top) if span > 0 else 0]
                   for mean in means)
    return line, low, high


def demo(
    steps: Annotated[int, typer.Option("--steps", min=1, max=INT64_MAX,
                                       help="Training steps.")] = 120,
    eval_problems: Annotated[int, typer.Option(
        "--eval-problems", min=1, max=INT64_MAX,
        help="Held-out arith problems evaluated before and after."),
    ] = 200,
    problems_per_step: Annotated[int, typer.Option(
        "--problems-per-step", min=1, max=INT64_MAX,
        help="Trees grown and trained on per step.")] = 16,
    output_dir: Annotated[Path, typer.Option(
        "--output-dir", help="Where the trained policy goes.")] = Path("data/demo"),
    seed: Annotated[int, typer.Option("--seed", min=0, max=SEED_MAX, help="Random seed.")] = 0,
    db: DbOption = DEFAULT_DB,
    json_output: JsonOption = False,
) -> None:
    """Run the whole pipeline on CPU: eval, chained TreeRPO training, eval again.

    Uses the tiny arithmetic policy shipped inside the package and the built-in `arith`
    problems (no GPU, no download): greedy accuracy on held-out problems before, chained
    training (grow trees with the current policy, store, score, update) for `--steps` steps,
    greedy accuracy after, a before/after table (with the share of answers that are worked
    out rather than answered at once), the curve of the on-policy reward (the mean reward of
    the leaves the policy sampled itself) per step, and the ids of a few trees to look at
    with `treerpo inspect`; it ends by writing the train run's report and one tree's page as
    HTML (`OUTPUT_DIR/report.html`, `OUTPUT_DIR/tree.html`) and printing their paths. Training
    uses deterministic kernels: the same seed on the same machine and thread count prints the
    same figures. About 4 minutes on 2 cores.

    Examples:

        treerpo demo

        treerpo demo --steps 5 --eval-problems 50 --json
    """
    from treerpo.bench.tasks import task_settings
    from treerpo.demo import run_demo

    if output_dir.exists() and not output_dir.is_dir():
        raise BadInputError(f"--output-dir {output_dir} is a file, not a folder")
    settings = replace(task_settings("arith"), steps=steps, eval_problems=eval_problems,
                       problems_per_step=problems_per_step, seed=seed)
    console = stdout_console()
    quiet = json_output

    def say(message: str) -> None:
        if not quiet:
            console.print(f"[dim]·[/dim] {message}", markup=True, highlight=False)

    def on_step(step: int, on_policy_reward: float) -> None:
        if not quiet and (step == 1 or step % 10 == 0):
            console.print(f"  step {step:>3}  on-policy reward {on_policy_reward:.3f}",
                          highlight=False)

    with store_at(db) as store:
        result = run_demo(store=store, output_dir=output_dir, settings=settings,
                          on_message=say, on_step=on_step)
        report_path, tree_path = write_demo_pages(store, result=result, folder=output_dir)
    if json_output:
        print_json({"accuracy_before": result.accuracy_before,
                    "accuracy_after": result.accuracy_after, "steps": result.steps,
                    "seconds": round(result.seconds, 1), "report_html": str(report_path),
                    "tree_html": None if tree_path is None else str(tree_path)})
        return
    table = Table(title=f"treerpo demo · {eval_problems} held-out arith problems, greedy")
    for column in ("", "accuracy", "worked out"):
        table.add_column(column, justify="right")
    table.add_row("shipped policy (before)", f"{result.accuracy_before:.1%}",
                  f"{result.worked_before:.0%}")
    table.add_row(f"after {result.steps} TreeRPO steps", f"{result.accuracy_after:.1%}",
                  f"{result.worked_after:.0%}")
    table.add_row("change", f"{(result.accuracy_after - result.accuracy_before) * 100:+.1f} points",
                  f"{(result.worked_after - result.worked_before) * 100:+.0f} points")
    console.print(table)
    console.print("worked out: greedy answers that show working lines (`4 + 9 = 13`) before "
                  "the boxed answer", highlight=False)
    rewards = result.on_policy_rewards
    if rewards:
        curve, low, high = sparkline(rewards)
        console.print(f"on-policy reward per step  {curve}  (▁ {low:.2f} … █ {high:.2f}; "
                      f"step 1 {rewards[0]:.2f}, last {rewards[-1]:.2f})", highlight=False)
    else:
        console.print("no steps ran", highlight=False)
    sample = result.tree_ids[-3:]
    console.print(f"trees to look at: {', '.join(map(str, sample))}  "
                  f"(treerpo inspect {sample[-1] if sample else 'ID'})", highlight=False)
    console.print(f"trained policy: {result.output_dir} · {result.seconds:.0f} s", highlight=False)
    console.print(f"run report: {report_path}", highlight=False, soft_wrap=True)
    if tree_path is not None:
        console.print(f"tree page:  {tree_path}  (open both in a browser; `treerpo serve` "
                      "browses the whole store)", highlight=False, soft_wrap=True)


def write_demo_pages(store, *, result, folder: Path) -> tuple[Path, Path | None]:
    """The train run's report (with the pages of its first and last step's trees) and the
    page of the last tree it trained on, written into `folder`."""
    from treerpo.web.export import write_run_report, write_tree_page

    report_path = write_run_report(store, run_name=result.train_run,
                                   path=folder / "report.html")[0]
    tree_path = None
    if result.tree_ids:
        tree_path = write_tree_page(store, tree_id=result.tree_ids[-1],
                                    path=folder / "tree.html")
    return report_path, tree_path


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
