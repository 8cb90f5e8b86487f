"""The dashboard at ``/ui`` (pages in :mod:`tunegate.ui.pages`). Kept import-free so the CLI can use
:mod:`tunegate.ui.loss` without loading the web stack."""

from __future__ import annotations

from typing import Any


def routes() -> list[Any]:
    from tunegate.ui.pages import routes as page_routes

    return page_routes()
