"""nodes.forced: whether a node's first token was forced as an alternative (branching "forced").

Trees stored before this revision were all grown with the forced rule, but which of their nodes
started with a forced token was not recorded; they read as `forced = false`.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 21:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('forced', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.drop_column('forced')
