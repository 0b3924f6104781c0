"""Initial schema: problems, runs, trees, nodes, train_steps, eval_results.

Why each table and index exists is written on the models in treerpo/store/models.py.

Revision ID: 0001
Revises: 
Create Date: 2026-11-28 08:39:15.787262
"""

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('problems',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('dataset', sa.String(length=512), nullable=False),
    sa.Column('split', sa.String(length=64), nullable=False),
    sa.Column('row_index', sa.Integer(), nullable=False),
    sa.Column('problem', sa.Text(), nullable=False),
    sa.Column('reference', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_problems')),
    sa.UniqueConstraint('dataset', 'split', 'row_index', name=op.f('uq_problems_dataset_split_row_index'))
    )
    op.create_table('runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('model', sa.String(length=1024), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_runs')),
    sa.UniqueConstraint('name', name=op.f('uq_runs_name'))
    )
    op.create_table('eval_results',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('problem_id', sa.Integer(), nullable=False),
    sa.Column('mode', sa.String(length=16), nullable=False),
    sa.Column('completions', sa.JSON(), nullable=False),
    sa.Column('answers', sa.JSON(), nullable=False),
    sa.Column('vote', sa.Text(), nullable=True),
    sa.Column('correct', sa.Boolean(), nullable=False),
    sa.Column('num_tokens', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['problem_id'], ['problems.id'], name=op.f('fk_eval_results_problem_id_problems')),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_eval_results_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_eval_results')),
    sa.UniqueConstraint('run_id', 'problem_id', 'mode', name=op.f('uq_eval_results_run_id_problem_id_mode'))
    )
    op.create_table('train_steps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('tree_ids', sa.JSON(), nullable=False),
    sa.Column('checkpoint', sa.String(length=1024), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_train_steps_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_train_steps')),
    sa.UniqueConstraint('run_id', 'step', name=op.f('uq_train_steps_run_id_step'))
    )
    op.create_table('trees',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('problem_id', sa.Integer(), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('rollout', sa.String(length=16), nullable=False),
    sa.Column('policy_version', sa.String(length=1024), nullable=False),
    sa.Column('logprob_temperature', sa.Float(), nullable=False),
    sa.Column('num_nodes', sa.Integer(), nullable=False),
    sa.Column('num_leaves', sa.Integer(), nullable=False),
    sa.Column('max_depth', sa.Integer(), nullable=False),
    sa.Column('num_tokens', sa.Integer(), nullable=False),
    sa.Column('scored', sa.Boolean(), nullable=False),
    sa.Column('reward_fn', sa.String(length=512), nullable=True),
    sa.Column('mean_reward', sa.Float(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('scored_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['problem_id'], ['problems.id'], name=op.f('fk_trees_problem_id_problems')),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_trees_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trees')),
    sa.UniqueConstraint('run_id', 'problem_id', 'epoch', name=op.f('uq_trees_run_id_problem_id_epoch'))
    )
    with op.batch_alter_table('trees', schema=None) as batch_op:
        batch_op.create_index('ix_trees_run_id_scored', ['run_id', 'scored'], unique=False)

    op.create_table('nodes',
    sa.Column('tree_id', sa.Integer(), nullable=False),
    sa.Column('node_index', sa.Integer(), nullable=False),
    sa.Column('parent_index', sa.Integer(), nullable=True),
    sa.Column('depth', sa.Integer(), nullable=False),
    sa.Column('ordinal', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('num_tokens', sa.Integer(), nullable=False),
    sa.Column('token_ids', sa.LargeBinary(), nullable=False),
    sa.Column('logprobs', sa.LargeBinary(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('split_entropy', sa.Float(), nullable=True),
    sa.Column('finish_reason', sa.String(length=16), nullable=True),
    sa.Column('reward', sa.Float(), nullable=True),
    sa.Column('value', sa.Float(), nullable=True),
    sa.Column('advantage', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['tree_id', 'parent_index'], ['nodes.tree_id', 'nodes.node_index'], name='fk_nodes_parent'),
    sa.ForeignKeyConstraint(['tree_id'], ['trees.id'], name=op.f('fk_nodes_tree_id_trees'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tree_id', 'node_index', name=op.f('pk_nodes'))
    )


def downgrade() -> None:
    op.drop_table('nodes')
    with op.batch_alter_table('trees', schema=None) as batch_op:
        batch_op.drop_index('ix_trees_run_id_scored')

    op.drop_table('trees')
    op.drop_table('train_steps')
    op.drop_table('eval_results')
    op.drop_table('runs')
    op.drop_table('problems')
