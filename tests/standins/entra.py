"""A stand-in for Microsoft Entra ID's token endpoints, as azure-identity 1.27 (the aio credentials) calls them:

- client credentials: ``POST {authority}/{tenant}/oauth2/v2.0/token`` (form: client_id, client_secret,
  grant_type=client_credentials, scope), answered ``{"token_type": "Bearer", "expires_in", "ext_expires_in",
  "access_token"}``; a wrong secret is a 401 ``{"error": "invalid_client", "error_description": "AADSTS7000215 …"}``
  (Microsoft identity platform, "OAuth 2.0 client credentials flow"; azure-identity
  ``_internal/aad_client_base.py`` ``_get_token_url`` / ``_process_response``). azure-identity insists on an
  https authority (``_internal/utils.py`` ``normalize_authority``), so this one serves TLS on loopback with a
  throwaway CA that tests hand over through ``SSL_CERT_FILE``.
- App Service managed identity: ``GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=…[&client_id=…]``
  with ``X-IDENTITY-HEADER``, answered ``{"access_token", "expires_on", "resource", "token_type"}``
  (azure-identity ``_credentials/app_service.py``, ``_internal/managed_identity_client.py``). Plain http, as
  App Service's local endpoint is.

Each token is ``entra-token-<n>``; every request is recorded.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.standins.openai_like import ServerThread


@dataclass
class EntraStandIn:
    tenant: str = "00000000-0000-0000-0000-00000000aaaa"
    client_id: str = "11111111-2222-3333-4444-555555555555"
    client_secret: str = "entra-client-SECRET-0123456789"
    identity_header: str = "identity-header-value"
    expires_in: int = 3600
    issued: list[str] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def _token(self) -> str:
        token = f"entra-token-{len(self.issued) + 1}"
        self.issued.append(token)
        return token

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self.client_credentials)
        app.router.add_get("/msi/token", self.app_service)
        return app

    async def client_credentials(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.requests.append({"kind": "client_credentials", "tenant": request.match_info["tenant"], **form})
        if (request.match_info["tenant"] != self.tenant or form.get("client_id") != self.client_id
                or form.get("client_secret") != self.client_secret):
            return web.json_response({"error": "invalid_client", "error_description":
                                      "AADSTS7000215: Invalid client secret provided.", "error_codes": [7000215]},
                                     status=401)
        return web.json_response({"token_type": "Bearer", "expires_in": self.expires_in,
                                  "ext_expires_in": self.expires_in, "access_token": self._token()})

    async def app_service(self, request: web.Request) -> web.Response:
        self.requests.append({"kind": "app_service", "header": request.headers.get("X-IDENTITY-HEADER"),
                              **dict(request.query)})
        if request.headers.get("X-IDENTITY-HEADER") != self.identity_header:
            return web.json_response({"statusCode": 400, "message": "Unable to load the proper Managed Identity."},
                                     status=400)
        return web.json_response({"access_token": self._token(), "expires_on": str(int(time.time()) + self.expires_in),
                                  "resource": request.query.get("resource"), "token_type": "Bearer"})


def make_tls(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A self-signed certificate for 127.0.0.1: the server's context, and the PEM file a client trusts."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "entra-cert.pem", directory / "entra-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path


class TLSServerThread(ServerThread):
    """ServerThread over TLS (the token endpoint must be https for azure-identity)."""

    def __init__(self, app: web.Application, ssl_context: ssl.SSLContext) -> None:
        super().__init__(app)
        self.ssl_context = ssl_context
        self.url = f"https://{self.host}:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        runner = web.AppRunner(self.app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, self.host, self.port, ssl_context=self.ssl_context)
        self._loop.run_until_complete(site.start())
        self._runner = runner
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
