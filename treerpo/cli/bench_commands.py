"""`treerpo bench ...`: benchmarks that print a table of figures and the ratios against goals."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
    batch_size: int = typer.Option(16, "--batch-size", min=1,
                                   help="Trees per transaction (generate's --batch-size)."),
    json_output: JsonOption = False,
) -> None:
    """Write seed-shaped synthetic trees (depth up to 7, ~150-token segments with logprobs,
    coverage children) into a temporary SQLite store as `generate` does (one transaction per
    batch of problems, each tree whole), then load and render a 10,000-node tree as `inspect`
    does.

    Examples:

        treerpo bench store

        treerpo bench store --json
    """
    from treerpo.bench.store_bench import run_store_bench

    result = run_store_bench(num_trees=num_trees, nodes_per_tree=nodes_per_tree,
                             inspect_nodes=inspect_nodes, batch_size=batch_size)
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


@bench_app.command("generate")
def bench_generate(
    problems: int = typer.Option(8, "--problems", min=1, help="Problems in flight."),
    max_new_tokens: int = typer.Option(200, "--max-new-tokens", min=2,
                                       help="Completion tokens per path (tree and flat)."),
    hidden_size: int = typer.Option(256, "--hidden-size", min=8,
                                    help="Hidden size of the random Qwen2 model (multiple of 8)."),
    layers: int = typer.Option(4, "--layers", min=1, help="Layers of the random model."),
    seed: int = typer.Option(0, "--seed", help="Seed of the model, the engine and the growth."),
    data_file: Annotated[Path | None, typer.Option(
        "--data-file", exists=True, help="GSM8K-style .jsonl/.json/.parquet/.csv whose first "
        "rows are the problems; default: the first GSM8K test questions, built in.")] = None,
    threads: int = typer.Option(1, "--threads", min=0,
                                help="Torch CPU threads during the run; 0 keeps torch's default."),
    json_output: JsonOption = False,
) -> None:
    """Grow trees for several problems at once with the Hugging Face engine on a random Qwen2
    model, then sample flat (GRPO) as many leaves with the same engine: tokens decoded per unique
    tree token, and seconds per leaf of the tree against flat sampling.

    Tree settings are the defaults with segment lengths scaled to --max-new-tokens; the entropy
    threshold is the median entropy the warm-up decoded, because a random model's top-20 entropy
    is ~3.0 nats everywhere.

    Examples:

        treerpo bench generate

        treerpo bench generate --problems 4 --max-new-tokens 300 --json
    """
    from treerpo.bench.generate_bench import run_generate_bench

    result = run_generate_bench(problems=problems, max_new_tokens=max_new_tokens,
                                hidden_size=hidden_size, num_layers=layers, seed=seed,
                                data_file=data_file, threads=threads)
    if json_output:
        print_json({"waste_ratio": result.waste_ratio,
                    "seconds_per_leaf_ratio": round(result.seconds_per_leaf_ratio, 4),
                    "tokens_per_leaf_ratio": round(result.tokens_per_leaf_ratio, 4),
                    "leaves": result.tree.num_leaves,
                    "tokens_decoded": result.tree.decoded_tokens,
                    "unique_tokens": result.tree.unique_tokens,
                    "tree_seconds": round(result.tree_seconds, 3),
                    "tree_cpu_seconds": round(result.tree_cpu_seconds, 3),
                    "flat_leaves": result.flat.num_leaves,
                    "flat_tokens": result.flat.decoded_tokens,
                    "flat_seconds": round(result.flat_seconds, 3),
                    "flat_cpu_seconds": round(result.flat_cpu_seconds, 3),
                    "cpu_seconds_per_leaf_ratio": round(result.cpu_seconds_per_leaf_ratio, 4),
                    "entropy_threshold": round(result.tree_settings.entropy_threshold, 4),
                    "model_parameters": result.model_parameters})
        return
    tree, flat = result.tree, result.flat
    stdout_console().print(_goal_table("bench generate (HF engine, CPU)", [
        ("problems in flight", f"{result.problems}", ""),
        ("model parameters", f"{result.model_parameters:,}", ""),
        ("entropy threshold (warm-up median)",
         f"{result.tree_settings.entropy_threshold:.3f}", ""),
        ("tree leaves / nodes / max depth / waves",
         f"{tree.num_leaves} / {tree.num_nodes} / {tree.max_depth} / {tree.waves}", ""),
        ("tree tokens decoded", f"{tree.decoded_tokens:,}", ""),
        ("tree unique tokens", f"{tree.unique_tokens:,}", ""),
        ("tree s (CPU s)", f"{result.tree_seconds:.2f} ({result.tree_cpu_seconds:.2f})", ""),
        ("flat leaves", f"{flat.num_leaves}", ""),
        ("flat tokens decoded", f"{flat.decoded_tokens:,}", ""),
        ("flat s (CPU s)", f"{result.flat_seconds:.2f} ({result.flat_cpu_seconds:.2f})", ""),
        ("waste: tokens decoded / unique tree tokens", f"{result.waste_ratio:.2f}", "= 1.00"),
        ("tokens per leaf, tree ÷ flat", f"{result.tokens_per_leaf_ratio:.2f}", ""),
        ("CPU s per leaf, tree ÷ flat", f"{result.cpu_seconds_per_leaf_ratio:.2f}", ""),
        ("s per leaf, tree ÷ flat", f"{result.seconds_per_leaf_ratio:.2f}", "≤ 0.6"),
    ]))


@bench_app.command("replay")
def bench_replay(
    num_trees: int = typer.Option(2, "--num-trees", min=1, help="Trees in the update."),
    tree_nodes: int = typer.Option(24, "--tree-nodes", min=3, help="Nodes per tree (about)."),
    prompt_len: int = typer.Option(200, "--prompt-len", min=1, help="Prompt tokens."),
    segment_len: int = typer.Option(150, "--segment-len", min=2, help="Mean segment tokens."),
    hidden_size: int = typer.Option(512, "--hidden-size", min=64, help="Model width."),
    layers: int = typer.Option(2, "--layers", min=1, help="Model layers."),
    vocab_size: int = typer.Option(32_000, "--vocab-size", min=400, help="Vocabulary size."),
    repeats: int = typer.Option(2, "--repeats", min=1, help="Timed updates (best is kept)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    json_output: JsonOption = False,
) -> None:
    """Tree-packed update vs per-sibling-group replay on seed-shaped trees (CPU, fp32).

    Both compute the same loss and gradient on the same synthetic scored trees (prompt ~200
    tokens, depth up to 7, ~150-token segments, coverage children) with the same small random
    Qwen2 (Qwen2.5-0.5B's proportions at width 512, 2 layers, a 32,000-token vocabulary).
    Goals: speedup >= 3, packed tokens / unique tokens <= 1.02, max |logprob diff| <= 1e-5,
    gradient cosine >= 0.9999.

    Examples:

        treerpo bench replay

        treerpo bench replay --num-trees 1 --tree-nodes 8 --segment-len 20 --json
    """
    from treerpo.bench.replay_bench import run_replay_bench

    result = run_replay_bench(num_trees=num_trees, tree_nodes=tree_nodes, prompt_len=prompt_len,
                              segment_len=segment_len, hidden_size=hidden_size,
                              num_layers=layers, vocab_size=vocab_size, repeats=repeats,
                              seed=seed)
    if json_output:
        print_json({
            "speedup": round(result.speedup, 3),
            "packed_tokens": result.packed_tokens,
            "naive_tokens": result.naive_tokens,
            "unique_tokens": result.unique_tokens,
            "max_abs_logprob_diff": result.max_abs_logprob_diff,
            "grad_cosine": result.grad_cosine,
            "packed_seconds": round(result.packed_seconds, 4),
            "naive_seconds": round(result.naive_seconds, 4),
        })
        return
    stdout_console().print(_goal_table("bench replay (CPU, fp32)", [
        ("trees / nodes", f"{result.num_trees} / {result.num_nodes}", ""),
        ("packed update s", f"{result.packed_seconds:.3f}", ""),
        ("per-group replay s", f"{result.naive_seconds:.3f}", ""),
        ("speedup", f"{result.speedup:.2f}×", "≥ 3"),
        ("tokens forwarded: packed / per-group", f"{result.packed_tokens:,} / "
         f"{result.naive_tokens:,}", ""),
        ("packed / unique tokens", f"{result.packed_per_unique:.3f}", "≤ 1.02"),
        ("max |logprob diff|", f"{result.max_abs_logprob_diff:.2e}", "≤ 1e-5"),
        ("gradient cosine", f"{result.grad_cosine:.6f}", "≥ 0.9999"),
    ]))


@bench_app.command("learn")
def bench_learn(
    seeds: int = typer.Option(3, "--seeds", min=1, help="Seeds per method (0, 1, ...)."),
    steps: int = typer.Option(120, "--steps", min=1, help="Training steps per run."),
    problems_per_step: int = typer.Option(16, "--problems-per-step", min=1,
                                          help="Problems per step."),
    eval_problems: int = typer.Option(200, "--eval-problems", min=1,
                                      help="Held-out arith problems evaluated."),
    json_output: JsonOption = False,
) -> None:
    """TreeRPO vs GRPO (flat) from the shipped arith policy at about the same token budget.

    Same steps and problems per step; GRPO's samples per problem are set so that both generate
    about as many tokens. Prints greedy accuracy after training (mean and spread over seeds)
    against the tokens generated, and the share of greedy answers that are worked out.
    The defaults (3 seeds × 2 methods × 120 steps) take about 20 minutes on 2 CPU cores.

    Examples:

        treerpo bench learn

        treerpo bench learn --seeds 1 --steps 2 --problems-per-step 2 --eval-problems 10 --json
    """
    from treerpo.bench.learn_bench import run_learn_bench
    from treerpo.demo import DemoSettings

    settings = DemoSettings(steps=steps, problems_per_step=problems_per_step,
                            eval_problems=eval_problems)
    console = stdout_console()
    result = run_learn_bench(
        seeds=list(range(seeds)), settings=settings,
        on_message=(lambda message: None) if json_output
        else (lambda message: console.print(f"· {message}", highlight=False)))
    if json_output:
        print_json({
            "accuracy_before": result.accuracy_before,
            "worked_before": result.worked_before,
            "methods": [{"method": m.method, "num_generations": m.num_generations,
                         "accuracies": m.accuracies, "mean_accuracy": m.mean_accuracy,
                         "spread": m.spread, "tokens": m.tokens,
                         "worked_shares": m.worked_shares} for m in result.methods],
        })
        return
    table = Table(title=f"bench learn · arith, {result.steps} steps × "
                        f"{result.problems_per_step} problems, seeds {result.seeds}, "
                        f"greedy accuracy before {result.accuracy_before:.1%}")
    for column in ("method", "accuracy after (mean ± sd)", "per seed", "tokens generated",
                   "worked out"):
        table.add_column(column, justify="right")
    for method in result.methods:
        table.add_row(method.method, f"{method.mean_accuracy:.1%} ± {method.spread:.1%}",
                      " ".join(f"{a:.1%}" for a in method.accuracies),
                      f"{method.mean_tokens:,.0f}",
                      " ".join(f"{share:.0%}" for share in method.worked_shares))
    console.print(table)
    console.print(f"worked out: greedy answers that show working lines "
                  f"(before training: {result.worked_before:.0%})", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
