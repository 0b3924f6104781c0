"""`treerpo bench ...`: benchmarks that print a table of figures and the ratios against goals."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from treerpo.cli.common import JsonOption, print_json, stdout_console
from treerpo.errors import BadInputError

if TYPE_CHECKING:
    from rich.console import Console

    from treerpo.bench.learn_bench import GoalVerdict, LearnBenchResult

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
    rounds: int = typer.Option(3, "--rounds", min=1,
                               help="Interleaved rounds (tree then flat, then flat then tree, "
                               "...); the ratio is the median of the rounds' ratios."),
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
                                data_file=data_file, threads=threads, rounds=rounds)
    if json_output:
        print_json({"waste_ratio": result.waste_ratio,
                    "seconds_per_leaf_ratio": round(result.seconds_per_leaf_ratio, 4),
                    "round_ratios": [round(ratio, 4) for ratio in result.round_ratios],
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
        ("tree s (CPU s), median",
         f"{result.tree_seconds:.2f} ({result.tree_cpu_seconds:.2f})", ""),
        ("flat leaves", f"{flat.num_leaves}", ""),
        ("flat tokens decoded", f"{flat.decoded_tokens:,}", ""),
        ("flat s (CPU s), median",
         f"{result.flat_seconds:.2f} ({result.flat_cpu_seconds:.2f})", ""),
        ("waste: tokens decoded / unique tree tokens", f"{result.waste_ratio:.2f}", "= 1.00"),
        ("tokens per leaf, tree ÷ flat", f"{result.tokens_per_leaf_ratio:.2f}", ""),
        ("CPU s per leaf, tree ÷ flat", f"{result.cpu_seconds_per_leaf_ratio:.2f}", ""),
        ("s per leaf, tree ÷ flat, per round",
         ", ".join(f"{ratio:.2f}" for ratio in result.round_ratios), ""),
        (f"s per leaf, tree ÷ flat (median of {len(result.round_ratios)})",
         f"{result.seconds_per_leaf_ratio:.2f}", "≤ 0.6"),
    ]))


@bench_app.command("workers")
def bench_workers(
    workers: str = typer.Option("1,2", "--workers", help="Worker counts, one round each."),
    problems: int = typer.Option(16, "--problems", min=1, max=5000,
                                 help="arith problems of the shared run."),
    max_new_tokens: int = typer.Option(160, "--max-new-tokens", min=8, max=4096,
                                       help="Path budget of each tree."),
    json_output: JsonOption = False,
) -> None:
    """Trees per second with 1 and 2 `treerpo generate` processes sharing one run on one SQLite
    store (the shipped tiny arith policy, one problem per batch, one thread per process), and the
    share of the workers' time spent in the store (writing trees, claiming batches).

    Examples:

        treerpo bench workers

        treerpo bench workers --workers 1,2,3 --problems 32 --json
    """
    from treerpo.bench.workers_bench import run_workers_round

    try:
        counts = [int(count) for count in workers.split(",")]
    except ValueError as error:
        raise BadInputError(f"--workers {workers!r}: comma-separated counts, e.g. 1,2") from error
    if not counts or any(count < 1 or count > 16 for count in counts):
        raise BadInputError(f"--workers {workers!r}: counts from 1 to 16")
    rounds = [run_workers_round(workers=count, problems=problems, max_new_tokens=max_new_tokens)
              for count in counts]
    base = rounds[0].trees_per_second
    if json_output:
        print_json([{"workers": r.workers, "trees": r.trees,
                     "wall_seconds": round(r.wall_seconds, 2),
                     "trees_per_second": round(r.trees_per_second, 3),
                     "store_share": round(r.store_share, 4),
                     "trees_per_worker": r.trees_per_worker} for r in rounds])
        return
    table = Table(title=f"bench workers · {problems} arith problems, one store (SQLite)")
    for header in ("workers", "trees", "wall s", "trees / s", f"vs {rounds[0].workers}",
                   "store share", "trees per worker"):
        table.add_column(header, justify="right" if header != "trees per worker" else "left")
    for r in rounds:
        table.add_row(f"{r.workers}", f"{r.trees}", f"{r.wall_seconds:.1f}",
                      f"{r.trees_per_second:.2f}", f"{r.trees_per_second / base:.2f}x",
                      f"{r.store_share:.1%}",
                      ", ".join(f"{name} {count}" for name, count in
                                sorted(r.trees_per_worker.items())))
    stdout_console().print(table)


@bench_app.command("follow")
def bench_follow(
    steps: int = typer.Option(20, "--steps", min=1, max=10_000, help="Optimizer steps per arm."),
    trees_per_step: int = typer.Option(16, "--trees-per-step", min=1, max=1024,
                                       help="Trees (problems) per optimizer step."),
    generators: int = typer.Option(1, "--generators", min=1, max=16,
                                   help="generate --follow-policy processes of the follow arm."),
    max_staleness: int = typer.Option(1, "--max-staleness", min=0, max=100,
                                      help="The follow arm's --max-staleness."),
    max_new_tokens: int = typer.Option(80, "--max-new-tokens", min=8, max=4096,
                                       help="Path budget of each tree."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of both arms."),
    json_output: JsonOption = False,
) -> None:
    """Chained training (`train --dataset`, growth then update every step) against the
    asynchronous pipeline (`train --follow` and `generate --follow-policy` processes, growth
    overlapping the updates), same steps and trees per step, the shipped tiny arith policy with
    the arith task's settings, each arm on its own SQLite store with all the machine's cores.
    Wall time from launch to the last exit; trees grown and trained, mean staleness, and the
    mean on-policy reward of the last quarter of the steps.

    Examples:

        treerpo bench follow

        treerpo bench follow --steps 40 --generators 2 --max-staleness 2 --json
    """
    from treerpo.bench.follow_bench import run_chained_arm, run_follow_arm

    cores = os.cpu_count() or 1
    common = {"steps": steps, "trees_per_step": trees_per_step,
              "max_new_tokens": max_new_tokens, "seed": seed, "cores": cores}
    arms = [run_chained_arm(**common),
            run_follow_arm(**common, generators=generators, max_staleness=max_staleness)]
    speedup = arms[0].wall_seconds / arms[1].wall_seconds
    if json_output:
        print_json({"arms": [{"arm": a.arm, "wall_seconds": round(a.wall_seconds, 2),
                              "steps": a.steps, "steps_per_second": round(a.steps_per_second, 4),
                              "trees_grown": a.trees_grown, "trees_trained": a.trees_trained,
                              "stale_skipped": a.stale_skipped,
                              "staleness_mean": a.staleness_mean,
                              "late_reward": round(a.late_reward, 4)} for a in arms],
                    "speedup": round(speedup, 3)})
        return
    table = Table(title=f"bench follow · {steps} steps × {trees_per_step} arith trees, "
                        f"{cores} cores")
    for header in ("arm", "wall s", "steps/s", "grown", "trained", "stale", "staleness",
                   "late reward"):
        table.add_column(header, justify="left" if header == "arm" else "right")
    for a in arms:
        table.add_row(a.arm, f"{a.wall_seconds:.1f}", f"{a.steps_per_second:.3f}",
                      f"{a.trees_grown}", f"{a.trees_trained}", f"{a.stale_skipped}",
                      "–" if a.staleness_mean is None else f"{a.staleness_mean:.2f}",
                      f"{a.late_reward:.3f}")
    console = stdout_console()
    console.print(table)
    console.print(f"follow vs chained: {speedup:.2f}x the steps per second (wall, start-up "
                  "included)")


@bench_app.command("replay")
def bench_replay(
    num_trees: int = typer.Option(1, "--num-trees", min=1, help="Trees in the update."),
    tree_nodes: int = typer.Option(24, "--tree-nodes", min=3, help="Nodes per tree (about)."),
    prompt_len: int = typer.Option(200, "--prompt-len", min=1, help="Prompt tokens."),
    segment_len: int = typer.Option(150, "--segment-len", min=2, help="Mean segment tokens."),
    hidden_size: int = typer.Option(512, "--hidden-size", min=64, help="Model width."),
    layers: int = typer.Option(8, "--layers", min=1, help="Model layers."),
    vocab_size: int = typer.Option(32_000, "--vocab-size", min=400, help="Vocabulary size."),
    logit_std: float = typer.Option(4.0, "--logit-std", min=0.1,
                                    help="Standard deviation the model's logits are scaled to."),
    rounds: int = typer.Option(3, "--rounds", min=1,
                               help="Interleaved rounds (each method once per round, the order "
                               "rotated); times are medians over rounds."),
    attn_implementation: str = typer.Option(
        "auto", "--attn-implementation",
        help="Packed update's attention: auto (tree on CPU, flex_attention on CUDA), tree, "
        "flex_attention, sdpa or eager (dense L x L mask). The baselines use sdpa."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    bf16: bool = typer.Option(False, "--bf16", help="Time under bfloat16 autocast (CUDA); "
                              "exactness is still checked in float32."),
    max_packed_tokens: int | None = typer.Option(None, "--max-packed-tokens", min=1,
                                                 help="Split each tree into sub-packs."),
    paths_micro_batch_tokens: int | None = typer.Option(
        None, "--paths-micro-batch-tokens", min=1,
        help="paths baseline: length-bucketed micro-batches of at most this many padded "
        "tokens, one backward each [default: one batch]."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    json_output: JsonOption = False,
) -> None:
    """Tree-packed update vs the paths and groups replays of the same trees (fp32 weights).

    All three compute the same loss and gradient on the same synthetic scored trees (prompt ~200
    tokens, depth up to 7, ~150-token segments, coverage children) with the same random Qwen2
    (Qwen2.5-0.5B's proportions at width 512, 8 layers, 32,000-token vocabulary, logits scaled
    to std 4). packed: each unique token forwarded once with tree attention. paths: every
    root-to-leaf path in one right-padded batch, LM head only at trained positions (what a
    TRL-style trainer does). groups: every child re-forwarded with its prefix, one backward per
    sibling group. Times are medians of interleaved rounds; peak memory is the largest over
    rounds (sampled RSS above the start on CPU, allocator peak on CUDA).

    token_ratio_limit = path tokens / unique tokens (the best any packing can do against paths);
    efficiency = speedup_vs_paths / token_ratio_limit (wall clock). Goals: efficiency >= 0.8,
    packed peak memory <= paths peak memory, max |logprob diff| <= 2e-5, gradient cosine >=
    0.9999. `--json` prints {"speedup_vs_paths", "speedup_vs_groups", "token_ratio_limit",
    "efficiency", "max_abs_logprob_diff", "grad_cosine", "packed_peak_mb", "paths_peak_mb"}.

    Examples:

        treerpo bench replay

        treerpo bench replay --device cuda --bf16 --num-trees 4

        treerpo bench replay --num-trees 1 --tree-nodes 8 --segment-len 20 --layers 2 --json
    """
    from treerpo.bench.replay_bench import METHODS, run_replay_bench

    result = run_replay_bench(
        num_trees=num_trees, tree_nodes=tree_nodes, prompt_len=prompt_len,
        segment_len=segment_len, hidden_size=hidden_size, num_layers=layers,
        vocab_size=vocab_size, logit_std=logit_std, rounds=rounds,
        attn_implementation=attn_implementation, device=device, bf16_autocast=bf16,
        max_packed_tokens=max_packed_tokens, paths_micro_batch_tokens=paths_micro_batch_tokens,
        seed=seed)
    if json_output:
        print_json(result.json_fields())
        return
    measured = result.measurements
    rows = [
        ("device, attention, autocast",
         f"{result.device}, {result.attn_implementation}, {result.autocast}", ""),
        ("layers × width, vocab, logit std",
         f"{result.num_layers} × {result.hidden_size}, {result.vocab_size:,}, "
         f"{result.logit_std:.1f}", ""),
        ("trees, nodes, longest path",
         f"{result.num_trees}, {result.num_nodes}, {result.max_path_tokens:,}", ""),
        ("tokens unique/packed/paths/groups",
         f"{result.unique_tokens:,}/{result.packed_tokens:,}/{result.path_tokens:,}/"
         f"{result.groups_tokens:,}", ""),
    ]
    if result.attended_share:
        rows.append(("tree attention pairs / L²", f"{result.attended_share:.3f}", ""))
    for method in METHODS:
        rows.append((f"{method} wall s, CPU s, peak MB",
                     f"{measured[method].median_wall:.2f}, {measured[method].median_cpu:.2f}, "
                     f"{measured[method].max_peak_mb:,.0f}", ""))
    rows += [
        ("speedup vs paths (wall, CPU)",
         f"{result.speedup('paths'):.2f}×, {result.speedup('paths', clock='cpu'):.2f}×", ""),
        ("speedup vs groups (wall, CPU)",
         f"{result.speedup('groups'):.2f}×, {result.speedup('groups', clock='cpu'):.2f}×", ""),
        ("token ratio limit (paths/unique)", f"{result.token_ratio_limit:.2f}", ""),
        ("efficiency (speedup/limit, wall)", f"{result.efficiency:.2f}", "≥ 0.8"),
        ("peak MB packed / paths", f"{measured['packed'].max_peak_mb:,.0f} / "
         f"{measured['paths'].max_peak_mb:,.0f}", "packed ≤ paths"),
        ("max |Δ logprob| (fp32)", f"{result.max_abs_logprob_diff:.2e}", "≤ 2e-5"),
        ("grad cosine vs paths / groups",
         f"{result.grad_cosine_paths:.6f} / {result.grad_cosine_groups:.6f}", "≥ 0.9999"),
    ]
    stdout_console().print(_goal_table(
        f"bench replay (medians of {result.rounds} interleaved rounds)", rows))


@bench_app.command("learn")
def bench_learn(
    task: str = typer.Option("arith", "--task", help="arith or arith-long: the built-in dataset "
                             "and the shipped policy that starts, with the task's settings."),
    arms: str = typer.Option("flat,tree,tree-forced", "--arms",
                             help="Comma-separated arms: flat (GRPO), tree (the library "
                             "defaults: resample branching, leaf aggregation), tree-forced (the "
                             "original algorithm: forced branching, group aggregation); a variant "
                             "BASE:key=value[:key=value] changes a tree setting, loss_aggregation, "
                             "advantage or logprob_temperature of a base arm."),
    seeds: int = typer.Option(3, "--seeds", min=1, help="Seeds per arm (0, 1, ...)."),
    steps: int | None = typer.Option(None, "--steps", min=1,
                                     help="Training steps per run [default: the task's]."),
    problems_per_step: int | None = typer.Option(None, "--problems-per-step", min=1,
                                                 help="Problems per step [default: the task's]."),
    eval_problems: int | None = typer.Option(None, "--eval-problems", min=1,
                                             help="Held-out problems evaluated [default: "
                                             "the task's]."),
    eval_points: int = typer.Option(6, "--eval-points", min=1,
                                    help="Evaluations along each run (evenly spaced steps, the "
                                    "last one the final model), besides step 0."),
    json_output: JsonOption = False,
) -> None:
    """Flat GRPO against TreeRPO (resample and forced branching) from the same shipped policy,
    at about the same decoded tokens.

    Every arm trains with the task's settings for the same steps, problems per step and learning
    rate, over seeds 0..N-1; flat's samples per problem are calibrated to decode about as many
    tokens as the tree arm. Prints per arm the greedy accuracy after training (per seed, mean ±
    population sd), the tokens decoded, the on-policy reward over the last 10% of steps, the share
    of trained tokens with a non-zero advantage, the accuracy-vs-tokens curve, and the verdict on
    DESIGN's goal: the tokens at which the tree arm's mean curve first reaches flat's final
    accuracy, as a share of flat's tokens (goal: ≤ 0.90 and within 1 point on arith, ≤ 0.70 on
    arith-long). The defaults train 3 seeds × 3 arms for the task's steps (120 on arith, 80 on
    arith-long) with 6 evaluations each: about 35 minutes per task on a 2-core CPU.

    `--json` prints one line: {"task", "steps", "problems_per_step", "seeds", "accuracy_before",
    "arms": [{"name", "num_generations", "accuracies", "accuracy_mean", "accuracy_std",
    "tokens_mean", "curve": [[tokens, accuracy], ...], "on_policy_reward_last",
    "nonzero_token_share", "forced_token_share"}], "goal"} ("goal" null unless flat and tree ran).

    Examples:

        treerpo bench learn --task arith-long

        treerpo bench learn --task arith-long --arms flat,tree,tree:loss_aggregation=group

        treerpo bench learn --seeds 1 --steps 2 --problems-per-step 2 --eval-points 2 --json
    """
    from treerpo.bench.learn_bench import parse_arms, run_learn_bench
    from treerpo.bench.tasks import task_settings

    profile = task_settings(task)
    settings = replace(profile, steps=steps or profile.steps,
                       problems_per_step=problems_per_step or profile.problems_per_step,
                       eval_problems=eval_problems or profile.eval_problems)
    arm_names = parse_arms(arms)
    console = stdout_console()
    result = run_learn_bench(
        settings=settings, arms=arm_names, seeds=list(range(seeds)), eval_points=eval_points,
        on_message=(lambda message: None) if json_output
        else (lambda message: console.print(f"· {message}", highlight=False)))
    goal = result.goal
    if json_output:
        print_json({
            "task": result.task, "steps": result.steps,
            "problems_per_step": result.problems_per_step, "seeds": result.seeds,
            "accuracy_before": result.accuracy_before,
            "arms": [{"name": arm.name, "num_generations": arm.num_generations,
                      "accuracies": arm.accuracies, "accuracy_mean": arm.accuracy_mean,
                      "accuracy_std": arm.accuracy_std, "tokens_mean": arm.tokens_mean,
                      "curve": [list(point) for point in arm.curve],
                      "on_policy_reward_last": arm.on_policy_reward_last,
                      "nonzero_token_share": arm.nonzero_token_share,
                      "forced_token_share": arm.forced_token_share} for arm in result.arms],
            "goal": None if goal is None else {
                "target_accuracy": goal.target_accuracy, "flat_tokens": goal.flat_tokens,
                "tree_tokens": goal.tree_tokens, "token_fraction": goal.token_fraction,
                "max_token_fraction": goal.goal.max_token_fraction,
                "accuracy_gap": goal.accuracy_gap,
                "max_accuracy_deficit": goal.goal.max_accuracy_deficit,
                "flat_improved": goal.flat_improved, "met": goal.met},
        })
        return
    print_learn_tables(result, console)


def print_learn_tables(result: LearnBenchResult, console: Console) -> None:
    """bench learn's tables (arms, why, curves) and its verdict."""
    goal = result.goal
    flat_tokens = next((arm.tokens_mean for arm in result.arms if arm.name == "flat"), None)
    table = Table(title=f"bench learn · {result.task}, {result.steps} steps × "
                        f"{result.problems_per_step} problems, seeds "
                        f"{', '.join(map(str, result.seeds))}; greedy accuracy before "
                        f"{result.accuracy_before:.1%}")
    # A variant's long name folds; the figures keep their width.
    table.add_column("arm", overflow="fold")
    for column in ("accuracy per seed", "mean ± sd", "tokens", "÷ flat"):
        table.add_column(column, justify="right", no_wrap=True)
    for arm in result.arms:
        name = arm.name if arm.num_generations is None else f"{arm.name} G={arm.num_generations}"
        table.add_row(name, " ".join(f"{a:.1%}" for a in arm.accuracies),
                      f"{arm.accuracy_mean:.1%} ± {arm.accuracy_std:.1%}",
                      f"{arm.tokens_mean:,.0f}",
                      f"{arm.tokens_mean / flat_tokens:.2f}" if flat_tokens else "")
    console.print(table)
    console.print("accuracy: greedy, after training · tokens: completion tokens decoded "
                  "(mean over seeds)", highlight=False)
    why = Table(title="why: what each arm trains on (mean over seeds)")
    why.add_column("arm", overflow="fold")
    for column in ("on-policy reward, last 10%", "tokens with advantage ≠ 0",
                   "tokens under forced nodes"):
        why.add_column(column, justify="right", min_width=8)
    for arm in result.arms:
        why.add_row(arm.name, f"{arm.on_policy_reward_last:.3f}",
                    f"{arm.nonzero_token_share:.0%}", f"{arm.forced_token_share:.0%}")
    console.print(why)
    curves = Table(title="greedy accuracy @ cumulative tokens decoded (mean over seeds)")
    curves.add_column("step", justify="right")
    for arm in result.arms:
        curves.add_column(arm.name, justify="right", overflow="fold",
                          min_width=len(f"{arm.curve[-1][1]:.1%} @ {arm.curve[-1][0]:,.0f}"))
    for row, step in enumerate([0, *result.eval_steps]):
        curves.add_row(str(step), *(f"{arm.curve[row][1]:.1%} @ {arm.curve[row][0]:,.0f}"
                                    for arm in result.arms))
    console.print(curves)
    console.print(_learn_verdict(task=result.task, goal=goal), highlight=False)


