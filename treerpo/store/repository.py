"""The operations the pipeline stages need on the tree store.

Every write is one short transaction: a tree is inserted with all its nodes at once (so it is
either fully visible or absent), scores are updated in bulk, runs and problems are upserted.
Nodes go through SQLAlchemy Core `executemany` (no ORM objects per node): a tree of thousands of
nodes is one round trip.

Concurrent writers never crash on each other: runs, problems and trees are upserted through
`treerpo.store.writes` (a lost race reads back the winner's row).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from treerpo.errors import BadInputError
from treerpo.provenance import TreeProvenance
from treerpo.store.arrays import pack_logprobs, pack_token_ids, unpack_logprobs, unpack_token_ids
from treerpo.store.database import Store
from treerpo.store.models import (
    EvalResultRow,
    NodeRow,
    ProblemRow,
    RunRow,
    TrainStepRow,
    TreeRow,
    utcnow,
)
from treerpo.store.runs import (  # noqa: F401 (re-exported: stages reach runs through here)
    RunSummary,
    find_run,
    finish_run,
    get_or_create_run,
    list_runs,
    nearest_names,
    refuse_run_of_other_kind,
    stored_run_config,
)
from treerpo.store.writes import insert_ignoring_conflicts, write_transaction
from treerpo.trees import Tree, TreeNode


@dataclass(frozen=True)
class ProblemKey:
    """Identity of a problem: the same dataset, split and row is the same problem."""

    dataset: str
    split: str
    row_index: int


@dataclass(frozen=True)
class TreeSummary:
    tree_id: int
    run_name: str
    problem_id: int
    problem: str
    num_nodes: int
    num_leaves: int
    max_depth: int
    num_tokens: int
    scored: bool
    mean_reward: float | None
    rollout: str
    created_at: datetime


def _stored_problems(
    session: Session, keys: Iterable[ProblemKey]
) -> dict[ProblemKey, tuple[int, str, str]]:
    """key → (id, problem text, reference) of the stored problems among `keys`."""
    found: dict[ProblemKey, tuple[int, str, str]] = {}
    by_dataset: dict[tuple[str, str], list[int]] = defaultdict(list)
    for key in dict.fromkeys(keys):
        by_dataset[(key.dataset, key.split)].append(key.row_index)
    for (dataset, split), rows in by_dataset.items():
        for start in range(0, len(rows), 500):
            chunk = rows[start:start + 500]
            for problem_id, row_index, text, reference in session.execute(
                select(ProblemRow.id, ProblemRow.row_index, ProblemRow.problem,
                       ProblemRow.reference).where(
                    ProblemRow.dataset == dataset,
                    ProblemRow.split == split,
                    ProblemRow.row_index.in_(chunk),
                )
            ):
                found[ProblemKey(dataset, split, row_index)] = (problem_id, text, reference)
    return found


def _refuse_changed_problems(
    problems: Sequence[tuple[ProblemKey, str, str]],
    stored: dict[ProblemKey, tuple[int, str, str]],
) -> None:
    for key, text, reference in problems:
        if key not in stored:
            continue
        problem_id, stored_text, stored_reference = stored[key]
        if (stored_text, stored_reference) != (storable_text(text), storable_text(reference)):
            what = "problem text" if stored_text != storable_text(text) else "reference answer"
            raise BadInputError(
                f"row {key.row_index} of {key.dataset} ({key.split}) has a different {what} than "
                f"when it was stored (problem {problem_id}): its trees would no longer match it. "
                "Restore the dataset, or save the changed file under a new name (new problems)")


def check_problems_unchanged(store: Store, problems: Sequence[tuple[ProblemKey, str, str]]) -> None:
    """BadInputError when a stored problem's row now has another text or reference (read-only:
    a command calls it before its first write)."""
    with store.session() as session:
        _refuse_changed_problems(problems, _stored_problems(
            session, [key for key, _, _ in problems]))


def upsert_problems(
    store: Store, problems: Sequence[tuple[ProblemKey, str, str]]
) -> list[int]:
    """Insert the (key, problem text, reference) triples not stored yet; return every id, in
    order. A row whose text or reference differs from the stored problem's is refused
    (BadInputError, nothing written): a dataset file edited in place would otherwise get new
    trees filed under the old problem."""
    rows: dict[ProblemKey, dict[str, Any]] = {}
    for key, text, reference in problems:
        rows.setdefault(key, {"dataset": key.dataset, "split": key.split,
                              "row_index": key.row_index, "problem": storable_text(text),
                              "reference": storable_text(reference), "created_at": utcnow()})
    statement = insert_ignoring_conflicts(store, ProblemRow,
                                           unique_columns=["dataset", "split", "row_index"])
    with write_transaction(store) as session:
        values = list(rows.values())
        for start in range(0, len(values), 500):
            session.execute(statement, values[start:start + 500])
        stored = _stored_problems(session, rows)
        _refuse_changed_problems(problems, stored)
    return [stored[key][0] for key, _, _ in problems]


def completed_problem_ids(store: Store, *, run_id: int, epoch: int = 0) -> set[int]:
    """Problems of the run that already have a (complete) tree in this epoch."""
    with store.session() as session:
        return set(session.scalars(
            select(TreeRow.problem_id).where(TreeRow.run_id == run_id, TreeRow.epoch == epoch)
        ))


def count_trees_of_policies(store: Store, *, run_id: int, policy_versions: Sequence[str],
                            min_policy_step: int = 0) -> int:
    """How many of the run's trees were grown by one of `policy_versions` at a training step of
    at least `min_policy_step` (`trees.policy_step`). Versions compare by weights fingerprint
    (`provenance.policy_identity`): workers that reach the same checkpoint by other paths
    (another mount point) record other version strings for the same policy. The step tells
    apart checkpoints with the same weights (steps without any learning signal leave the weights
    as they were)."""
    from sqlalchemy import or_

    from treerpo.provenance import policy_identity

    matches = []
    for version in policy_versions:
        identity = policy_identity(version)
        matches.append(TreeRow.policy_version == version if identity == version
                       else TreeRow.policy_version.like(f"%@{identity}"))
    if not matches:
        return 0
    with store.session() as session:
        return session.scalar(select(func.count()).select_from(TreeRow).where(
            TreeRow.run_id == run_id, TreeRow.policy_step >= min_policy_step,
            or_(*matches))) or 0


def latest_epoch(store: Store, *, run_id: int) -> int:
    """The highest epoch the run has a tree in (0 without trees)."""
    with store.session() as session:
        return session.scalar(select(func.max(TreeRow.epoch)).where(TreeRow.run_id == run_id)) or 0


def storable_text(text: str) -> str:
    """Text as every backend can store it: PostgreSQL text cannot hold NUL, which a sampled
    token may decode to, so it is kept as U+FFFD (the token ids stay the exact record)."""
    return text.replace("\x00", "\ufffd")


def _node_row(tree_id: int, node: TreeNode) -> tuple[Any, ...]:
    """A node as a row of `nodes`, in `_NODE_INSERT_COLUMNS` order."""
    return (
        tree_id, node.index, node.parent, node.depth, node.ordinal, node.kind, node.num_tokens,
        pack_token_ids(node.token_ids), pack_logprobs(node.logprobs), storable_text(node.text),
        node.split_entropy, node.finish_reason, node.reward, node.value, node.advantage,
        node.forced,
    )


def write_tree(
    store: Store,
    *,
    tree: Tree,
    run_id: int,
    problem_id: int,
    policy_version: str,
    tokenizer_hash: str | None = None,
    epoch: int = 0,
) -> int:
    """Insert a whole tree with all its nodes in one transaction; returns the new tree id."""
    return write_trees(store, trees=[tree], run_id=run_id, problem_ids=[problem_id],
                       policy_version=policy_version, tokenizer_hash=tokenizer_hash,
                       epoch=epoch)[0]


def write_trees(
    store: Store,
    *,
    trees: Sequence[Tree],
    run_id: int,
    problem_ids: Sequence[int],
    policy_version: str,
    tokenizer_hash: str | None = None,
    epoch: int = 0,
    worker: str | None = None,
    policy_step: int | None = None,
) -> list[int]:
    """Insert several whole trees in one transaction (all or none); returns their ids and sets
    `tree.tree_id` and `tree.problem_id` on each. One statement for the tree rows, one for all
    their nodes. `policy_version`, `tokenizer_hash` and `policy_step` are the trees' provenance
    (`treerpo.provenance`); None records an unknown tokenizer or step.

    A tree whose (run, problem, epoch) another process stored meanwhile is skipped, not an
    error: it is already done, and its id is the stored tree's."""
    if not trees:
        return []
    if len(set(problem_ids)) != len(problem_ids):
        raise ValueError("write_trees: one tree per problem (a run has one tree per problem "
                         "and epoch)")
    created_at = utcnow()
    tree_rows = [
        {
            "run_id": run_id,
            "problem_id": problem_id,
            "epoch": epoch,
            "rollout": tree.rollout,
            "policy_version": policy_version,
            "tokenizer_hash": tokenizer_hash,
            "worker": worker,
            "policy_step": policy_step,
            "logprob_temperature": tree.logprob_temperature,
            "num_nodes": len(tree.nodes),
            "num_leaves": len(tree.leaves()),
            "max_depth": tree.max_depth,
            "num_tokens": tree.num_completion_tokens,
            "scored": tree.scored,
            "mean_reward": _mean_reward(tree) if tree.scored else None,
            "created_at": created_at,
        }
        for tree, problem_id in zip(trees, problem_ids, strict=True)
    ]
    statement = insert_ignoring_conflicts(
        store, TreeRow, unique_columns=["run_id", "problem_id", "epoch"]
    ).returning(TreeRow.id, TreeRow.problem_id)
    with write_transaction(store) as session:
        connection = session.connection()
        inserted = dict(
            (problem_id, tree_id)
            for tree_id, problem_id in connection.execute(statement, tree_rows))
        _insert_nodes(connection, [_node_row(inserted[problem_id], node)
                                   for tree, problem_id in zip(trees, problem_ids, strict=True)
                                   if problem_id in inserted
                                   for node in tree.nodes])
        lost = [problem_id for problem_id in problem_ids if problem_id not in inserted]
        if lost:
            inserted.update(trees_of_problems_in(session, run_id=run_id, problem_ids=lost,
                                                 epoch=epoch))
    tree_ids = [inserted[problem_id] for problem_id in problem_ids]
    for tree, tree_id, problem_id in zip(trees, tree_ids, problem_ids, strict=True):
        tree.tree_id = tree_id
        tree.problem_id = problem_id
        tree.policy_version = policy_version
    return tree_ids


