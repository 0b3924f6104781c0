"""`treerpo bench ...`: benchmarks that print a table of figures and the ratios against goals."""

from __future__ import annotations

import typer
from rich.table import Table

from treerpo.cli.common import JsonOption, print_json, stdout_console

bench_app = typer.Typer(help="Benchmarks: print figures and their goals.", no_args_is_help=True)


def _goal_table(title: str, rows: list[tuple[str, str, str]]) -> Table:
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("goal", justify="right")
    for row in rows:
        table.add_row(*row)
    return table


@bench_app.command("store")
def bench_store(
    num_trees: int = typer.Option(200, "--num-trees", min=1, help="Trees written."),
    nodes_per_tree: int = typer.Option(120, "--nodes-per-tree", min=3, help="Nodes per tree."),
    inspect_nodes: int = typer.Option(10_000, "--inspect-nodes", min=3,
                                      help="Nodes of the tree loaded and rendered."),
    json_output: JsonOption = False,
) -> None:
    """Write seed-shaped synthetic trees (depth up to 7, ~150-token segments with logprobs,
    coverage children) into a temporary SQLite store, one transaction per tree, then load and
    render a 10,000-node tree as `inspect` does.

    Examples:

        treerpo bench store

        treerpo bench store --json
    """
    from treerpo.bench.store_bench import run_store_bench

    result = run_store_bench(num_trees=num_trees, nodes_per_tree=nodes_per_tree,
                             inspect_nodes=inspect_nodes)
    if json_output:
        print_json({"nodes_per_second": round(result.nodes_per_second, 1),
                    "inspect_seconds": round(result.inspect_seconds, 4),
                    "num_nodes": result.num_nodes})
        return
    stdout_console().print(_goal_table("bench store (SQLite)", [
        ("trees written", f"{result.trees_written}", ""),
        ("nodes written", f"{result.nodes_written}", ""),
        ("nodes / s", f"{result.nodes_per_second:,.0f}", "≥ 50,000"),
        ("inspected tree nodes", f"{result.num_nodes}", ""),
        ("load s", f"{result.load_seconds:.3f}", ""),
        ("render s", f"{result.render_seconds:.3f}", ""),
        ("inspect s (load + render)", f"{result.inspect_seconds:.3f}", "< 0.5"),
    ]))


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
