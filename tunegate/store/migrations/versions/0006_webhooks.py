"""job watcher and webhooks: endpoints, the outbox (events, deliveries), transitions, the watch list

Revision ID: 0006
Revises: 0005

Jobs already in the registry join the watch list when their status is not terminal, and every status
already recorded counts as seen (``job_transitions``), so upgrading sends no event for a change that
happened before the upgrade.
"""
from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

TERMINAL = ('succeeded', 'failed', 'cancelled')


def _tables() -> None:
    op.create_table(
        'webhook_endpoints',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('key_id', sa.String(length=64), nullable=True),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('url', sa.Text(), nullable=False),
        sa.Column('event_types', sa.JSON(), nullable=False),
        sa.Column('secret', sa.Text(), nullable=False),
        sa.Column('secret_hint', sa.String(length=32), nullable=False),
        sa.Column('created_at', sa.BigInteger(), nullable=False),
        sa.Column('updated_at', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_webhook_endpoints_key_id', 'webhook_endpoints', ['key_id'])
    op.create_table(
        'job_transitions',
        sa.Column('job_id', sa.String(length=512), nullable=False),
        sa.Column('mark', sa.String(length=300), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('job_id', 'mark'),
    )
    op.create_table(
        'webhook_events',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('job_id', sa.String(length=512), nullable=False),
        sa.Column('key_id', sa.String(length=64), nullable=True),
        sa.Column('type', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('payload', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_webhook_events_job_id', 'webhook_events', ['job_id'])
    op.create_table(
        'webhook_deliveries',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('event_id', sa.String(length=64), nullable=False),
        sa.Column('endpoint_id', sa.String(length=64), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', sa.Float(), nullable=False),
        sa.Column('lease_owner', sa.String(length=200), nullable=True),
        sa.Column('lease_until', sa.Float(), nullable=True),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('last_attempt_at', sa.Float(), nullable=True),
        sa.Column('delivered_at', sa.Float(), nullable=True),
        sa.Column('last_status', sa.Integer(), nullable=True),
        sa.Column('last_error', sa.String(length=200), nullable=True),
        sa.Column('latency_ms', sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_webhook_deliveries_due', 'webhook_deliveries', ['state', 'next_attempt_at'])
    op.create_index('ix_webhook_deliveries_endpoint', 'webhook_deliveries', ['endpoint_id', 'created_at'])
    op.create_table(
        'job_watch',
        sa.Column('job_id', sa.String(length=512), nullable=False),
        sa.Column('active', sa.Boolean(), nullable=False),
        sa.Column('status', sa.String(length=32), nullable=True),
        sa.Column('next_poll_at', sa.Float(), nullable=False),
        sa.Column('unchanged', sa.Integer(), nullable=False),
        sa.Column('failures', sa.Integer(), nullable=False),
        sa.Column('polls', sa.BigInteger(), nullable=False),
        sa.Column('lease_owner', sa.String(length=200), nullable=True),
        sa.Column('lease_until', sa.Float(), nullable=True),
        sa.Column('reason', sa.String(length=200), nullable=True),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('job_id'),
    )
    op.create_index('ix_job_watch_due', 'job_watch', ['active', 'next_poll_at'])
    op.create_index('ix_job_watch_lease', 'job_watch', ['lease_owner'])


def upgrade() -> None:
    _tables()
    now = time.time()
    terminal: sa.BindParameter[list[str]] = sa.bindparam('terminal', expanding=True)
    conn = op.get_bind()
    conn.execute(sa.text(
        "INSERT INTO job_transitions (job_id, mark, created_at) SELECT id, status, :now FROM objects "
        "WHERE kind = 'job' AND status IS NOT NULL"), {'now': now})
    conn.execute(sa.text(
        "INSERT INTO job_watch (job_id, active, status, next_poll_at, unchanged, failures, polls, updated_at) "
        "SELECT id, :yes, status, :now, 0, 0, 0, :now FROM objects "
        "WHERE kind = 'job' AND (status IS NULL OR status NOT IN :terminal)").bindparams(terminal),
        {'now': now, 'yes': True, 'terminal': list(TERMINAL)})


def downgrade() -> None:
    for index, table in (('ix_job_watch_lease', 'job_watch'), ('ix_job_watch_due', 'job_watch'),
                         ('ix_webhook_deliveries_endpoint', 'webhook_deliveries'),
                         ('ix_webhook_deliveries_due', 'webhook_deliveries'),
                         ('ix_webhook_events_job_id', 'webhook_events'),
                         ('ix_webhook_endpoints_key_id', 'webhook_endpoints')):
        op.drop_index(index, table_name=table)
    for table in ('job_watch', 'webhook_deliveries', 'webhook_events', 'job_transitions', 'webhook_endpoints'):
        op.drop_table(table)
