"""trees.tokenizer_hash: which tokenizer (vocabulary + chat template) a tree's token ids belong to.

Replay refuses trees whose token ids come from another tokenizer than the model being trained
(`treerpo.training.provenance`). Trees stored before this revision did not record it: they read
as NULL, "unknown provenance", and replay trains on them with a warning. The policy that grew a
tree was recorded from the first revision (`trees.policy_version`).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 23:55:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('trees', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tokenizer_hash', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('trees', schema=None) as batch_op:
        batch_op.drop_column('tokenizer_hash')
