"""The tree store's schema (SQLAlchemy 2 typed models).

Every stage reads and writes these tables; schema changes go through Alembic revisions in the
top-level `migrations/` folder (a test checks that models and migrations agree).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names: Alembic's batch mode on SQLite recreates tables and must be able
# to name (and drop) every constraint; unnamed ones cannot be migrated later.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ProblemRow(Base):
    """One problem of a dataset, stored once however many runs use it."""

    __tablename__ = "problems"
    # "Same dataset + row = same problem": re-running generate or training on the same dataset
    # finds the existing row instead of duplicating it.
    __table_args__ = (UniqueConstraint("dataset", "split", "row_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset: Mapped[str] = mapped_column(String(512))
    split: Mapped[str] = mapped_column(String(64))
    row_index: Mapped[int] = mapped_column(Integer)
    problem: Mapped[str] = mapped_column(Text)
    reference: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RunRow(Base):
    """One invocation of a stage (generate, train, eval) with its whole configuration."""

    __tablename__ = "runs"
    # Runs are addressed by name: re-running the same command reuses its run and resumes it.
    __table_args__ = (UniqueConstraint("name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    kind: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(1024))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(32), default="running")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TreeRow(Base):
    """A complete reasoning tree for one problem. A row exists only once all its nodes are
    written (same transaction), so a killed process never leaves a half-visible tree."""

    __tablename__ = "trees"
    # Resume: a run grows at most one tree per problem per epoch, and this is how the next
    # attempt finds the ones already done.
    __table_args__ = (
        UniqueConstraint("run_id", "problem_id", "epoch"),
        # Training picks unscored / scored trees of a run; listing goes by run too.
        Index("ix_trees_run_id_scored", "run_id", "scored"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    problem_id: Mapped[int] = mapped_column(ForeignKey("problems.id"))
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    rollout: Mapped[str] = mapped_column(String(16), default="tree")
    # Which weights produced the tree (`treerpo.provenance`: MODEL@WEIGHTS-HASH, or RUN@step-N for
    # trees grown during chained training): replay refuses trees of another policy unless told.
    policy_version: Mapped[str] = mapped_column(String(1024))
    # Which tokenizer the token ids belong to (`treerpo.provenance.tokenizer_fingerprint`: a hash
    # of the vocabulary and chat template): replay refuses trees of another tokenizer, whose ids
    # the trained model would read as other tokens. NULL: stored before it was recorded.
    tokenizer_hash: Mapped[str | None] = mapped_column(String(64))
    # The training step whose weights grew it (0: the base model), when the grower knew it:
    # `generate --follow-policy` and chained training record it; `train --follow` measures
    # staleness with it. NULL: a plain `generate` (its policy is only `policy_version`).
    policy_step: Mapped[int | None] = mapped_column(Integer)
    # The `generate` process that grew it (`--worker-name`, default host:pid): several workers
    # share a run's problems (`treerpo.growth.claims`) and the summary shows each one's share.
    worker: Mapped[str | None] = mapped_column(String(256))
    # Stored logprobs are log_softmax(logits / logprob_temperature) of the behaviour policy.
    logprob_temperature: Mapped[float] = mapped_column(Float, default=1.0)
    num_nodes: Mapped[int] = mapped_column(Integer)
    num_leaves: Mapped[int] = mapped_column(Integer)
    max_depth: Mapped[int] = mapped_column(Integer)
    num_tokens: Mapped[int] = mapped_column(Integer)  # completion tokens, each counted once
    scored: Mapped[bool] = mapped_column(Boolean, default=False)
    reward_fn: Mapped[str | None] = mapped_column(String(512))
    mean_reward: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    scored_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ClaimRow(Base):
    """A generate worker's lease on one batch of a run's problems (`treerpo.growth.claims`).

    Several `treerpo generate` processes on one run claim batches here before growing them, so
    no two grow the same problems; a claim whose lease ran out (its worker was killed) is taken
    over. A row is deleted when its batch is stored; the trees' own unique key, not this table,
    guarantees one tree per problem.
    """

    __tablename__ = "claims"

    run_id: Mapped[int] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Batches are cut from the run's whole problem list (`--batch-size`), as every worker with
    # the same command cuts them, so a batch index names the same problems in every worker.
    batch_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    worker: Mapped[str] = mapped_column(String(256))
    lease_until: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class NodeRow(Base):
    """One node of a tree: a segment of tokens with the behaviour logprobs they were sampled with.

    Nodes are keyed by (tree, index within the tree): a whole tree is inserted in one
    executemany without a round trip per node to learn generated ids, and a node's parent is
    named by its index in the same tree.
    """

    __tablename__ = "nodes"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tree_id", "parent_index"],
            ["nodes.tree_id", "nodes.node_index"],
            name="fk_nodes_parent",
        ),
    )

    tree_id: Mapped[int] = mapped_column(
        ForeignKey("trees.id", ondelete="CASCADE"), primary_key=True
    )
    node_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_index: Mapped[int | None] = mapped_column(Integer)
    depth: Mapped[int] = mapped_column(Integer)
    ordinal: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    num_tokens: Mapped[int] = mapped_column(Integer)
    token_ids: Mapped[bytes] = mapped_column(LargeBinary)  # little-endian int32
    logprobs: Mapped[bytes] = mapped_column(LargeBinary)  # little-endian float32
    text: Mapped[str] = mapped_column(Text)
    split_entropy: Mapped[float | None] = mapped_column(Float)
    finish_reason: Mapped[str | None] = mapped_column(String(16))
    reward: Mapped[float | None] = mapped_column(Float)
    value: Mapped[float | None] = mapped_column(Float)
    advantage: Mapped[float | None] = mapped_column(Float)
    # The node's first token was forced as an alternative (branching "forced"): its subtree is
    # not an on-policy sample, which the trainer's on-policy metrics and `inspect` must know.
    forced: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class TrainStepRow(Base):
    """One optimizer step: its metrics, the trees it trained on, the checkpoint it wrote."""

    __tablename__ = "train_steps"
    # A step is recorded once per run; resuming from a checkpoint overwrites later steps.
    __table_args__ = (UniqueConstraint("run_id", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    tree_ids: Mapped[list[int]] = mapped_column(JSON)
    checkpoint: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EvalResultRow(Base):
    """One evaluated problem in one mode (greedy or maj@k): completions, answers, vote, verdict."""

    __tablename__ = "eval_results"
    # One verdict per problem and mode in a run; also what makes an interrupted eval resumable.
    __table_args__ = (UniqueConstraint("run_id", "problem_id", "mode"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    problem_id: Mapped[int] = mapped_column(ForeignKey("problems.id"))
    mode: Mapped[str] = mapped_column(String(16))
    completions: Mapped[list[str]] = mapped_column(JSON)
    answers: Mapped[list[str | None]] = mapped_column(JSON)
    vote: Mapped[str | None] = mapped_column(Text)
    correct: Mapped[bool] = mapped_column(Boolean)
    num_tokens: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
