"""The upload validation helper's process (see :mod:`tunegate.data.helper`): the file's bytes on
stdin, the :class:`~tunegate.data.validator.Validator`'s report as one JSON object on stdout.

    python -m tunegate.data.worker METHOD MAX_BYTES

Imports nothing of the gateway but the validator (and the allocator settings): ~17 MB resident.
"""

from __future__ import annotations

import os
import sys

import orjson

from tunegate.allocator import tune_allocator

from .validator import Validator

# Below the 1 MiB mmap threshold: each read's buffer comes from the heap and is reused, not mapped
# and faulted in anew.
READ = 512 * 1024
TRIM = 8 * 1024 * 1024  # a short-lived single-purpose process: keep more free heap (2 MiB left ~110k faults)


def main(argv: list[str] | None = None) -> int:
    method, max_bytes = (argv if argv is not None else sys.argv[1:])[:2]
    tune_allocator(trim_threshold=TRIM)
    validator = Validator(method=method, model=None, max_bytes=int(max_bytes))
    while chunk := os.read(0, READ):
        validator.feed(chunk)
    out = orjson.dumps(validator.finish().to_dict())
    view = memoryview(out)
    while view:
        view = view[os.write(1, view):]
    return 0


if __name__ == "__main__":
    sys.exit(main())
