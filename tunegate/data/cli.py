"""`tunegate validate FILE` implementation (wired into the main CLI elsewhere)."""

from __future__ import annotations

import os
import sys

import orjson

from .validator import METHODS, validate_path

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_MISSING = 2


def validate_command(
    path: str, method: str = "supervised", model: str | None = None, as_json: bool = False
) -> int:
    """Validate ``path`` and print a report (text or JSON).

    Returns 0 when the file is valid, 1 when it has errors (or the method is
    unknown), 2 when the file does not exist or cannot be read.
    """
    if method not in METHODS:
        msg = f"unknown method {method!r}; expected one of {', '.join(METHODS)}"
        if as_json:
            sys.stdout.write(orjson.dumps({"ok": False, "error": msg}).decode() + "\n")
        else:
            print(f"error: {msg}", file=sys.stderr)
        return EXIT_INVALID
    if not os.path.isfile(path):
        msg = f"no such file: {path}"
        if as_json:
            sys.stdout.write(orjson.dumps({"ok": False, "error": msg, "path": path}).decode() + "\n")
        else:
            print(f"error: {msg}", file=sys.stderr)
        return EXIT_MISSING
    try:
        report = validate_path(path, method=method, model=model)
    except OSError as exc:
        msg = f"cannot read {path}: {exc.strerror or exc}"
        if as_json:
            sys.stdout.write(orjson.dumps({"ok": False, "error": msg, "path": path}).decode() + "\n")
        else:
            print(f"error: {msg}", file=sys.stderr)
        return EXIT_MISSING
    if as_json:
        payload = report.to_dict()
        payload["path"] = path
        sys.stdout.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(f"{path}:")
        print(report.summary())
    return EXIT_OK if report.ok else EXIT_INVALID
