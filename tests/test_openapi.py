"""/openapi.json describes every route the gateway serves, and is a valid OpenAPI 3.1 document."""

from __future__ import annotations

import re
from pathlib import Path

import requests
from openapi_spec_validator import validate

from tests.gateway import Gateway
from tunegate.app import ROUTES


def test_openapi_document(tmp_path: Path) -> None:
    with Gateway(tmp_path / "d") as gw:
        doc = requests.get(gw.url + "/openapi.json").json()
    validate(doc)
    described = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    # A path converter ({model:path}: model names hold '/') is plain {model} in OpenAPI's templating.
    served = {(re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path), method) for route in ROUTES for method in (route.methods or []) if method != "HEAD"}
    assert served - {("/openapi.json", "GET")} == described
