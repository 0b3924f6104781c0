"""claims (a generate worker's lease on a batch of a run's problems) and trees.worker.

Several `treerpo generate` processes on one run share its problems through `claims`
(`treerpo.growth.claims`); `trees.worker` names the process that grew each tree. Trees stored
before this revision read as grown by an unnamed worker (NULL).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 01:25:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('claims',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('batch_index', sa.Integer(), nullable=False),
    sa.Column('worker', sa.String(length=256), nullable=False),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_claims_run_id_runs'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'epoch', 'batch_index', name=op.f('pk_claims'))
    )
    with op.batch_alter_table('trees', schema=None) as batch_op:
        batch_op.add_column(sa.Column('worker', sa.String(length=256), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('trees', schema=None) as batch_op:
        batch_op.drop_column('worker')
    op.drop_table('claims')
