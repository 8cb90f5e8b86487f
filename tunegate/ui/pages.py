"""The dashboard, mounted at ``/ui``: server-rendered pages (Jinja2) and one small self-written SVG
chart script, all served by the gateway itself (no CDN; works offline).

Access follows the API: with no tunegate key configured the gateway is open and so is the
dashboard; once a key exists, a page needs one. The key is entered in the login form (never in a
link: a ``?key=`` URL sits in browser history, proxy logs and Referer headers, so such links are
refused and log nobody in); the browser then holds an HttpOnly, SameSite=Lax cookie with the key
sealed by the gateway's secret (Fernet, so the raw key is never stored in the browser and the session
expires), ``Secure`` over https or when ``ui_secure_cookie`` says so. The login and logout forms only
accept posts from the gateway's own pages (``Sec-Fetch-Site``, else ``Origin``): another site cannot
log a visitor in under its own key (login CSRF). Every page re-authenticates the key, so a revoked key
loses the dashboard within a second. ``/ui/api/…`` answers JSON for the CLI, with the key in
``x-portkey-api-key`` or ``Authorization: Bearer`` as for the API.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Match, Mount, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from tunegate.api.common import Services, services
from tunegate.errors import APIError
from tunegate.store.secretbox import KEY_PREFIX
from tunegate.ui import data

if TYPE_CHECKING:
    from starlette.templating import Jinja2Templates
from tunegate.ui.data import JOB_STATUSES, JobFilters, Viewer

HERE = Path(__file__).parent
COOKIE = "tunegate_ui"
SESSION_SECONDS = 12 * 3600
LOGIN_BODY_BYTES = 8192  # the login form: a key and a return path
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_RAW_HEADERS = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in SECURITY_HEADERS.items()]


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float) or isinstance(ts, bool) or ts <= 0:
        return "—"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _size(n: Any) -> str:
    if not isinstance(n, int | float):
        return "—"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


@functools.cache
def _templates() -> Jinja2Templates:
    """Built on the first page view, so a gateway nobody opens the dashboard of never loads Jinja2."""
    from starlette.templating import Jinja2Templates

    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["when"] = _when
    templates.env.filters["size"] = _size
    return templates


# ---- who is looking ------------------------------------------------------------------------------


class LoginRequired(Exception):
    pass


def _header_key(request: Request) -> str | None:
    value = request.headers.get("x-portkey-api-key")
    if not value:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        value = token.strip() if scheme.lower() == "bearer" else None
    return value if value and value.startswith(KEY_PREFIX) else None


def _cookie_key(request: Request, svc: Services) -> str | None:
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    try:
        sealed = svc.store.box.open(token)
    except RuntimeError:
        return None
    issued = sealed.get("t")
    if not isinstance(issued, int | float) or time.time() - issued > SESSION_SECONDS:
        return None
    key = sealed.get("k")
    return key if isinstance(key, str) else None


async def viewer(request: Request) -> Viewer:
    svc = services(request)
    if not await svc.store.keys_exist():
        return Viewer(key=None)
    full = _header_key(request) or _cookie_key(request, svc)
    if full:
        key = await svc.store.authenticate(full)
        if key is not None:
            return Viewer(key=key, full_key=full)
    raise LoginRequired


def _session_cookie(response: Response, request: Request, svc: Services, full_key: str) -> None:
    token = svc.store.box.seal({"k": full_key, "t": int(time.time())})  # type: ignore[dict-item]
    secure = svc.settings.ui_secure_cookie
    response.set_cookie(COOKIE, token, max_age=SESSION_SECONDS, path="/ui", httponly=True, samesite="lax",
                        secure=request.url.scheme == "https" if secure is None else secure)


def _same_origin(request: Request) -> bool:
    """Whether a POST comes from the gateway's own pages. Browsers say so in ``Sec-Fetch-Site`` (and,
    older ones, in ``Origin``); a request with neither header is no browser's cross-site form."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")  # "none": typed or bookmarked by the user
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin != "null" and urlsplit(origin).netloc.lower() == request.headers.get("host", "").lower()


