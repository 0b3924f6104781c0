"""A store with one run of each kind for the web page tests, built through the repository
(no model): a generate run holding the injection tree and a plain tree, a train run with
recorded steps and two evaluations during training, an eval run with a failure whose
completion is the injection payload."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from treerpo.scoring.scorer import score_trees
from treerpo.store import repository
from treerpo.store.database import Store
from treerpo.store.repository import EvalRecord, ProblemKey
from treerpo.trees import Tree, build_tree

MARKER = "treerpoPwned"
# Everything issue 13 lists: script tags, an event handler, a textarea end, template braces,
# quotes, NUL and right-to-left override characters. Each would set MARKER on <html> if run.
PAYLOAD = (f'<script>document.documentElement.dataset.{MARKER}="script"</script>'
           f'<img src=x onerror="document.documentElement.dataset.{MARKER}=\'img\'">'
           "</textarea></script>{{7*7}} \"double\" 'single' \x00nul \u202eRTL\u202c "
           f"<svg onload=\"document.documentElement.dataset.{MARKER}='svg'\"></svg>")


@dataclass
class WebStore:
    store: Store
    generate_run: str
    train_run: str
    eval_run: str
    injection_tree: Tree
    plain_tree: Tree


def _tokens(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    return (rng.integers(0, 500, size=count).astype(np.int32),
            -rng.exponential(0.7, size=count).astype(np.float32))


def injection_tree(rng: np.random.Generator) -> Tree:
    """Root, a split node with two leaves, and a leaf under the root; the payload is in the
    prompt, a segment and a leaf's boxed answer."""
    texts = ["<prompt> " + PAYLOAD, "First " + PAYLOAD + "\n", " so \\boxed{42}",
             " \\boxed{" + PAYLOAD + "}", " \\boxed{7}"]
    parents = [None, 0, 1, 1, 0]
    arrays = [_tokens(rng, count) for count in (6, 9, 4, 7, 3)]
    return build_tree(parents=parents, kinds=["root", "split", "leaf", "leaf", "leaf"],
                      token_ids=[ids for ids, _ in arrays],
                      logprobs=[np.zeros(0, np.float32)] + [lp for _, lp in arrays[1:]],
                      texts=texts, split_entropies=[None, 1.4, None, None, None],
                      finish_reasons=[None, None, "eos", "budget", "eos"],
                      forced=[False, False, False, True, False])


def plain_tree(rng: np.random.Generator, *, depth: int = 3) -> Tree:
    """A binary tree of the given depth whose leaves answer 5 or 6."""
    parents: list[int | None] = [None]
    depths = [0]
    for index in range(2 ** depth - 1):
        if depths[index] < depth - 1:
            for _ in range(2):
                parents.append(index)
                depths.append(depths[index] + 1)
    is_parent = {parent for parent in parents if parent is not None}
    kinds = ["root" if i == 0 else "split" if i in is_parent else "leaf"
             for i in range(len(parents))]
    texts = ["What is 2 + 3?" if i == 0 else
             (f"step {i}.\n" if kinds[i] != "leaf" else f" so \\boxed{{{5 + i % 2}}}")
             for i in range(len(parents))]
    arrays = [_tokens(rng, 5) for _ in parents]
    return build_tree(parents=parents, kinds=kinds, token_ids=[ids for ids, _ in arrays],
                      logprobs=[np.zeros(0, np.float32)] + [lp for _, lp in arrays[1:]],
                      texts=texts, finish_reasons=[
                          "eos" if kind == "leaf" else None for kind in kinds])


def build_web_store(store: Store, *, steps: int = 5) -> WebStore:
    rng = np.random.default_rng(0)
    problems = [(ProblemKey("web-test", "test", 0), "Problem " + PAYLOAD, "42"),
                (ProblemKey("web-test", "test", 1), "What is 2 + 3?", "5")]
    problem_ids = repository.upsert_problems(store, problems)
    trees = [injection_tree(rng), plain_tree(rng)]
    trees[0].problem, trees[0].reference = problems[0][1], problems[0][2]
    trees[1].problem, trees[1].reference = problems[1][1], problems[1][2]
    score_trees(trees, workers=1)
    for tree in trees:
        tree.scored = True
    generate = repository.get_or_create_run(store, name="gen <b>run</b>", kind="generate",
                                            model="tiny", config={"note": PAYLOAD})
    repository.write_trees(store, trees=trees, run_id=generate.id, problem_ids=problem_ids,
                           policy_version="tiny")
    train = repository.get_or_create_run(store, name="train-run", kind="train", model="tiny",
                                         config={})
    for step in range(1, steps + 1):
        metrics = {"step": step, "loss": float(rng.normal()), "mean_reward": float(rng.random()),
                   "on_policy_reward": float(rng.random()), "nonzero_group_share": 0.5,
                   "mean_abs_advantage": float(rng.random()), "clip_fraction": 0.0,
                   "grad_norm": float(rng.random()), "learning_rate": 1e-5 * step,
                   "tokens_per_second": float(rng.integers(100, 1000)), "seconds": 0.5,
                   "growth_seconds": 1.5}
        repository.record_train_step(store, run_id=train.id, step=step, metrics=metrics,
                                     tree_ids=[trees[step % 2].tree_id])
    for step, verdicts in ((2, (True, False)), (4, (True, True))):  # evaluations in training
        during = repository.get_or_create_run(store, name=f"{train.name}-eval-step-{step}",
                                              kind="eval", model="tiny", config={})
        repository.write_eval_results(store, run_id=during.id, records=[
            EvalRecord(problem_id=problem_id, mode="greedy", completions=["\\boxed{5}"],
                       answers=["5"], vote="5", correct=correct, num_tokens=4)
            for problem_id, correct in zip(problem_ids, verdicts, strict=True)])
    evaluation = repository.get_or_create_run(store, name="eval-run", kind="eval", model="tiny",
                                              config={})
    repository.write_eval_results(store, run_id=evaluation.id, records=[
        EvalRecord(problem_id=problem_ids[0], mode="greedy", completions=[PAYLOAD],
                   answers=[None], vote=None, correct=False, num_tokens=30),
        EvalRecord(problem_id=problem_ids[1], mode="greedy", completions=["\\boxed{5}"],
                   answers=["5"], vote="5", correct=True, num_tokens=4),
    ])
    return WebStore(store=store, generate_run=generate.name, train_run=train.name,
                    eval_run=evaluation.name, injection_tree=trees[0], plain_tree=trees[1])
