"""file copies per key: a managed file's remote copy is reused only by the key that pushed it

Revision ID: 0005
Revises: 0004

A gateway-managed file is pushed to a provider once per content hash; the copy's id was shared by every
key on the same connection, so one key's job could name another key's remote file, and a key could learn
that another had uploaded the same bytes. The copy now belongs to the key (``owner``, '' on an open
gateway) and is part of the key. Existing rows become the open gateway's: keyed requests push their own
copy once.
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

_OLD_KEY = ('sha256', 'provider', 'connection', 'target_format')


def _table(name: str, with_owner: bool) -> None:
    columns: list[sa.Column[Any]] = [
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('provider', sa.String(length=64), nullable=False),
        sa.Column('connection', sa.String(length=200), nullable=False),
        sa.Column('target_format', sa.String(length=64), nullable=False),
    ]
    if with_owner:
        columns.append(sa.Column('owner', sa.String(length=64), nullable=False, server_default=''))
    columns += [sa.Column('remote_id', sa.Text(), nullable=False), sa.Column('created_at', sa.BigInteger(), nullable=False)]
    op.create_table(name, *columns, sa.PrimaryKeyConstraint(*_OLD_KEY, *(('owner',) if with_owner else ())))


def upgrade() -> None:
    # A new table and a copy, not ALTER: SQLite cannot change a primary key in place.
    _table('file_copies_new', with_owner=True)
    op.execute("INSERT INTO file_copies_new (sha256, provider, connection, target_format, owner, remote_id, "
               "created_at) SELECT sha256, provider, connection, target_format, '', remote_id, created_at "
               "FROM file_copies")
    op.drop_table('file_copies')
    op.rename_table('file_copies_new', 'file_copies')


def downgrade() -> None:
    _table('file_copies_old', with_owner=False)
    op.execute("INSERT INTO file_copies_old (sha256, provider, connection, target_format, remote_id, created_at) "
               "SELECT sha256, provider, connection, target_format, remote_id, created_at FROM file_copies "
               "WHERE owner = ''")
    op.drop_table('file_copies')
    op.rename_table('file_copies_old', 'file_copies')