async def _login_fields(request: Request) -> dict[str, str] | None:
    """The login form's fields (a small urlencoded body, read at most ``LOGIN_BODY_BYTES``); None when
    the body is not such a form."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > LOGIN_BODY_BYTES:
            return None
    try:
        pairs = parse_qsl(body.decode("utf-8"), max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        return None
    return dict(pairs)


def _safe_next(target: str | None) -> str:
    return target if target and target.startswith("/ui") and not target.startswith("//") else "/ui/jobs"


def _render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    response = _templates().TemplateResponse(request, name, {"viewer": context.pop("viewer", None), **context},
                                          status_code=status)
    response.headers.update(SECURITY_HEADERS)
    return response


def page(handler: Any) -> Any:
    """Wrap a page handler: handle ``?key=``, require a login when keys exist."""

    async def wrapped(request: Request) -> Response:
        if "key" in request.query_params:
            # Login links are gone (the key would sit in history and logs); nothing is checked or set.
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "key"]
            return _render(request, "login.html", {
                "error": "Keys are not accepted in links: enter the key here.",
                "next": _safe_next(request.url.path + ("?" + urlencode(rest) if rest else ""))}, status=400)
        try:
            who = await viewer(request)
        except LoginRequired:
            query = urlencode({"next": request.url.path + (f"?{request.url.query}" if request.url.query else "")})
            return RedirectResponse(f"/ui/login?{query}", status_code=303)
        return await handler(request, who)  # type: ignore[no-any-return]

    wrapped.__name__ = handler.__name__
    return wrapped


# ---- pages ---------------------------------------------------------------------------------------


async def login_form(request: Request) -> Response:
    return _render(request, "login.html", {"next": _safe_next(request.query_params.get("next")), "error": None})


async def login(request: Request) -> Response:
    svc = services(request)
    if not _same_origin(request):
        return _render(request, "login.html", {"next": "/ui/jobs", "error": "This login came from another site "
                                               "and was refused."}, status=403)
    form = await _login_fields(request)
    if form is None:
        return _render(request, "login.html", {"next": "/ui/jobs", "error": "The login form was not understood."},
                       status=400)
    full = str(form.get("key") or "").strip()
    target = _safe_next(str(form.get("next") or ""))
    key = await svc.store.authenticate(full) if full.startswith(KEY_PREFIX) else None
    if key is None:
        return _render(request, "login.html", {"next": target, "error": "That key is not valid."}, status=401)
    response = RedirectResponse(target, status_code=303)
    _session_cookie(response, request, svc, full)
    return response


async def logout(request: Request) -> Response:
    if not _same_origin(request):
        return _render(request, "login.html", {"next": "/ui/jobs", "error": "This request came from another site "
                                               "and was refused."}, status=403)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/ui")
    return response


async def home(request: Request) -> Response:
    return RedirectResponse("/ui/jobs", status_code=307)


@page
async def ui_jobs(request: Request, who: Viewer) -> Response:
    svc = services(request)
    filters = JobFilters.from_query(request.query_params)
    jobs = await data.list_jobs(svc, who, filters)
    return _render(request, "jobs.html", {
        "viewer": who, "jobs": jobs, "filters": filters, "statuses": JOB_STATUSES,
        "providers": await data.providers_seen(svc, who), "open": who.key is None})


@page
async def ui_job(request: Request, who: Viewer) -> Response:
    detail = await data.job_detail(services(request), who, request.path_params["job_id"])
    if detail is None:
        return _render(request, "missing.html", {"viewer": who, "what": "job", "id": request.path_params["job_id"]},
                       status=404)
    return _render(request, "job.html", {"viewer": who, "d": detail, "job": detail.job, "open": who.key is None})


@page
async def ui_files(request: Request, who: Viewer) -> Response:
    svc = services(request)
    provider = request.query_params.get("provider") or None
    return _render(request, "files.html", {
        "viewer": who, "files": await data.list_files(svc, who, provider), "provider": provider,
        "providers": await data.providers_seen(svc, who, "file"), "open": who.key is None})


@page
async def ui_file(request: Request, who: Viewer) -> Response:
    svc = services(request)
    file_id = request.path_params["file_id"]
    found = await data.registry_object(svc, who, "file", file_id)
    if found is None:
        return _render(request, "missing.html", {"viewer": who, "what": "file", "id": file_id}, status=404)
    error = None
    report = await data.stored_report(svc, file_id)
    if request.query_params.get("validate") and not _same_origin(request):
        # A GET, but it replaces the report everyone who sees the file is shown (and downloads the file
        # upstream): a link on another site (SameSite=Lax sends the cookie on it) must not trigger it.
        return _render(request, "file.html", {
            "viewer": who, "file": found, "report": report, "open": who.key is None,
            "error": "This validation was requested from another site and was refused."}, status=403)
    if request.query_params.get("validate"):
        method = request.query_params.get("method") or "supervised"
        try:
            report = await data.validate_file(svc, who, file_id, method if method in
                                              ("supervised", "dpo", "reinforcement") else "supervised")
        except APIError as exc:
            error = f"{exc.status}: {exc.message}"
    return _render(request, "file.html", {"viewer": who, "file": found, "report": report, "error": error,
                                          "open": who.key is None})


# ---- JSON for the CLI ----------------------------------------------------------------------------


async def api_jobs(request: Request) -> Response:
    """Jobs across providers from the registry: ``GET /ui/api/jobs?provider=&status=&model=&since=&until=``."""
    try:
        who = await viewer(request)
    except LoginRequired:
        return APIError("This gateway requires a tunegate key.", status=401, type="invalid_request_error",
                        code="missing_api_key").response()
    jobs = await data.list_jobs(services(request), who, JobFilters.from_query(request.query_params))
    return JSONResponse({"object": "list", "data": [
        {**j["snapshot"], "id": j["id"], "status": j["status"] or j["snapshot"].get("status"),
         "provider": j["provider"], "connection": j["connection"], "created_at": j["created_at"]} for j in jobs],
        "has_more": False})


# Headers of the page's request that reach the chat route; everything else (the cookie above all) stays here.
CHAT_HEADERS = frozenset({b"content-type", b"content-length", b"x-portkey-provider", b"x-portkey-virtual-key"})


async def api_chat(request: Request) -> Response:
    """The job page's playground: ``POST /ui/api/chat/completions`` is ``POST /v1/chat/completions`` (the
    same handler, body and answers, SSE included) under the dashboard's own login. The session cookie is
    scoped to ``/ui`` and HttpOnly, so the page's script never holds the key: the key is taken from the
    sealed cookie here and handed to the chat route as ``x-portkey-api-key``, with the same grants as any
    API call of that key. Only the gateway's own pages may post (``Sec-Fetch-Site``/``Origin``), and only
    JSON (a cross-site form cannot send that content type without a CORS preflight, which is never
    granted)."""
    try:
        who = await viewer(request)
    except LoginRequired:
        return APIError("Log in to the dashboard first.", status=401, type="invalid_request_error",
                        code="missing_api_key").response()
    if not _same_origin(request):
        return APIError("This request came from another site and was refused.", status=403,
                        code="cross_site_request").response()
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        return APIError("The playground sends JSON (Content-Type: application/json).", status=415,
                        code="unsupported_media_type").response()
    headers = [(k, v) for k, v in request.scope["headers"] if k in CHAT_HEADERS]
    if who.full_key:
        headers.append((b"x-portkey-api-key", who.full_key.encode("latin-1")))
    inner = Request({**request.scope, "headers": headers}, request.receive)
    from tunegate.api.chat import chat_completions

    try:
        return await chat_completions(inner)
    finally:
        # The request line and metrics name the provider and key the chat route resolved.
        if "tunegate.ctx" in inner.scope:
            request.scope["tunegate.ctx"] = inner.scope["tunegate.ctx"]


def _webhooks_page() -> Any:
    from tunegate.ui.webhooks import ui_webhooks  # imports this module

    return ui_webhooks


class Secured:
    """Every answer under ``/ui`` carries the security headers (``SECURITY_HEADERS``): pages, redirects,
    JSON, static files and errors alike. Starlette answers an unknown path or method (and the app's
    last-resort 500) outside the route that would have set them, so the whole dashboard router is wrapped:
    HTTP errors are rendered here by the app's own handlers (same body: ``{"error": {...}}``), and an
    unexpected exception gets the app's 500 answer here before it goes on to the app's logging."""

    def __init__(self, routes: list[BaseRoute]) -> None:
        self.router = Router(routes)

    @property
    def routes(self) -> list[BaseRoute]:  # for url_path_for and the app's 405 ``Allow`` lookup
        return self.router.routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.router(scope, receive, send)
            return
        started = False
        # Static files may be cached. Inside the mount, root_path ends with the dashboard's own prefix.
        path, root = scope["path"], scope.get("root_path", "")
        static = (path[len(root):] if root and path.startswith(root) else path).startswith("/static/")

        async def send_secured(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                have = {k.lower() for k, _v in message.get("headers", [])}
                extra = [(k, v) for k, v in _RAW_HEADERS
                         if k not in have and not (static and k == b"cache-control")]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            try:
                await self.router(scope, receive, send_secured)
            except HTTPException as exc:  # an unknown path or method: the app's own answer, secured
                handler = getattr(scope.get("app"), "exception_handlers", {}).get(HTTPException)
                if started or handler is None:
                    raise
                response = await handler(Request(scope, receive), exc)
                await response(scope, receive, send_secured)
        except Exception:
            if not started:
                await APIError("The gateway hit an internal error; the request was not completed.", status=500,
                               type="server_error", code="internal_error").response()(scope, receive, send_secured)
            raise  # the app logs it (type and place only)


class Dashboard(Mount):
    """The dashboard's mount, its app ``Secured``, which also takes the bare prefix (``/ui``): Starlette's
    mount matches only below it, and the app's router would answer ``/ui`` itself with its redirect to
    ``/ui/`` (outside ``Secured``, without the headers). Here that request reaches the dashboard's router,
    whose own redirect to the slash (any method, the query kept, as before) goes out through ``Secured``.
    Only ``http``: a websocket at the bare prefix is refused by the app's router, as before."""

    def __init__(self, path: str, name: str | None = None) -> None:
        super().__init__(path, app=Secured(_routes()), name=name)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is not Match.NONE or scope["type"] != "http" or not self.path:
            return match, child
        path, root_path = scope["path"], scope.get("root_path", "")
        if (path[len(root_path):] if root_path and path.startswith(root_path) else path) == self.path:
            return Match.FULL, {"path_params": dict(scope.get("path_params", {})),
                                "app_root_path": scope.get("app_root_path", root_path),
                                "root_path": root_path + self.path, "endpoint": self.app}
        return match, child


def mount(path: str = "/ui", name: str | None = "ui") -> Mount:
    """The dashboard, mounted at ``path`` (every answer under it, and at ``path`` itself, secured)."""
    return Dashboard(path, name=name)


def _routes() -> list[BaseRoute]:
    return [
        Route("/", home, methods=["GET"], name="ui_home"),
        Route("/login", login_form, methods=["GET"], name="ui_login_form"),
        Route("/login", login, methods=["POST"], name="ui_login"),
        Route("/logout", logout, methods=["POST"], name="ui_logout"),
        Route("/jobs", ui_jobs, methods=["GET"], name="ui_jobs"),
        Route("/jobs/{job_id}", ui_job, methods=["GET"], name="ui_job"),
        Route("/files", ui_files, methods=["GET"], name="ui_files"),
        Route("/files/{file_id}", ui_file, methods=["GET"], name="ui_file"),
        Route("/api/jobs", api_jobs, methods=["GET"], name="ui_api_jobs"),
        Route("/webhooks", _webhooks_page(), methods=["GET"], name="ui_webhooks"),
        Route("/api/chat/completions", api_chat, methods=["POST"], name="ui_api_chat"),
        Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="ui_static"),
    ]
