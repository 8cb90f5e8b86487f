"""Schema migrations with Alembic.

Alembic is imported only when the schema is behind: a gateway whose database is already at the
newest revision never loads it (about 10 MB of resident memory saved per process). ``tunegate
serve`` upgrades in a separate process before it starts serving.

Convention: revision files are named ``NNNN_<slug>.py`` with ``revision = 'NNNN'``, so the newest
revision is known without importing Alembic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MIGRATIONS = Path(__file__).with_name("migrations")


def head() -> str:
    """The newest revision id, from the file names of the versions folder."""
    return max(p.name.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9]*_*.py"))


def alembic_config(database_url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # Alembic's ini interpolation treats % specially; URLs may contain escaped characters.
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str) -> None:
    """Bring the database to the newest schema. Blocking: call it from a thread, not the event loop."""
    from alembic import command

    command.upgrade(alembic_config(database_url), "head")


if __name__ == "__main__":
    import sys

    upgrade(sys.argv[1])
