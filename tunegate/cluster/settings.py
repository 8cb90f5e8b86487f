"""``[local_training.ray]``: the Ray cluster that trains this instance's ``local`` jobs.

Only read when ``[local_training] engine = "ray"``. Every value is the operator's: a client can neither
see nor change where jobs go, what they may use, or which credentials travel with them.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr


class RaySettings(BaseModel):
    # The head node's dashboard (Job Submission API), e.g. "http://10.0.0.5:8265". Trusted like the S3
    # endpoint: it may be a private address; it is never taken from a request.
    address: str = "http://127.0.0.1:8265"
    # The cluster's token when it runs with RAY_AUTH_MODE=token (`ray get-auth-token`): sent as
    # "Authorization: Bearer …", as Ray's own SDK does (ray/_private/authentication, Ray 2.60).
    token: SecretStr | None = None
    # The command that starts Python on the cluster's nodes, in an environment with tunegate[local,ray]
    # installed (a virtualenv path, or "python" when the nodes' PATH has it).
    python: str = "python"
    # Resources reserved for each job's entrypoint (Ray's entrypoint_num_cpus/num_gpus/memory/resources).
    # With [local_training] processes > 1 the job runs torchrun on its node: give it that many GPUs.
    num_cpus: float | None = Field(default=1.0, ge=0)
    num_gpus: float | None = Field(default=None, ge=0)
    memory_bytes: int | None = Field(default=None, ge=0)
    resources: dict[str, float] = Field(default_factory=dict)
    # Merged into each job's runtime_env (pip, conda, env_vars, …: Ray's own keys, passed as they are).
    runtime_env: dict[str, object] = Field(default_factory=dict)
    # The nodes reach the object store with their own credentials (instance role, env) by default. True
    # hands this instance's AWS keys to each job in its runtime_env: simple for a private cluster, but
    # whoever can read the Ray dashboard can then read them.
    forward_aws_credentials: bool = False
    poll_interval: float = Field(default=2.0, gt=0)  # seconds between looks at a job's status and log
    max_log_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)  # a job log larger than this fails the job
    max_artifact_bytes: int = Field(default=64 * 1024**3, ge=1024)  # an adapter or metrics file copied back
    request_timeout: float = Field(default=30.0, gt=0)  # one call to the Jobs API
