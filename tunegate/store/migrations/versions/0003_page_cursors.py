"""page cursors: the provider's page token behind each served list cursor

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'page_cursors',
        sa.Column('cursor_key', sa.String(length=64), nullable=False),
        sa.Column('provider', sa.String(length=64), nullable=False),
        sa.Column('token', sa.Text(), nullable=False),
        sa.Column('created_at', sa.BigInteger(), nullable=False),
        sa.Column('expires_at', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('cursor_key'),
    )
    op.create_index('ix_page_cursors_expires_at', 'page_cursors', ['expires_at'])


def downgrade() -> None:
    op.drop_index('ix_page_cursors_expires_at', table_name='page_cursors')
    op.drop_table('page_cursors')
