"""The dashboard at ``/ui`` (pages in :mod:`tunegate.ui.pages`). Kept import-free so the CLI can use
:mod:`tunegate.ui.loss` without loading the web stack."""

from __future__ import annotations

from typing import Any


def mount(path: str = "/ui", name: str = "ui") -> Any:
    """The dashboard's mount (a Starlette ``Mount``): every answer under ``path``, and at ``path``
    itself (the redirect to ``path/``), carries the dashboard's security headers."""
    from tunegate.ui.pages import mount as page_mount

    return page_mount(path, name=name)
