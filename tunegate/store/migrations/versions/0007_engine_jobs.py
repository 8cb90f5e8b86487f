"""local jobs run by an outside engine (Ray): engine, engine_job_id, engine_cursor

Revision ID: 0007
Revises: 0006
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('local_jobs') as batch:
        batch.add_column(sa.Column('engine', sa.String(length=16), nullable=True))
        batch.add_column(sa.Column('engine_job_id', sa.String(length=200), nullable=True))
        batch.add_column(sa.Column('engine_cursor', sa.BigInteger(), nullable=False, server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('local_jobs') as batch:
        batch.drop_column('engine_cursor')
        batch.drop_column('engine_job_id')
        batch.drop_column('engine')