_NODE_INSERT_COLUMNS = [column.name for column in NodeRow.__table__.columns]
_SQLITE_NODE_INSERT = (
    f"INSERT INTO nodes ({', '.join(_NODE_INSERT_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _NODE_INSERT_COLUMNS)})"
)


def _insert_nodes(connection, rows: list[tuple[Any, ...]]) -> None:
    if not rows:  # every tree of the batch was stored by another process
        return
    # On SQLite, handing plain tuples to the driver's executemany doubles the write rate over
    # SQLAlchemy's per-row parameter processing (the columns need no type conversion).
    if connection.dialect.paramstyle == "qmark":
        connection.exec_driver_sql(_SQLITE_NODE_INSERT, rows)
    else:
        connection.execute(insert(NodeRow),
                           [dict(zip(_NODE_INSERT_COLUMNS, row, strict=True)) for row in rows])


def _mean_reward(tree: Tree) -> float | None:
    rewards = [leaf.reward for leaf in tree.leaves() if leaf.reward is not None]
    return sum(rewards) / len(rewards) if rewards else None


_NODE_COLUMNS = (
    NodeRow.tree_id, NodeRow.node_index, NodeRow.parent_index, NodeRow.depth, NodeRow.ordinal,
    NodeRow.kind, NodeRow.token_ids, NodeRow.logprobs, NodeRow.text, NodeRow.split_entropy,
    NodeRow.finish_reason, NodeRow.reward, NodeRow.value, NodeRow.advantage, NodeRow.forced,
)


