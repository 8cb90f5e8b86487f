"""The gateway's side of the local model server: find it, start it, share it, restart it, stop it.

One server per data directory, whatever the number of gateway workers or instances on it:

* ``<data_dir>/local/serving/server.json`` (0600) holds the running server's URL, bearer token, pid and
  engine; ``server.lock`` is taken (``flock``) by whoever starts one, so two workers asking at once start
  one server, and the second adopts it.
* The server is started lazily, on the first chat (an asyncio subprocess: nothing blocks the event loop),
  and checked before use: a server that died is started again.
* The instance that started it stops it at shutdown (the transformers server also exits by itself when
  the pipe from the gateway that started it closes, e.g. after a crash).
* ``local_serving.url`` points at a server the operator runs (e.g. vLLM elsewhere): nothing is started.

Engines: ``transformers`` (``python -m tunegate.serving.local.server``, token on its stdin) and ``vllm``
(``vllm serve BASE --enable-lora …`` with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``, token in
``VLLM_API_KEY``). Both serve vLLM's routes, so adapters are loaded the same way:
``POST /v1/load_lora_adapter {lora_name, lora_path}``. Every call goes through ``Upstream``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunegate.config import LocalServing, RetryPolicy, Settings, Timeouts
from tunegate.errors import APIError, InvalidRequest, UpstreamError
from tunegate.upstream import CallPolicy, Upstream

log = logging.getLogger("tunegate.serving")

RECHECK_S = 2.0  # a server another instance started is looked at again after this long
STOP_GRACE_S = 10.0


@dataclass(frozen=True)
class Endpoint:
    url: str  # up to /v1
    token: str | None
    engine: str
    model: str | None = None  # vLLM: the one base model it serves
    pid: int | None = None

    @property
    def root(self) -> str:
        return self.url.removesuffix("/v1")

    @property
    def host(self) -> str:
        from urllib.parse import urlsplit

        return (urlsplit(self.url).hostname or "").lower()

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def serving_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "local" / "serving"


def vllm_command(conf: LocalServing, base: str, port: int) -> list[str]:
    """``vllm serve`` with LoRA on (flags: vllm/engine/arg_utils.py, docs/features/lora.md)."""
    return [conf.vllm_executable, "serve", base, "--host", "127.0.0.1", "--port", str(port), "--enable-lora",
            "--max-loras", str(conf.max_loras), "--max-lora-rank", str(conf.vllm_max_lora_rank),
            "--tensor-parallel-size", str(conf.vllm_tensor_parallel_size), *conf.vllm_args]


def server_command(conf: LocalServing) -> list[str]:
    cmd = [sys.executable, "-m", "tunegate.serving.local.server", "--device", conf.device,
           "--max-loras", str(conf.max_loras), "--max-base-models", str(conf.max_base_models),
           "--concurrency", str(conf.concurrency), "--queue-size", str(conf.queue_size),
           "--default-max-tokens", str(conf.default_max_tokens)]
    return cmd + (["--threads", str(conf.threads)] if conf.threads else [])


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """The training children's allow-listed environment (no gateway secret), offline, plus ``extra``."""
    from tunegate.trainer.process import OFFLINE_ENV, child_environment

    env = {**child_environment(os.environ), **OFFLINE_ENV, "PYTHONUNBUFFERED": "1"}
    package_root = str(Path(__file__).resolve().parents[3])  # so `-m tunegate…` imports this very code
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    return {**env, **extra}


def _policy(host: str, seconds: float = 5.0) -> CallPolicy:
    # The server's address is the gateway's own choice (or the operator's url): trusted, not a client's.
    return CallPolicy(timeouts=Timeouts(connect=seconds, first_byte=seconds, idle=seconds),
                      retry=RetryPolicy(attempts=1), trusted_hosts=frozenset({host}))


