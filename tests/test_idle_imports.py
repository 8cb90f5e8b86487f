"""What an idle SQLite gateway keeps in memory: the serving process's app, built as uvicorn builds it, loads
no engine it is not configured to use. Each one below costs resident memory in every gateway process
(SQLAlchemy's PostgreSQL dialect ~2 MiB; botocore, google-auth, torch, Ray, Alembic far more), and the
300 MiB upload tests hold the whole process under 100 MiB (tests/providers/test_object_store_memory.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.gateway import _TEST_FERNET_KEY

NOT_AT_IDLE = ("sqlalchemy.dialects.postgresql", "asyncpg", "alembic", "botocore", "boto3", "google.auth",
               "torch", "transformers", "ray", "opentelemetry")


def test_an_idle_sqlite_gateway_loads_no_engine_it_does_not_use(tmp_path: Path) -> None:
    # The app as uvicorn loads it, through its startup (which opens the store) and one request.
    code = ("import json, sys, tunegate.server; from starlette.testclient import TestClient\n"
            "with TestClient(tunegate.server.app()) as client:\n"
            "    assert client.get('/healthz').status_code == 200\n"
            "print(json.dumps(sorted(sys.modules)))")
    env = {**os.environ, "TUNEGATE_DATA_DIR": str(tmp_path), "TUNEGATE_SECRET_KEY": _TEST_FERNET_KEY}
    env.pop("TUNEGATE_DATABASE_URL", None)
    env.pop("TUNEGATE_OTLP_ENDPOINT", None)
    # As `tunegate serve` does: the schema is made by a short-lived process, so the server never loads Alembic.
    subprocess.run([sys.executable, "-m", "tunegate", "migrate"], env=env, capture_output=True, check=True)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert "sqlalchemy.dialects.sqlite" in loaded  # the engine it does use
    found = [m for m in loaded if any(m == name or m.startswith(name + ".") for name in NOT_AT_IDLE)]
    assert found == []
