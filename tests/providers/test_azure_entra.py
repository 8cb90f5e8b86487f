"""Azure OpenAI with Microsoft Entra ID: tokens minted by azure-identity (aio) from a service principal or a
managed identity, against a local token stand-in over real sockets (TLS for the authority, as azure-identity
requires), cached, refreshed before expiry and sent as ``Authorization: Bearer`` instead of ``api-key``."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.gateway import Gateway
from tests.standins.entra import EntraStandIn, TLSServerThread, make_tls
from tests.standins.openai_like import ServerThread, StandIn
from tunegate.providers.azure_openai import entra

EXAMPLES = b"".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                             {"role": "assistant", "content": f"a{i}"}]}).encode() + b"\n"
                    for i in range(12))


@dataclass
class Env:
    idp: EntraStandIn
    azure: StandIn
    gw: Gateway
    azure_url: str
    idp_url: str

    def connect(self, name: str, secrets: dict[str, str], options: dict[str, Any]) -> None:
        self.gw.with_store(lambda store: store.add_connection(name, "azure-openai", secrets,
                                                              base_url=self.azure_url, options=options))

    def get(self, path: str, headers: dict[str, str]) -> requests.Response:
        return requests.get(self.gw.url + path, headers=headers, timeout=30)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    entra._tokens.clear()  # tokens are cached per process: each test starts from none
    idp = EntraStandIn(expires_in=4)
    azure = StandIn(mode="azure-ga", bearer_tokens={f"entra-token-{n}" for n in range(1, 6)})
    context, ca = make_tls(tmp_path)
    with ExitStack() as stack:
        tls = stack.enter_context(TLSServerThread(idp.app(), context))
        upstream = stack.enter_context(ServerThread(azure.app()))
        monkeypatch.setenv("AZURE_AUTHORITY_HOST", tls.url)  # the operator's authority (sovereign clouds)
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        gw = stack.enter_context(Gateway(tmp_path / "data"))
        yield Env(idp, azure, gw, upstream.url + "/openai", tls.url)


def sp_secrets(idp: EntraStandIn, secret: str | None = None) -> dict[str, str]:
    return {"azure_entra_client_id": idp.client_id, "azure_entra_client_secret": secret or idp.client_secret,
            "azure_entra_tenant_id": idp.tenant}


def auth_headers(azure: StandIn) -> list[tuple[str | None, str | None]]:
    return [(r.headers.get("Authorization"), r.headers.get("api-key")) for r in azure.requests]


def test_service_principal_token_is_cached_and_refreshed_before_expiry(env: Env) -> None:
    env.connect("sp", sp_secrets(env.idp), {"azure_auth_mode": "entra"})
    headers = {"x-portkey-virtual-key": "sp"}
    minted_at = time.time()
    assert env.get("/v1/fine_tuning/jobs", headers).status_code == 200
    assert env.get("/v1/files", headers).status_code == 200  # the cached token, no second mint
    assert env.idp.issued == ["entra-token-1"]
    time.sleep(2.3)  # past half of the 4 s lifetime, before its end
    assert env.get("/v1/fine_tuning/jobs", headers).status_code == 200
    assert time.time() < minted_at + 4, "the refresh must happen while the first token is still valid"
    assert env.idp.issued == ["entra-token-1", "entra-token-2"]
    assert auth_headers(env.azure) == [("Bearer entra-token-1", None), ("Bearer entra-token-1", None),
                                       ("Bearer entra-token-2", None)]
    (grant, _) = env.idp.requests
    assert grant["grant_type"] == "client_credentials" and grant["scope"] == entra.SCOPE
    assert grant["tenant"] == env.idp.tenant


def test_every_path_carries_the_token_uploads_and_downloads_too(env: Env) -> None:
    env.connect("sp", sp_secrets(env.idp), {"azure_auth_mode": "entra"})
    headers = {"x-portkey-virtual-key": "sp"}
    up = requests.post(env.gw.url + "/v1/files", headers=headers, files={"file": ("t.jsonl", io.BytesIO(EXAMPLES))},
                       data={"purpose": "fine-tune"}, timeout=30)
    assert up.status_code == 200, up.text
    assert env.get(f"/v1/files/{up.json()['id']}/content", headers).content == EXAMPLES
    assert {a for a, _ in auth_headers(env.azure)} == {"Bearer entra-token-1"}


def test_wrong_secret_is_a_401_that_names_no_secret(env: Env) -> None:
    env.connect("bad", sp_secrets(env.idp, "entra-WRONG-secret-987654"), {"azure_auth_mode": "entra"})
    answer = env.get("/v1/fine_tuning/jobs", {"x-portkey-virtual-key": "bad"})
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "entra_authentication_failed"
    assert "WRONG" not in answer.text and env.azure.requests == []


def test_client_entra_credentials_in_headers(env: Env) -> None:
    """Portkey's header names on an open gateway: the caller's own service principal."""
    headers = {"x-portkey-provider": "azure-openai", "x-portkey-custom-host": env.azure_url,
               "x-portkey-azure-auth-mode": "entra", "x-portkey-azure-entra-client-id": env.idp.client_id,
               "x-portkey-azure-entra-client-secret": env.idp.client_secret,
               "x-portkey-azure-entra-tenant-id": env.idp.tenant}
    assert env.get("/v1/fine_tuning/jobs", headers).status_code == 200
    assert auth_headers(env.azure) == [("Bearer entra-token-1", None)]
    missing = env.get("/v1/fine_tuning/jobs", {**headers, "x-portkey-azure-entra-tenant-id": ""})
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "missing_provider_option"


def test_a_request_may_not_pick_the_authority_or_borrow_the_managed_identity(env: Env) -> None:
    base = {"x-portkey-provider": "azure-openai", "x-portkey-custom-host": env.azure_url}
    sp = {**base, "x-portkey-azure-auth-mode": "entra", "x-portkey-azure-entra-client-id": env.idp.client_id,
          "x-portkey-azure-entra-client-secret": env.idp.client_secret,
          "x-portkey-azure-entra-tenant-id": env.idp.tenant}
    answer = env.get("/v1/fine_tuning/jobs", {**sp, "x-portkey-azure-authority-host": "https://idp.example"})
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "option_locked"
    answer = env.get("/v1/fine_tuning/jobs", {**base, "x-portkey-azure-auth-mode": "managed"})
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "managed_identity_not_allowed"
    assert env.idp.requests == [] and env.azure.requests == []


def test_managed_identity_from_a_connection(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    with ServerThread(env.idp.app()) as msi:  # App Service's local identity endpoint is plain http
        monkeypatch.setenv("IDENTITY_ENDPOINT", msi.url + "/msi/token")
        monkeypatch.setenv("IDENTITY_HEADER", env.idp.identity_header)
        env.connect("mi", {}, {"azure_auth_mode": "managed", "azure_managed_client_id": "mi-client-1"})
        assert env.get("/v1/fine_tuning/jobs", {"x-portkey-virtual-key": "mi"}).status_code == 200
        # The same connection, but the request picks the host: the gateway's identity does not follow it.
        moved = env.get("/v1/fine_tuning/jobs", {"x-portkey-virtual-key": "mi",
                                                 "x-portkey-azure-endpoint": "http://127.0.0.1:9"})
    assert auth_headers(env.azure) == [("Bearer entra-token-1", None)]
    (call,) = env.idp.requests
    assert call["kind"] == "app_service" and call["header"] == env.idp.identity_header
    assert call["resource"] == "https://cognitiveservices.azure.com" and call["client_id"] == "mi-client-1"
    assert moved.status_code == 403 and moved.json()["error"]["code"] == "managed_identity_not_allowed"


def test_api_key_mode_is_unchanged(env: Env) -> None:
    env.connect("key", {"api_key": env.azure.api_key}, {})
    assert env.get("/v1/fine_tuning/jobs", {"x-portkey-virtual-key": "key"}).status_code == 200
    assert auth_headers(env.azure) == [(None, env.azure.api_key)] and env.idp.requests == []
