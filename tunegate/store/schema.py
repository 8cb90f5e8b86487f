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
    sa.Column("owner", sa.String(64), primary_key=True, server_default=""),  # the key that pushed it; "" open
    sa.Column("remote_id", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

# The provider's own page token behind each list cursor served (the id of a page's last item), so
# any instance sharing the database serves the next page with one upstream call. `cursor_key` is a
# SHA-256 of (provider, credential scope, listing, filters, last id): no secret is stored and one
# scope's token is never found under another's key. Rows expire (provider tokens do too) and are pruned.
page_cursors = sa.Table(
    "page_cursors",
    metadata,
    sa.Column("cursor_key", sa.String(64), primary_key=True),
    sa.Column("provider", sa.String(64), nullable=False),
    sa.Column("token", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Index("ix_page_cursors_expires_at", "expires_at"),
)

# ---- the `local` provider's job queue (tunegate.localjobs) --------------------------------------

# One row per fine-tuning job trained on this gateway's own hardware. `status` is OpenAI's; a paused
# job is `queued` with `paused` set. A worker claims a job by setting `claimed_by` in a conditional
# UPDATE (status='queued' AND claimed_by IS NULL), so instances sharing a database never run it twice.
local_jobs = sa.Table(
    "local_jobs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # ftjob-<ms hex><random>: sorts by creation
    sa.Column("key_id", sa.String(64), nullable=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("training_file", sa.String(64), nullable=False),
    sa.Column("validation_file", sa.String(64), nullable=True),
    sa.Column("method", sa.JSON, nullable=False),  # {"type": "supervised"|"dpo", "<type>": {"hyperparameters": …}}
    sa.Column("hyperparameters", sa.JSON, nullable=False),  # as requested, then resolved numbers
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("suffix", sa.String(64), nullable=True),
    sa.Column("metadata", sa.JSON, nullable=True),
    sa.Column("fine_tuned_model", sa.Text, nullable=True),
    sa.Column("trained_tokens", sa.BigInteger, nullable=True),
    sa.Column("error", sa.JSON, nullable=True),
    sa.Column("result_files", sa.JSON, nullable=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("started_at", sa.BigInteger, nullable=True),
    sa.Column("finished_at", sa.BigInteger, nullable=True),
    sa.Column("estimated_finish", sa.BigInteger, nullable=True),
    sa.Column("claimed_by", sa.String(200), nullable=True),  # worker instance id while validating/running
    sa.Column("heartbeat_at", sa.Float, nullable=True),
    sa.Column("pid", sa.Integer, nullable=True),  # training child process of the claiming instance
    sa.Column("attempts", sa.Integer, nullable=False, default=0),  # training runs started
    sa.Column("resume_from", sa.Text, nullable=True),  # checkpoint directory the next run continues from
    sa.Column("output_dir", sa.Text, nullable=True),  # the current run's directory
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("pause_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("paused", sa.Boolean, nullable=False, default=False),
    # A run handed to an engine outside this instance (tunegate.cluster: "ray"): its id there, named before
    # it is submitted so another instance can follow it, and the last log event stored (each stored once).
    sa.Column("engine", sa.String(16), nullable=True),
    sa.Column("engine_job_id", sa.String(200), nullable=True),
    sa.Column("engine_cursor", sa.BigInteger, nullable=False, default=0),
    sa.Index("ix_local_jobs_status", "status"),
    sa.Index("ix_local_jobs_key_id", "key_id"),
)

# Events of local jobs; `seq` is increasing across the table (the event id is derived from it).
local_job_events = sa.Table(
    "local_job_events",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(64), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("level", sa.String(8), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),  # message | metrics
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("data", sa.JSON, nullable=True),
    sa.Index("ix_local_job_events_job", "job_id", "seq"),
)

# End-of-epoch checkpoints of local jobs (each directory is a PEFT adapter and a valid resume point).
local_job_checkpoints = sa.Table(
    "local_job_checkpoints",
    metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("step", sa.Integer, primary_key=True),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

# ---- job watcher and webhooks (tunegate.webhooks, migration 0006) -------------------------------

# Webhook endpoints, per tunegate key (NULL: registered on an open gateway; those hear only unowned jobs).
# The signing secret is needed to sign, so it is sealed with the gateway's secret (Fernet), not hashed.
webhook_endpoints = sa.Table(
    "webhook_endpoints",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # whep_<hex>
    sa.Column("key_id", sa.String(64), nullable=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("event_types", sa.JSON, nullable=False),
    sa.Column("secret", sa.Text, nullable=False),  # sealed {"secret": "whsec_…"}
    sa.Column("secret_hint", sa.String(32), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Index("ix_webhook_endpoints_key_id", "key_id"),
)

# One row per (job, status) — or (job, "checkpoint:<id>") — the registry has ever recorded. Its primary key
# is what makes "one event per change" hold across instances: only the transaction that inserts the row
# writes the event.
job_transitions = sa.Table(
    "job_transitions",
    metadata,
    sa.Column("job_id", sa.String(512), primary_key=True),
    sa.Column("mark", sa.String(300), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
)

# The outbox: events, written in the transaction that records the status change, and one delivery per
# subscribed endpoint. `payload` holds the exact bytes every attempt sends (and signs).
webhook_events = sa.Table(
    "webhook_events",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # evt_<hex>
    sa.Column("job_id", sa.String(512), nullable=False),
    sa.Column("key_id", sa.String(64), nullable=True),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),  # when the change was recorded (latency is measured from it)
    sa.Column("payload", sa.Text, nullable=False),
    sa.Index("ix_webhook_events_job_id", "job_id"),
)

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # wh_<hex>: the webhook-id header, the same on every attempt
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("endpoint_id", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # pending | delivered | failed
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("lease_owner", sa.String(200), nullable=True),
    sa.Column("lease_until", sa.Float, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("last_attempt_at", sa.Float, nullable=True),
    sa.Column("delivered_at", sa.Float, nullable=True),
    sa.Column("last_status", sa.Integer, nullable=True),  # the receiver's HTTP status
    sa.Column("last_error", sa.String(200), nullable=True),  # why the last attempt failed (never a body)
    sa.Column("latency_ms", sa.Float, nullable=True),  # of the last attempt
    sa.Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
    sa.Index("ix_webhook_deliveries_endpoint", "endpoint_id", "created_at"),
)

# The watcher's work list: every non-terminal job, with its next poll and the instance holding its lease.
job_watch = sa.Table(
    "job_watch",
    metadata,
    sa.Column("job_id", sa.String(512), primary_key=True),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("status", sa.String(32), nullable=True),  # as last polled
    sa.Column("next_poll_at", sa.Float, nullable=False),
    sa.Column("unchanged", sa.Integer, nullable=False, default=0),  # polls since the status last changed
    sa.Column("failures", sa.Integer, nullable=False, default=0),  # failed polls in a row
    sa.Column("polls", sa.BigInteger, nullable=False, default=0),
    sa.Column("lease_owner", sa.String(200), nullable=True),
    sa.Column("lease_until", sa.Float, nullable=True),
    sa.Column("reason", sa.String(200), nullable=True),  # why it is no longer watched
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("ix_job_watch_due", "active", "next_poll_at"),
    sa.Index("ix_job_watch_lease", "lease_owner"),
)