def load_trees(store: Store, tree_ids: Sequence[int]) -> list[Tree]:
    """Load trees with all their nodes (one query for the trees, one for all their nodes)."""
    if not tree_ids:
        return []
    with store.session() as session:
        headers = {
            row.id: row
            for row in session.execute(
                select(TreeRow.id, TreeRow.problem_id, TreeRow.logprob_temperature,
                       TreeRow.policy_version, TreeRow.rollout, TreeRow.scored,
                       ProblemRow.problem, ProblemRow.reference)
                .join(ProblemRow, ProblemRow.id == TreeRow.problem_id)
                .where(TreeRow.id.in_(tree_ids))
            )
        }
        unknown = [tree_id for tree_id in tree_ids if tree_id not in headers]
        if unknown:
            raise BadInputError(f"no tree with id {unknown[0]} in the store")
        node_rows = session.execute(
            select(*_NODE_COLUMNS)
            .where(NodeRow.tree_id.in_(tree_ids))
            .order_by(NodeRow.tree_id, NodeRow.node_index)
        ).all()
    nodes_by_tree: dict[int, list[TreeNode]] = defaultdict(list)
    for row in node_rows:
        nodes_by_tree[row.tree_id].append(TreeNode(
            index=row.node_index,
            parent=row.parent_index,
            depth=row.depth,
            ordinal=row.ordinal,
            kind=row.kind,
            token_ids=unpack_token_ids(row.token_ids),
            logprobs=unpack_logprobs(row.logprobs),
            text=row.text,
            split_entropy=row.split_entropy,
            finish_reason=row.finish_reason,
            reward=row.reward,
            value=row.value,
            advantage=row.advantage,
            forced=bool(row.forced),
        ))
    trees = []
    for tree_id in tree_ids:
        header = headers[tree_id]
        nodes = nodes_by_tree[tree_id]
        for node in nodes:  # ordered by index, parents first
            if node.parent is not None:
                nodes[node.parent].children.append(node.index)
        trees.append(Tree(
            nodes=nodes,
            logprob_temperature=header.logprob_temperature,
            tree_id=tree_id,
            problem_id=header.problem_id,
            problem=header.problem,
            reference=header.reference,
            policy_version=header.policy_version,
            rollout=header.rollout,
            scored=header.scored,
        ))
    return trees