def _learn_verdict(*, task: str, goal: GoalVerdict | None) -> str:
    """DESIGN's learning goal, met or not, in one sentence."""
    if goal is None:
        return f"goal ({task}): not judged, it needs the flat and tree arms"
    wanted = goal.goal
    fraction = goal.token_fraction
    if fraction is None:
        reach = (f"tree never reaches flat's final accuracy {goal.target_accuracy:.1%} "
                 f"(goal: within {wanted.max_token_fraction:.2f} × flat's "
                 f"{goal.flat_tokens:,.0f} tokens)")
    else:
        reach = (f"tree reaches flat's final accuracy {goal.target_accuracy:.1%} at "
                 f"{goal.tree_tokens:,.0f} tokens = {fraction:.2f} × flat's "
                 f"{goal.flat_tokens:,.0f} (goal ≤ {wanted.max_token_fraction:.2f})")
    if not goal.flat_improved:
        reach = (f"flat ends at {goal.target_accuracy:.1%}, not above the start, so there is "
                 "no gain to reach")
    final = f"tree's final accuracy {goal.accuracy_gap * 100:+.1f} points against flat's"
    if wanted.max_accuracy_deficit is not None:
        final += f" (goal ≥ {-wanted.max_accuracy_deficit * 100:.0f})"
    return f"goal ({task}): {reach}; {final} → {'met' if goal.met else 'not met'}"


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
