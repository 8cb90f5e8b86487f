"""Settings: embedded defaults, an optional TOML file, then ``TUNEGATE_*`` environment variables.

Precedence (highest first): explicit keyword arguments, environment, the TOML file, defaults.
Nested values use ``__`` in the environment, e.g. ``TUNEGATE_TIMEOUTS__CONNECT=5``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from tunegate.cluster.settings import RaySettings
from tunegate.serving.request import MAX_N
from tunegate.webhooks.settings import WatchSettings, WebhookSettings

MB = 1024 * 1024


class Timeouts(BaseModel):
    """Seconds per phase of an upstream call; each answered as a 504 when exceeded."""

    connect: float = 10.0
    first_byte: float = 120.0
    idle: float = 120.0


class RetryPolicy(BaseModel):
    attempts: int = 3  # total tries for idempotent operations
    on_status_codes: list[int] = Field(default_factory=lambda: [429, 500, 502, 503, 504])
    backoff_base: float = 0.25
    backoff_max: float = 8.0


class ProviderSettings(BaseModel):
    base_url: str | None = None
    timeouts: Timeouts | None = None


class LocalServing(BaseModel):
    """Serving ``local`` models (``tunegate/serving/local``, ``[local_serving]`` in the TOML file). By default
    the gateway starts its own model server (transformers + peft) on first use; ``engine = "vllm"`` starts
    ``vllm serve`` instead; ``url`` points at a server that is already running and starts nothing."""

    engine: Literal["transformers", "vllm"] = "transformers"
    url: str | None = None  # e.g. "http://10.0.0.5:8000/v1": an operator's vLLM (or tunegate) server
    api_key: str | None = None  # that server's bearer token
    device: str = "auto"  # transformers engine: "cpu", "cuda", "cuda:1" … ("auto": cuda when there is one)
    threads: int | None = Field(default=None, ge=1)  # torch CPU threads of the model server
    max_loras: int = Field(default=4, ge=1)  # adapters kept loaded per base model (LRU); vLLM's --max-loras
    max_base_models: int = Field(default=1, ge=1)  # base models kept resident (transformers engine)
    concurrency: int = Field(default=1, ge=1)  # generations at once (transformers engine)
    queue_size: int = Field(default=16, ge=0)  # requests waiting beyond those; more are answered 429
    default_max_tokens: int = Field(default=512, ge=1)  # when a request sets no max_tokens
    startup_timeout: float = Field(default=600.0, gt=0)  # seconds for the server to become ready
    vllm_model: str | None = None  # the base model vLLM serves (default: the first one asked for)
    vllm_executable: str = "vllm"
    vllm_max_lora_rank: int = Field(default=64, ge=1)  # at least the largest lora_r of the adapters served
    vllm_tensor_parallel_size: int = Field(default=1, ge=1)
    vllm_args: list[str] = Field(default_factory=list)  # anything else for `vllm serve`


class LocalTraining(BaseModel):
    """How the ``local`` provider's trainer uses this machine (``[local_training]`` in the TOML file,
    ``TUNEGATE_LOCAL_TRAINING__PROCESSES=2`` in the environment). Every job of this instance gets it;
    see tunegate/trainer/README.md. ``processes`` > 1 runs each job under torchrun, one rank per device."""

    processes: int = Field(default=1, ge=1)  # ranks per job (DDP; each job then uses this many devices)
    strategy: Literal["ddp", "fsdp"] = "ddp"  # fsdp: model sharded over the ranks (CUDA; unverified)
    device: str = "auto"  # "cpu", "cuda", "cuda:1" … ("auto": cuda when there is one; under torchrun cuda:RANK)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # CUDA only; CPU trains in fp32
    gradient_checkpointing: bool = False
    quantization: Literal["none", "4bit", "8bit"] = "none"  # QLoRA (bitsandbytes, tunegate[qlora], CUDA)
    threads: int | None = Field(default=None, ge=1)  # torch CPU threads per rank
    # "process": this instance trains in its own children (one machine). "ray": each job is submitted to
    # the Ray cluster of [local_training.ray] (needs file_store = "s3"; see tunegate/cluster).
    engine: Literal["process", "ray"] = "process"
    ray: RaySettings = Field(default_factory=RaySettings)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEGATE_", env_nested_delimiter="__", extra="ignore")
    _toml_path: ClassVar[Path | None] = None

    host: str = "127.0.0.1"
    port: int = 8787
    data_dir: Path = Path.home() / ".tunegate"
    database_url: str | None = None  # default: SQLite file under data_dir
    # PostgreSQL connections each gateway process keeps (opened as needed, then kept; a write beyond them
    # waits for one). PostgreSQL's max_connections must cover instances x workers x this, plus the CLI.
    database_pool_size: int = Field(default=20, ge=1, le=500)
    secret_key: str | None = None  # Fernet key for connection secrets; default: a key file in data_dir
    # Hosts (names, addresses or CIDR ranges) that x-portkey-custom-host may point at even though they are
    # not public addresses. Setting it replaces the default, which trusts loopback for local development.
    allowed_custom_hosts: list[str] = Field(default_factory=lambda: ["localhost", "127.0.0.1", "::1"])
    max_upload_bytes: int = 512 * MB
    max_json_body_bytes: int = 4 * MB
    max_header_bytes: int = 32 * 1024  # all request headers together; more is a 431
    # Connections (tunegate serve): a request's line and headers must arrive within header_timeout
    # seconds of its first byte (or of the connection opening), else a 408 and the connection closes;
    # an idle kept-alive connection closes after keep_alive_timeout; beyond max_connections open at
    # once (per worker), requests are answered 503. While a request's body is incomplete, more than
    # body_idle_timeout seconds without a byte of it (the gateway not having paused reading) is a 408
    # (or a bare close once a response has been sent) and the connection closes.
    header_timeout: float = Field(default=15.0, gt=0)
    body_idle_timeout: float = Field(default=30.0, gt=0)
    keep_alive_timeout: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=1000, ge=1)
    rate_limit_per_min: int | None = None  # default for keys without their own limit (None: unlimited)
    max_concurrent_uploads: int = 8  # per key (per gateway process when open)
    validate_uploads: bool = True
    # Validate uploads of at least this many bytes (declared by Content-Length) in a helper process, on
    # another core, while the bytes stream upstream (tunegate/data/helper.py); None: always in the serving
    # process. On this 2-core machine, quiet: 200 MiB at 301 vs 224 MB/s, the event loop's lag during the
    # upload 0.6 vs 2.2 ms at p50, for ~6 % more CPU in all; with both cores busy ~3 % slower
    # (docs/performance.md, Upload). Never more helpers at once than cores less one; one core: inline.
    validate_uploads_in_helper_from_bytes: int | None = Field(default=32 * 1024 * 1024, ge=0)
    local_concurrency: int = 1  # `local` provider: training processes per gateway instance (0: none here)
    # `local` provider limits. A job's model is a Hugging Face id (from the local cache, never downloaded)
    # or a model directory under one of these roots; no other path on the host is looked at.
    local_model_roots: list[Path] = Field(default_factory=list)
    local_max_active_jobs_per_key: int = Field(default=8, ge=1)  # validating, queued or running (429 beyond)
    local_max_lora_r: int = Field(default=64, ge=1)
    local_max_seq_length: int = Field(default=8192, ge=8)
    local_max_epochs: int = Field(default=50, ge=1)  # an "auto" count is lowered to it
    local_keep_checkpoints: int = Field(default=3, ge=1)  # per job, the newest ones; the best one is kept too
    # `local` chat: the most choices (`n`) one chat completion may ask for (more: 400, param "n"). The
    # transformers server generates them one after another in one slot; at most OpenAI's own cap of 128.
    local_chat_max_n: int = Field(default=MAX_N, ge=1, le=MAX_N)
    # Bytes of managed files (`tunegate`/`local` providers, job results included) one key may keep
    # (one shared budget on an open gateway); None: no bound. Beyond it, uploads are answered 429.
    managed_files_max_bytes_per_key: int | None = Field(default=20 * 1024**3, ge=0)
    default_provider: str | None = None  # used when a request names no provider at all
    # Where /v1/files requests that name no provider go; "tunegate" keeps them in the gateway's own store.
    default_file_provider: str | None = None
    # Where managed files' bytes live: "local" (data_dir/files) or "s3" (a bucket several instances share;
    # keys from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, endpoint from
    # AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL).
    file_store: Literal["local", "s3"] = "local"
    file_store_s3_bucket: str | None = None
    file_store_s3_prefix: str = "tunegate/files"
    file_store_s3_region: str | None = None  # default: AWS_REGION, AWS_DEFAULT_REGION, then us-east-1
    # local copies the `local` trainer reads, per instance; least recently used go first beyond this
    file_store_s3_cache_bytes: int = Field(default=20 * 1024**3, ge=0)
    local_training: LocalTraining = Field(default_factory=LocalTraining)
    local_serving: LocalServing = Field(default_factory=LocalServing)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    watch: WatchSettings = Field(default_factory=WatchSettings)  # the job watcher (tunegate.webhooks)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    request_log: bool = True
    # Request-log retention, pruned in the background (None: no such bound).
    request_log_max_age_days: float | None = Field(default=30.0, gt=0)
    request_log_max_rows: int | None = Field(default=1_000_000, ge=0)
    request_log_prune_seconds: float = Field(default=60.0, gt=0)  # how often
    # GET /metrics: with a token set, only `Authorization: Bearer <metrics_token>` may scrape; without
    # one, an open gateway's metrics are open and a keyed gateway's need a valid tunegate key.
    metrics_token: str | None = None
    # The dashboard's session cookie gets the Secure flag: None, when the request came over https; True,
    # always (set it behind a proxy that ends TLS, where the gateway itself sees http); False, never.
    ui_secure_cookie: bool | None = None
    log_level: str = "info"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls._toml_path))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> Settings:
        class FileSettings(cls):  # type: ignore[valid-type,misc]
            _toml_path = Path(config_file) if config_file else None

        return FileSettings(**overrides)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'tunegate.db'}"

    def provider_base_url(self, provider: str) -> str | None:
        configured = self.providers.get(provider)
        return configured.base_url if configured else None