def load_tree(store: Store, tree_id: int) -> Tree:
    return load_trees(store, [tree_id])[0]


def list_trees(
    store: Store,
    *,
    run_id: int | None = None,
    scored: bool | None = None,
    tree_ids: Iterable[int] | None = None,
    limit: int | None = None,
) -> list[TreeSummary]:
    """Summaries of stored trees, oldest first."""
    query = (
        select(TreeRow.id, RunRow.name, TreeRow.problem_id, ProblemRow.problem,
               TreeRow.num_nodes, TreeRow.num_leaves, TreeRow.max_depth, TreeRow.num_tokens,
               TreeRow.scored, TreeRow.mean_reward, TreeRow.rollout, TreeRow.created_at)
        .join(ProblemRow, ProblemRow.id == TreeRow.problem_id)
        .join(RunRow, RunRow.id == TreeRow.run_id)
        .order_by(TreeRow.id)
    )
    if run_id is not None:
        query = query.where(TreeRow.run_id == run_id)
    if scored is not None:
        query = query.where(TreeRow.scored == scored)
    if tree_ids is not None:
        query = query.where(TreeRow.id.in_(list(tree_ids)))
    if limit is not None:
        query = query.limit(limit)
    with store.session() as session:
        return [TreeSummary(*row) for row in session.execute(query)]


def tree_provenance(store: Store, *, run_ids: Sequence[int] | None = None,
                    tree_ids: Sequence[int] | None = None) -> list[TreeProvenance]:
    """Each tree's run, tokenizer and policy (of `run_ids` / `tree_ids`, or all), by id."""
    query = (select(TreeRow.id, RunRow.name, TreeRow.tokenizer_hash, TreeRow.policy_version)
             .join(RunRow, RunRow.id == TreeRow.run_id).order_by(TreeRow.id))
    if run_ids is not None:
        query = query.where(TreeRow.run_id.in_(list(run_ids)))
    if tree_ids is not None:
        query = query.where(TreeRow.id.in_(list(tree_ids)))
    with store.session() as session:
        return [TreeProvenance(*row) for row in session.execute(query)]


@dataclass(frozen=True)
class ArrivedTree:
    """What `train --follow` needs to decide whether a newly stored tree may be trained on."""

    tree_id: int
    tokenizer_hash: str | None
    policy_version: str
    policy_step: int | None
    scored: bool


