"""Tables. Storage knows providers only as name strings."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# tunegate keys: only a hash of the secret part is stored; the key id is looked up, the hash compared
# in constant time.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("secret_hash", sa.String(128), nullable=False),
    sa.Column("connections", sa.JSON, nullable=False),  # granted connection names, or ["*"]
    sa.Column("allow_provider_keys", sa.Boolean, nullable=False, default=False),
    sa.Column("rate_limit_per_min", sa.Integer, nullable=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("revoked_at", sa.BigInteger, nullable=True),
)

# Stored provider connections; `secrets` is a Fernet token of a JSON object.
connections = sa.Table(
    "connections",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("provider", sa.String(64), nullable=False),
    sa.Column("base_url", sa.Text, nullable=True),
    sa.Column("secrets", sa.Text, nullable=False),
    sa.Column("options", sa.JSON, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

# Every job, file and upload seen through tunegate: where it lives and who owns it.
objects = sa.Table(
    "objects",
    metadata,
    sa.Column("kind", sa.String(16), primary_key=True),  # job | file | upload
    sa.Column("id", sa.String(512), primary_key=True),
    sa.Column("provider", sa.String(64), nullable=False),
    sa.Column("connection", sa.String(200), nullable=True),
    sa.Column("key_id", sa.String(64), nullable=True),
    sa.Column("status", sa.String(32), nullable=True),
    sa.Column("snapshot", sa.JSON, nullable=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

request_log = sa.Table(
    "request_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("trace_id", sa.String(128), nullable=False),
    sa.Column("key_id", sa.String(64), nullable=True),
    sa.Column("provider", sa.String(64), nullable=True),
    sa.Column("operation", sa.String(64), nullable=True),
    sa.Column("method", sa.String(8), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("upstream_status", sa.Integer, nullable=True),
    sa.Column("latency_ms", sa.Float, nullable=False),
)

# Results of creates made with an Idempotency-Key, so a retried create returns the same job.
idempotency = sa.Table(
    "idempotency",
    metadata,
    sa.Column("scope", sa.String(200), primary_key=True),  # key id (or "open") + provider
    sa.Column("idem_key", sa.String(255), primary_key=True),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # pending | done
    sa.Column("status_code", sa.Integer, nullable=True),
    sa.Column("body", sa.LargeBinary, nullable=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

# Gateway-managed files ("upload once, train anywhere").
managed_files = sa.Table(
    "managed_files",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("key_id", sa.String(64), nullable=True),
    sa.Column("filename", sa.Text, nullable=False),
    sa.Column("purpose", sa.String(64), nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("location", sa.Text, nullable=False),
    sa.Column("report", sa.JSON, nullable=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=True),
)

# Copies of managed files pushed to a provider (converted as that provider needs), reused by hash.
file_copies = sa.Table(
    "file_copies",
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("provider", sa.String(64), primary_key=True),
    sa.Column("connection", sa.String(200), primary_key=True),  # "" when none
    sa.Column("target_format", sa.String(64), primary_key=True),
    sa.Column("remote_id", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)
