"""Operator settings of the job watcher (``[watch]``) and of webhook delivery (``[webhooks]``).

In the TOML file as tables, in the environment as ``TUNEGATE_WATCH__ENABLED=false``,
``TUNEGATE_WEBHOOKS__ALLOWED_HOSTS='["10.0.0.0/8"]'`` and so on.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class WatchSettings(BaseModel):
    """The background poll of every non-terminal job (tunegate.webhooks.watcher)."""

    enabled: bool = True
    tick_seconds: float = Field(default=1.0, gt=0)  # how often an instance looks for due polls
    # Seconds between polls by phase, when the status has just changed: fast while the provider checks
    # the files, slower once the job trains. Each poll that sees no change stretches the interval by
    # `backoff_factor`, up to `max_interval_seconds`; a terminal status stops the polls.
    intervals: dict[str, float] = Field(default_factory=lambda: {
        "validating_files": 10.0, "queued": 30.0, "running": 60.0})
    default_interval_seconds: float = Field(default=60.0, gt=0)  # a status not in `intervals`
    backoff_factor: float = Field(default=1.5, ge=1.0)
    max_interval_seconds: float = Field(default=900.0, gt=0)
    # A failed poll (provider down, 5xx) waits this long times 2^failures (jittered), up to the maximum.
    error_backoff_seconds: float = Field(default=30.0, gt=0)
    rate_limited_seconds: float = Field(default=60.0, gt=0)  # a 429 without Retry-After pauses the connection
    max_jobs: int = Field(default=1000, ge=1)  # jobs one instance holds leases on at a time
    concurrency: int = Field(default=8, ge=1)  # polls in flight per instance
    lease_seconds: float = Field(default=60.0, gt=0)  # an instance that stops renewing loses its jobs after this
    timeout_seconds: float = Field(default=30.0, gt=0)  # one poll's upstream call


class WebhookSettings(BaseModel):
    """Delivery of signed webhooks (tunegate.webhooks.delivery)."""

    enabled: bool = True
    tick_seconds: float = Field(default=0.5, gt=0)  # how often an instance looks for due deliveries
    timeout_seconds: float = Field(default=10.0, gt=0)  # connect + answer, per attempt
    retry_base_seconds: float = Field(default=5.0, gt=0)  # first retry after about this long, doubling
    retry_max_seconds: float = Field(default=6 * 3600.0, gt=0)  # the longest wait between two attempts
    max_age_hours: float = Field(default=72.0, gt=0)  # an event still undelivered after this is given up
    lease_seconds: float = Field(default=60.0, gt=0)  # a claimed attempt another instance may retake after
    concurrency: int = Field(default=16, ge=1)  # attempts in flight per instance
    max_endpoints_per_key: int = Field(default=20, ge=1)
    # Hosts (names, addresses, CIDR ranges) an endpoint URL may point at although they are not public.
    # None: the same list as `allowed_custom_hosts` (which trusts loopback by default).
    allowed_hosts: list[str] | None = None
