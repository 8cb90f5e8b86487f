"""atheris fuzz target for the JSONL validator and converters.

    .venv/bin/pip install atheris
    .venv/bin/python fuzz/fuzz_jsonl.py -max_total_time=60

Feeds the input to Validator in fuzzer-chosen chunks (checking the report is
the same as feeding it whole) and through every converter; the only exception
allowed out of a converter is ConversionError.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports():
    from tunegate.data import TARGETS, ConversionError, Validator, convert_lines

METHODS = ("supervised", "dpo", "reinforcement")


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris API name)
    fdp = atheris.FuzzedDataProvider(data)
    method = METHODS[fdp.ConsumeIntInRange(0, 2)]
    step = fdp.ConsumeIntInRange(1, 64)
    payload = fdp.ConsumeBytes(fdp.remaining_bytes())

    whole = Validator(method=method)
    whole.feed(payload)
    expected = whole.finish().to_dict()
    chunked = Validator(method=method)
    for i in range(0, len(payload), step):
        chunked.feed(payload[i : i + step])
    got = chunked.finish().to_dict()
    if got != expected:
        raise AssertionError("chunking changed the report")
    if expected["error_count"] == 0 and expected["stats"]["examples"] < 10:
        raise AssertionError("fewer than 10 examples accepted")

    for target in TARGETS:
        try:
            for line in convert_lines(payload.split(b"\n"), target):
                assert line.endswith(b"\n")
        except ConversionError:
            pass


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
