"""`treerpo bench store`: write rate of seed-shaped trees and inspect time of a big tree.

Writes trees as `generate` does (the trees of one batch of problems, default 16, in one
transaction, each with all its nodes) into a temporary SQLite store, then loads a 10,000-node
tree and renders it the way `treerpo inspect` does, into a string.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from treerpo.bench.synthetic import synthetic_tree
from treerpo.store import repository
from treerpo.store.database import open_store
from treerpo.views import tree_lines


@dataclass
class StoreBenchResult:
    trees_written: int
    nodes_written: int
    write_seconds: float
    nodes_per_second: float
    num_nodes: int  # of the inspected tree
    load_seconds: float
    render_seconds: float
    rendered_chars: int

    @property
    def inspect_seconds(self) -> float:
        return self.load_seconds + self.render_seconds


def run_store_bench(
    *,
    num_trees: int = 200,
    nodes_per_tree: int = 120,
    inspect_nodes: int = 10_000,
    batch_size: int = 16,
    seed: int = 0,
) -> StoreBenchResult:
    rng = np.random.default_rng(seed)
    trees = [synthetic_tree(rng=rng, num_nodes=nodes_per_tree) for _ in range(num_trees)]
    big_tree = synthetic_tree(rng=rng, num_nodes=inspect_nodes)
    with tempfile.TemporaryDirectory(prefix="treerpo-bench-") as folder:
        store = open_store(f"sqlite:///{Path(folder) / 'bench.db'}")
        try:
            run = repository.get_or_create_run(store, name="bench-store", kind="generate",
                                               model="synthetic", config={})
            problem_ids = repository.upsert_problems(store, [
                (repository.ProblemKey("synthetic", "train", index), f"problem {index}", "0")
                for index in range(num_trees + 1)
            ])
            started = time.perf_counter()
            for start in range(0, num_trees, batch_size):
                batch = trees[start:start + batch_size]
                repository.write_trees(store, trees=batch, run_id=run.id,
                                       problem_ids=problem_ids[start:start + len(batch)],
                                       policy_version="synthetic")
            write_seconds = time.perf_counter() - started
            big_id = repository.write_tree(store, tree=big_tree, run_id=run.id,
                                           problem_id=problem_ids[-1], policy_version="synthetic")
            started = time.perf_counter()
            loaded = repository.load_tree(store, big_id)
            load_seconds = time.perf_counter() - started
            started = time.perf_counter()
            rendered = "\n".join(tree_lines(loaded, color=True))
            render_seconds = time.perf_counter() - started
        finally:
            store.close()
    nodes_written = sum(len(tree.nodes) for tree in trees)
    return StoreBenchResult(
        trees_written=num_trees,
        nodes_written=nodes_written,
        write_seconds=write_seconds,
        nodes_per_second=nodes_written / write_seconds,
        num_nodes=len(loaded.nodes),
        load_seconds=load_seconds,
        render_seconds=render_seconds,
        rendered_chars=len(rendered),
    )
