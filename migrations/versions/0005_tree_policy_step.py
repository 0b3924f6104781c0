"""trees.policy_step: the optimizer step of the training run whose weights grew a tree.

`treerpo generate --follow-policy DIR` grows with the newest checkpoint a trainer published in
DIR and records its step (0: the base model, before any checkpoint); chained training records
the step its batch was grown at. `treerpo train --follow` measures each tree's staleness with it
(its own step minus the tree's) and skips trees staler than `--max-staleness`. Trees of a plain
`generate` have none (NULL): their policy is known only by `trees.policy_version`.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 02:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('trees', schema=None) as batch_op:
        batch_op.add_column(sa.Column('policy_step', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('trees', schema=None) as batch_op:
        batch_op.drop_column('policy_step')