def tree_arrivals(store: Store, *, run_ids: Sequence[int], known: set[int]) -> list[ArrivedTree]:
    """The trees of `run_ids` whose id is not in `known`, oldest first.

    By id set rather than above the highest id seen: on PostgreSQL a transaction that took a
    lower id can commit after one with a higher id."""
    with store.session() as session:
        ids = [tree_id for tree_id in session.scalars(
            select(TreeRow.id).where(TreeRow.run_id.in_(list(run_ids))))
            if tree_id not in known]
        if not ids:
            return []
        rows = session.execute(
            select(TreeRow.id, TreeRow.tokenizer_hash, TreeRow.policy_version,
                   TreeRow.policy_step, TreeRow.scored)
            .where(TreeRow.id.in_(ids)).order_by(TreeRow.id))
        return [ArrivedTree(*row) for row in rows]


def count_trees(store: Store) -> int:
    with store.session() as session:
        return session.scalar(select(func.count()).select_from(TreeRow)) or 0


def update_scores(store: Store, *, trees: Sequence[Tree], reward_fn: str) -> None:
    """Write rewards, values and advantages of scored trees in one transaction (bulk)."""
    node_table = NodeRow.__table__
    statement = (
        update(node_table)
        .where(node_table.c.tree_id == bindparam("b_tree_id"),
               node_table.c.node_index == bindparam("b_node_index"))
        .values(reward=bindparam("b_reward"), value=bindparam("b_value"),
                advantage=bindparam("b_advantage"))
    )
    tree_table = TreeRow.__table__
    tree_statement = (
        update(tree_table)
        .where(tree_table.c.id == bindparam("b_id"))
        .values(scored=True, reward_fn=reward_fn, mean_reward=bindparam("b_mean_reward"),
                scored_at=bindparam("b_scored_at"))
    )
    node_params = [
        {"b_tree_id": tree.tree_id, "b_node_index": node.index, "b_reward": node.reward,
         "b_value": node.value, "b_advantage": node.advantage}
        for tree in trees for node in tree.nodes
    ]
    now = utcnow()
    tree_params = [{"b_id": tree.tree_id, "b_mean_reward": _mean_reward(tree), "b_scored_at": now}
                   for tree in trees]
    if not tree_params:
        return
    with store.session() as session, session.begin():
        connection = session.connection()
        connection.execute(statement, node_params)
        connection.execute(tree_statement, tree_params)


# --- eval results (`treerpo eval gsm8k`, `treerpo eval show`) ---------------------------------


@dataclass(frozen=True)
class EvalRecord:
    """One evaluated problem in one mode, as written to `eval_results`."""

    problem_id: int
    mode: str  # "greedy" or "maj@K"
    completions: list[str]
    answers: list[str | None]  # the extracted \boxed{} answer of each completion, None if none
    vote: str | None
    correct: bool
    num_tokens: int  # completion tokens of all the completions together


@dataclass(frozen=True)
class StoredEvalResult:
    """A stored eval record with its problem; `completions` is None unless asked for."""

    problem_id: int
    dataset: str
    split: str
    row_index: int
    problem: str
    reference: str
    mode: str
    answers: list[str | None]
    vote: str | None
    correct: bool
    num_tokens: int
    completions: list[str] | None


def save_eval_run_config(
    store: Store, *, run_id: int, model: str, config: dict[str, Any], discard_results: bool
) -> None:
    """Store an eval run's latest configuration; with `discard_results`, delete its records
    first (the run is being redone with other settings). One transaction."""
    with store.session() as session, session.begin():
        if discard_results:
            session.execute(delete(EvalResultRow).where(EvalResultRow.run_id == run_id))
        session.execute(
            update(RunRow).where(RunRow.id == run_id).values(model=model, config=config)
        )


def completed_eval_keys(store: Store, *, run_id: int) -> set[tuple[int, str]]:
    """The (problem id, mode) pairs the run already has a record for."""
    with store.session() as session:
        rows = session.execute(
            select(EvalResultRow.problem_id, EvalResultRow.mode)
            .where(EvalResultRow.run_id == run_id)
        )
        return {(problem_id, mode) for problem_id, mode in rows}


def write_eval_results(store: Store, *, run_id: int, records: Sequence[EvalRecord]) -> None:
    """Write records in one transaction, replacing any the run has for the same problem and
    mode."""
    if not records:
        return
    now = utcnow()
    with store.session() as session, session.begin():
        for mode in {record.mode for record in records}:
            problem_ids = [record.problem_id for record in records if record.mode == mode]
            session.execute(delete(EvalResultRow).where(
                EvalResultRow.run_id == run_id, EvalResultRow.mode == mode,
                EvalResultRow.problem_id.in_(problem_ids)))
        session.execute(insert(EvalResultRow), [
            {"run_id": run_id, "problem_id": record.problem_id, "mode": record.mode,
             "completions": record.completions, "answers": record.answers, "vote": record.vote,
             "correct": record.correct, "num_tokens": record.num_tokens, "created_at": now}
            for record in records
        ])


