"""`tunegate migrate` without a subcommand still upgrades the schema (serve runs it), as does `db upgrade`."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("args", [["migrate"], ["db", "upgrade"]])
def test_schema_upgrade_commands(tmp_path: Path, args: list[str]) -> None:
    env = {"TUNEGATE_DATA_DIR": str(tmp_path / "data"), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "tunegate", *args], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "database ready" in done.stdout
    with sqlite3.connect(tmp_path / "data" / "tunegate.db") as db:
        tables = {r[0] for r in db.execute("select name from sqlite_master where type='table'")}
    assert "alembic_version" in tables and len(tables) > 3
