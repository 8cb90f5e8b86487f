"""Secrets given to the command line without putting them on it.

A value on a command line is readable by every local user (``ps``, ``/proc/<pid>/cmdline``) and lands in
shell history. So wherever the CLI takes a secret, the argument names where to read it instead:

* ``-``: one line from stdin (typed without echo when stdin is a terminal);
* ``@PATH``: the file's contents (one trailing newline dropped);
* for ``--secret``, a bare ``NAME``: the environment variable ``TUNEGATE_SECRET_<NAME>``.

A literal value still works, with a warning on stderr, so existing scripts keep running while they move.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

WARNING = ("warning: {what} given on the command line is visible to other users (ps) and kept in shell "
           "history; pass '-' to read it from stdin, '@FILE' to read a file, or use {env}.\n")


class SecretInputError(ValueError):
    pass


def _stdin_line(what: str) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(f"{what}: ")
    line = sys.stdin.readline()
    if not line:
        raise SecretInputError(f"{what}: stdin ended before a value was read")
    return line.rstrip("\r\n")


def _file(path: str, what: str) -> str:
    try:
        text = Path(path).expanduser().read_text()
    except OSError as exc:
        raise SecretInputError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    return text[:-1] if text.endswith("\n") else text


def read_secret(value: str, what: str, env: str) -> str:
    """``-`` (stdin), ``@PATH`` (a file) or, with a warning naming ``env``, the literal value."""
    if value == "-":
        return _stdin_line(what)
    if value.startswith("@") and len(value) > 1:
        return _file(value[1:], what)
    sys.stderr.write(WARNING.format(what=what, env=env))
    return value


def secret_env_name(name: str) -> str:
    return "TUNEGATE_SECRET_" + "".join(c if c.isalnum() else "_" for c in name).upper()


def secret_pairs(items: list[str]) -> dict[str, str]:
    """``--secret`` arguments: ``NAME`` (from ``TUNEGATE_SECRET_<NAME>``), ``NAME=-``, ``NAME=@PATH`` or
    the deprecated ``NAME=VALUE``."""
    found: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not name:
            raise SecretInputError(f"expected NAME, NAME=-, NAME=@FILE or NAME=VALUE, got {item!r}")
        env = secret_env_name(name)
        if not sep:
            if env not in os.environ:
                raise SecretInputError(f"secret {name!r}: set {env}, or give NAME=- (stdin) or NAME=@FILE")
            found[name] = os.environ[env]
        else:
            found[name] = read_secret(value, f"secret {name!r}", env)
    return found