def list_eval_results(
    store: Store,
    *,
    run_id: int,
    failures_only: bool = False,
    include_completions: bool = False,
) -> list[StoredEvalResult]:
    """The run's eval records with their problems, by dataset row then mode."""
    summary_columns = [
        EvalResultRow.problem_id, ProblemRow.dataset, ProblemRow.split, ProblemRow.row_index,
        ProblemRow.problem, ProblemRow.reference, EvalResultRow.mode, EvalResultRow.answers,
        EvalResultRow.vote, EvalResultRow.correct, EvalResultRow.num_tokens,
    ]
    # Completions are the bulk of a record: read only when asked for.
    extra_columns = [EvalResultRow.completions] if include_completions else []
    query = (
        select(*summary_columns, *extra_columns)
        .join(ProblemRow, ProblemRow.id == EvalResultRow.problem_id)
        .where(EvalResultRow.run_id == run_id)
        .order_by(ProblemRow.dataset, ProblemRow.split, ProblemRow.row_index, EvalResultRow.mode)
    )
    if failures_only:
        query = query.where(EvalResultRow.correct.is_(False))
    with store.session() as session:
        rows = session.execute(query).all()
    return [
        StoredEvalResult(*row[:len(summary_columns)],
                         completions=row[-1] if include_completions else None)
        for row in rows
    ]


# --- train steps (`treerpo train`) ------------------------------------------------------------


def record_train_step(
    store: Store, *, run_id: int, step: int, metrics: dict[str, Any], tree_ids: Sequence[int]
) -> None:
    """Write one optimizer step's metrics and trees, replacing a row a resumed run left."""
    with store.session() as session, session.begin():
        session.execute(delete(TrainStepRow).where(TrainStepRow.run_id == run_id,
                                                   TrainStepRow.step == step))
        session.add(TrainStepRow(run_id=run_id, step=step, metrics=metrics,
                                 tree_ids=list(tree_ids), checkpoint=None))


def set_train_step_checkpoint(store: Store, *, run_id: int, step: int, checkpoint: str) -> None:
    with store.session() as session, session.begin():
        session.execute(update(TrainStepRow)
                        .where(TrainStepRow.run_id == run_id, TrainStepRow.step == step)
                        .values(checkpoint=checkpoint))


def delete_train_steps_after(store: Store, *, run_id: int, step: int) -> None:
    """Forget the steps after `step` (a fresh start or a resume redoes them)."""
    with store.session() as session, session.begin():
        session.execute(delete(TrainStepRow).where(TrainStepRow.run_id == run_id,
                                                   TrainStepRow.step > step))


def trained_tree_ids(store: Store, *, run_id: int) -> set[int]:
    """Every tree the train run's recorded steps trained on."""
    with store.session() as session:
        return {tree_id for tree_ids in session.scalars(
            select(TrainStepRow.tree_ids).where(TrainStepRow.run_id == run_id))
            for tree_id in tree_ids}


def list_train_steps(store: Store, *, run_id: int) -> list[TrainStepRow]:
    with store.session() as session:
        return list(session.scalars(
            select(TrainStepRow).where(TrainStepRow.run_id == run_id).order_by(TrainStepRow.step)
        ))


def trees_of_problems(
    store: Store, *, run_id: int, problem_ids: Sequence[int], epoch: int
) -> dict[int, int]:
    """problem id → tree id of the trees the run already grew for these problems this epoch
    (chained training reuses them after a restart instead of growing a duplicate)."""
    with store.session() as session:
        return trees_of_problems_in(session, run_id=run_id, problem_ids=problem_ids, epoch=epoch)


def trees_of_problems_in(
    session: Session, *, run_id: int, problem_ids: Sequence[int], epoch: int
) -> dict[int, int]:
    rows = session.execute(select(TreeRow.problem_id, TreeRow.id).where(
        TreeRow.run_id == run_id, TreeRow.epoch == epoch,
        TreeRow.problem_id.in_(list(problem_ids))))
    return {problem_id: tree_id for problem_id, tree_id in rows}