class LocalServers:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.conf = settings.local_serving
        self.dir = serving_dir(settings.data_dir)
        self._lock = asyncio.Lock()
        self._proc: asyncio.subprocess.Process | None = None
        self._endpoint: Endpoint | None = None
        self._checked_at = 0.0
        self._adapters: set[tuple[Endpoint, str]] = set()
        self._log: Any = None

    # ---- finding or starting the server ----------------------------------------------------------

    async def endpoint(self, upstream: Upstream, base: str | None = None) -> Endpoint:
        """The server to send a chat to, started if needed. ``base`` picks vLLM's model at its start."""
        if self.conf.url:
            return Endpoint(self.conf.url.rstrip("/"), self.conf.api_key, self.conf.engine, self.conf.vllm_model)
        found = self._endpoint
        if found is not None and (self._owned_alive() or time.monotonic() - self._checked_at < RECHECK_S):
            return found
        async with self._lock:
            if self._endpoint is not None and self._owned_alive():
                return self._endpoint
            self._endpoint = await self._find_or_start(upstream, base)
            self._checked_at = time.monotonic()
            return self._endpoint

    def forget(self, endpoint: Endpoint) -> None:
        """A call to ``endpoint`` failed to connect: look again (and restart it if it died) next time."""
        if self._endpoint == endpoint:
            self._checked_at = 0.0
            if self._proc is not None and self._proc.returncode is None and not _alive(self._proc.pid):
                self._proc = None

    def _owned_alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None and self._checked_at > 0

    async def _find_or_start(self, upstream: Upstream, base: str | None) -> Endpoint:
        await asyncio.to_thread(self.dir.mkdir, mode=0o700, parents=True, exist_ok=True)
        adopted = await self._adopt(upstream)
        if adopted is not None:
            return adopted
        lock = await self._take_lock()
        try:
            adopted = await self._adopt(upstream)  # started by someone else while we waited for the lock
            if adopted is not None:
                return adopted
            endpoint = await self._start(upstream, base)
            await asyncio.to_thread(self._write_state, endpoint)
            return endpoint
        finally:
            await asyncio.to_thread(_unlock, lock)

    async def _adopt(self, upstream: Upstream) -> Endpoint | None:
        state = await asyncio.to_thread(self._read_state)
        if state is None or state.engine != self.conf.engine:
            return None
        if state.pid is not None and not _alive(state.pid):
            return None
        if await self._healthy(upstream, state):
            return state
        return None

    async def _healthy(self, upstream: Upstream, endpoint: Endpoint) -> bool:
        """Up, and ours: ``/health`` answers and the token is accepted."""
        try:
            health = await upstream.request("GET", endpoint.root + "/health", _policy(endpoint.host))
            if health.status != 200:
                return False
            models = await upstream.request("GET", endpoint.url + "/models", _policy(endpoint.host),
                                            headers=endpoint.headers())
            return models.status == 200
        except APIError:
            return False

    async def _take_lock(self) -> int:
        fd = await asyncio.to_thread(os.open, str(self.dir / "server.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.conf.startup_timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # never blocks: polled below
                return fd
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    os.close(fd)
                    raise UpstreamError("The local model server could not be started: another gateway process "
                                        "holds its start lock.", status=503, code="model_server_unavailable") from exc
            await asyncio.sleep(0.2)

    # ---- starting --------------------------------------------------------------------------------

    async def _start(self, upstream: Upstream, base: str | None) -> Endpoint:
        token = secrets.token_urlsafe(32)
        await self._stop_own()
        self._log = await asyncio.to_thread(_open_log, self.dir / "server.log")
        if self.conf.engine == "vllm":
            model = self.conf.vllm_model or base
            if not model:
                raise InvalidRequest("vLLM serves one base model: set local_serving.vllm_model, or name a model.",
                                     param="model")
            port = await asyncio.to_thread(_free_port)
            self._proc = await asyncio.create_subprocess_exec(
                *vllm_command(self.conf, model, port), stdin=asyncio.subprocess.DEVNULL, stdout=self._log,
                stderr=self._log, env=child_env({"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_API_KEY": token}),
                start_new_session=True)
            endpoint = Endpoint(f"http://127.0.0.1:{port}/v1", token, "vllm", model, self._proc.pid)
        else:
            self._proc = await asyncio.create_subprocess_exec(
                *server_command(self.conf), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=self._log, env=child_env({}), start_new_session=True)
            assert self._proc.stdin is not None and self._proc.stdout is not None
            self._proc.stdin.write(token.encode() + b"\n")  # the token never appears in ps or /proc/…/environ
            await self._proc.stdin.drain()
            port = await self._ready_line(self._proc.stdout)
            endpoint = Endpoint(f"http://127.0.0.1:{port}/v1", token, "transformers", None, self._proc.pid)
        log.info("local model server (%s) starting, pid %s", self.conf.engine, self._proc.pid)
        await self._wait_ready(upstream, endpoint)
        return endpoint

    async def _ready_line(self, stdout: asyncio.StreamReader) -> int:
        try:
            line = await asyncio.wait_for(stdout.readline(), self.conf.startup_timeout)
            return int(json.loads(line)["port"])
        except (TimeoutError, ValueError, KeyError, TypeError):
            await self._stop_own()
            raise UpstreamError("The local model server did not start (see local/serving/server.log in the data "
                                "directory).", status=503, code="model_server_unavailable") from None

    async def _wait_ready(self, upstream: Upstream, endpoint: Endpoint) -> None:
        deadline = time.monotonic() + self.conf.startup_timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.returncode is not None:
                break
            if await self._healthy(upstream, endpoint):
                return
            await asyncio.sleep(0.25)
        await self._stop_own()
        raise UpstreamError(f"The local model server ({self.conf.engine}) did not become ready (see "
                            "local/serving/server.log in the data directory).", status=503,
                            code="model_server_unavailable")

    # ---- adapters --------------------------------------------------------------------------------

    async def load_adapter(self, upstream: Upstream, endpoint: Endpoint, name: str, path: str, base: str) -> None:
        """Make adapter ``name`` callable as a model on ``endpoint`` (vLLM's runtime LoRA loading)."""
        if (endpoint, name) in self._adapters:
            return
        body: dict[str, Any] = {"lora_name": name, "lora_path": path}
        if endpoint.engine == "transformers":
            body["base_model_name"] = base  # the gateway decides the base, not the adapter's own config
        answer = await upstream.request("POST", endpoint.url.removesuffix("/v1") + "/v1/load_lora_adapter",
                                        _policy(endpoint.host, 120.0), headers=endpoint.headers(), json=body)
        text = answer.body[:2000].decode("utf-8", "replace")
        if answer.status != 200 and "already been loaded" not in text:  # vLLM: a second load is a 400
            raise UpstreamError(f"The local model server could not load the adapter of '{name}' "
                                f"(HTTP {answer.status}).", status=502, code="adapter_load_failed")
        self._adapters.add((endpoint, name))

    async def unload_adapter(self, upstream: Upstream, name: str) -> None:
        """Forget adapter ``name`` on the running server, if there is one (a deleted model)."""
        endpoint = self._endpoint if not self.conf.url else await self.endpoint(upstream)
        if endpoint is None:
            return
        self._adapters.discard((endpoint, name))
        with contextlib.suppress(APIError):
            await upstream.request("POST", endpoint.root + "/v1/unload_lora_adapter", _policy(endpoint.host),
                                   headers=endpoint.headers(), json={"lora_name": name})

    def loaded(self, endpoint: Endpoint, name: str) -> bool:
        return (endpoint, name) in self._adapters

    def drop_known(self, endpoint: Endpoint) -> None:
        self._adapters = {a for a in self._adapters if a[0] != endpoint}

    # ---- state file ------------------------------------------------------------------------------

    def _read_state(self) -> Endpoint | None:
        try:
            raw = json.loads((self.dir / "server.json").read_text())
            return Endpoint(str(raw["url"]), str(raw["token"]), str(raw["engine"]), raw.get("model"),
                            int(raw["pid"]) if raw.get("pid") else None)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write_state(self, endpoint: Endpoint) -> None:
        tmp = self.dir / f"server.json.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"url": endpoint.url, "token": endpoint.token, "engine": endpoint.engine,
                       "model": endpoint.model, "pid": endpoint.pid, "started_by": os.getpid()}, fh)
        os.replace(tmp, self.dir / "server.json")

    def _remove_state(self, pid: int) -> None:
        state = self._read_state()
        if state is not None and state.pid == pid:
            with contextlib.suppress(OSError):
                (self.dir / "server.json").unlink()

    # ---- stopping --------------------------------------------------------------------------------

    async def _stop_own(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            if proc.stdin is not None:
                proc.stdin.close()
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
            except TimeoutError:
                _signal_group(proc.pid, signal.SIGKILL)
                await proc.wait()
        await asyncio.to_thread(self._remove_state, proc.pid)
        if self._endpoint is not None:
            self.drop_known(self._endpoint)
        self._endpoint = None
        if self._log is not None:
            self._log.close()
            self._log = None

    async def stop(self) -> None:
        async with self._lock:
            await self._stop_own()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pid: int, sig: int) -> None:
    # The server leads its own session (start_new_session): vLLM's workers go with it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _unlock(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _open_log(path: Path) -> Any:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    return os.fdopen(fd, "ab", buffering=0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- one manager per data directory, stopped with the app -----------------------------------------

# Keyed by the settings object: each app (gateway instance) has its own manager, and several on one data
# directory share the server through the state file, as separate processes would.
_MANAGERS: dict[int, LocalServers] = {}


def servers_for(settings: Settings) -> LocalServers:
    manager = _MANAGERS.get(id(settings))
    if manager is None or manager.settings is not settings:
        manager = _MANAGERS[id(settings)] = LocalServers(settings)
    return manager


async def shutdown(settings: Settings) -> None:
    """The app's lifespan calls this at shutdown: stop the server this instance started, if any."""
    manager = _MANAGERS.pop(id(settings), None)
    if manager is not None:
        await manager.stop()
