"""Issue 17, findings 1, 2, 4 and 5: no request may choose where the gateway connects, or where a stored
secret goes. The scenarios run in ``ssrf_lab.py`` inside a loopback-only network namespace with a fake
metadata service and an intranet host (never a real address); each line it prints is checked here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

LAB = Path(__file__).with_name("ssrf_lab.py")


def _namespace_command() -> list[str] | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return None
    command = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    probe = subprocess.run([*command, "true"], capture_output=True)
    return command if probe.returncode == 0 else None


@pytest.fixture(scope="module")
def lab() -> dict[str, dict[str, Any]]:
    command = _namespace_command()
    if command is None:
        pytest.skip("network namespaces are not available here (unshare -n)")
    run = subprocess.run([*command, sys.executable, str(LAB)], capture_output=True, text=True, timeout=240,
                         cwd=LAB.parents[2])
    results = {}
    for line in run.stdout.splitlines():
        if line.startswith('{"name"'):
            row = json.loads(line)
            results[row["name"]] = row
    assert run.returncode == 0, run.stderr[-3000:]
    return results


NOTHING_REACHED = {"metadata": 0, "intranet": 0}

# name: (status, error code) — and in every one of these, the metadata service and the intranet host
# received nothing.
REFUSED = {
    "azure_endpoint_metadata": (400, "custom_host_not_allowed"),
    "azure_endpoint_intranet_delete": (400, "custom_host_not_allowed"),
    "azure_endpoint_mapped_v6": (400, "custom_host_not_allowed"),
    "azure_resource_name_host": (400, "invalid_provider_option"),
    "vertex_region_host": (400, "invalid_provider_option"),
    "vertex_job_location": (404, "not_found"),
    "vertex_job_location_userinfo": (404, "not_found"),
    "fireworks_signed_download": (502, "upstream_host_not_allowed"),
    "fireworks_signed_upload": (502, "upstream_host_not_allowed"),
    "redirect_to_metadata": (502, "upstream_redirect"),
    "connection_custom_host": (403, "custom_host_not_allowed"),
    "connection_option_locked": (403, "option_locked"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_and_nothing_reached(lab: dict[str, dict[str, Any]], name: str) -> None:
    row = lab[name]
    assert (row["status"], row["code"]) == REFUSED[name], row
    assert {k: row["hits"][k] for k in NOTHING_REACHED} == NOTHING_REACHED, row
    assert not row["body_has_secret"] and not row["attacker_saw_team_key"], row


def test_upstream_urls_were_really_offered(lab: dict[str, dict[str, Any]]) -> None:
    """The refusals above are the guard's, not a flow that never got that far: the attacker's upstream was
    asked for the signed URL (download) and for the dataset + upload endpoint (upload), and served the
    redirect."""
    assert lab["fireworks_signed_download"]["hits"]["attacker"] == 1
    assert lab["fireworks_signed_upload"]["hits"]["attacker"] >= 2
    assert lab["redirect_to_metadata"]["hits"]["attacker"] == 1


def test_connection_host_rules_have_both_sides(lab: dict[str, dict[str, Any]]) -> None:
    """A connection's secret goes to its own host; to a client's host only where the connection lists it."""
    own = lab["connection_own_host"]
    assert own["status"] == 200 and own["hits"]["team"] == 1 and own["hits"]["attacker"] == 0
    listed = lab["connection_listed_custom_host"]
    assert listed["status"] == 200 and listed["hits"]["attacker"] == 1
