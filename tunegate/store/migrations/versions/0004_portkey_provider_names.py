"""provider names: Portkey's slugs (together-ai, fireworks-ai, mistral-ai) in every stored row

Revision ID: 0004
Revises: 0003

The gateway now names providers as Portkey does and accepts the old short names only as aliases, so a
stored object keeps one canonical name. This rewrites the rows written under the old names: connections,
the object registry, the request log, managed-file copies (provider and target format) and the
idempotency scopes (``<key>:<provider>:<connection>``). Cached page cursors are keyed by a hash that
includes the provider name, so rows under an old name can never be found again: they are deleted (a
cursor that is not found falls back to re-listing). The names are written out here, not read from the
adapters, so the migration means the same thing whatever the code does later.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

RENAMES = {"together": "together-ai", "fireworks": "fireworks-ai", "mistral": "mistral-ai"}

# (table, column) pairs that hold a provider name as the whole value.
NAME_COLUMNS = (
    ("connections", "provider"),
    ("objects", "provider"),
    ("request_log", "provider"),
    ("file_copies", "provider"),
    ("file_copies", "target_format"),
)


def _rename(renames: dict[str, str]) -> None:
    conn = op.get_bind()
    for table, column in NAME_COLUMNS:
        for old, new in renames.items():
            conn.execute(sa.text(f"UPDATE {table} SET {column} = :new WHERE {column} = :old"),
                         {"old": old, "new": new})
    _rename_scopes(conn, renames)
    conn.execute(sa.text("DELETE FROM page_cursors WHERE provider IN :names").bindparams(
        sa.bindparam("names", expanding=True)), {"names": list(renames)})


def _rename_scopes(conn: sa.Connection, renames: dict[str, str]) -> None:
    """Idempotency scopes are ``<key id or 'open'>:<provider>:<connection>``; key ids hold no ':'."""
    for old, new in renames.items():
        rows = conn.execute(sa.text("SELECT scope, idem_key FROM idempotency WHERE scope LIKE :pattern"),
                            {"pattern": f"%:{old}:%"}).all()
        for scope, idem_key in rows:
            owner, _, rest = scope.partition(":")
            provider, _, connection = rest.partition(":")
            if provider == old:
                conn.execute(sa.text("UPDATE idempotency SET scope = :new WHERE scope = :old AND idem_key = :key"),
                             {"new": f"{owner}:{new}:{connection}", "old": scope, "key": idem_key})


def upgrade() -> None:
    _rename(RENAMES)


def downgrade() -> None:
    _rename({new: old for old, new in RENAMES.items()})
