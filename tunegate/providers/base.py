"""The provider adapter protocol.

An adapter turns one OpenAI-shaped operation into the provider's native request and the native
answer back into the OpenAI object. It receives a :class:`~tunegate.context.RequestContext`
(credentials, base URL, options, the upstream client) and plain Python values; it never sees the
server's request object. Operations a provider lacks keep the default, which answers a clear 400.

Adding a provider: a folder ``providers/<name>/`` with a subclass of :class:`Provider`, and one line
in ``providers/__init__.py``.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, urlsplit

import aiohttp

from tunegate import models
from tunegate.errors import InvalidRequest, NotSupported, UpstreamError, UpstreamUnreachable
from tunegate.providers.rules import NO_RULES, DatasetRules
from tunegate.upstream import UpstreamResponse, read_bounded

if TYPE_CHECKING:
    from tunegate.context import RequestContext

JSON = dict[str, Any]

# An object id as tunegate hands them out: letters, digits, '-' and '_' (ARNs, resource names and URIs
# are wrapped by tunegate.providers.ids). With no '%', '/', '?', '#' or '.', an id can neither cut an
# upstream path short, nor climb it, nor reach the query.
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,255}")

# A model name as providers spell them: OpenAI's `ft:base:org:suffix:id`, Together's `org/name`, Bedrock's
# ARNs, Vertex's `projects/…/endpoints/…`. No whitespace, '?', '#', '%' or '\\'; never a '..' segment.
MODEL_NAME = re.compile(r"(?!.*(?:^|/)\.\.(?:/|$))[A-Za-z0-9][A-Za-z0-9:._/@+-]{0,255}")

# The OpenAI statuses every provider's own words are mapped onto.
JOB_STATUSES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")


@dataclass
class Page:
    """Pagination as the client asked for it, in OpenAI's terms."""

    limit: int
    after: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. metadata filters, purpose, order


# OpenAI's file purposes (openai SDK, ``types/file_purpose.py``): what a client may upload with. Result
# files (``fine-tune-results``) are written by providers and the gateway, never uploaded.
FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")


@dataclass
class IncomingFile:
    """A file arriving from the client, as a stream of byte chunks (never held whole)."""

    filename: str
    purpose: str
    content_type: str
    chunks: AsyncIterator[bytes]
    fields: dict[str, str] = field(default_factory=dict)  # other form fields (e.g. expires_after[seconds])
    size_hint: int | None = None


@dataclass
class Download:
    """A file body streamed back to the client."""

    chunks: AsyncIterator[bytes]
    media_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)


class Provider:
    # The canonical name: Portkey's provider slug (what x-portkey-provider, configs, connections and the
    # registry carry). `aliases` are other names accepted on the way in and stored as `name`.
    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    default_base_url: ClassVar[str | None] = None
    # Longest `suffix` the provider accepts (OpenAI's current spec: 64; Mistral and old OpenAI: 18).
    suffix_max_length: ClassVar[int] = 64
    # Where this provider's credential comes from when a raw provider key is sent: the field name the
    # adapter reads from ctx.credentials.
    credential_field: ClassVar[str] = "api_key"
    # True for providers whose files live in tunegate's own store (tunegate, local): a managed file id
    # is used as is instead of being copied to the provider first.
    keeps_files: ClassVar[bool] = False
    # The provider's dataset limits, checked when a job is created (tunegate.providers.rules); the
    # source of each number is in the provider's MAPPING.md.
    dataset_rules: ClassVar[DatasetRules] = NO_RULES
    # The spelling of the ids this provider hands out (jobs, files, uploads). Providers whose ids are
    # lower case (UUIDs, slugs, hex) say so, since their services may not tell `ABC` from `abc`.
    id_grammar: ClassVar[str] = SAFE_ID.pattern
    # Options whose value decides which host the calls go to (a URL, a resource name). With a stored
    # connection's credentials a client may not set them (the secret would follow the host), unless the
    # connection lists them in its `client_options`.
    host_options: ClassVar[tuple[str, ...]] = ()
    # Options that decide which identity a stored credential becomes (an AWS role to assume, its external
    # id). With a stored connection's credentials they are locked whether or not the connection sets them: a
    # header must name the connection's own value (an option or a secret of that name), unless the
    # connection lists the option in `client_options` (docs/security.md, rule 2).
    credential_options: ClassVar[tuple[str, ...]] = ()
    # Options a connection fixes together: {option: options fixed with it}. When the connection sets the
    # first (and does not list it in `client_options`), each of the others is locked too, to the value the
    # connection's options give it (`effective_option`: its own, one carried inside the first, or the
    # default) — a bucket's prefix, say, so that a header cannot reach the rest of a locked bucket.
    locked_with: ClassVar[dict[str, tuple[str, ...]]] = {}
    # Options that are whole URLs a client may choose: checked like x-portkey-custom-host.
    url_options: ClassVar[tuple[str, ...]] = ()
    # Grammar of options that become part of a URL or host (a region, a project, an account): a value
    # outside it is a 400 before anything is sent.
    option_patterns: ClassVar[dict[str, str]] = {}

    # ---- ids and hosts ---------------------------------------------------------------------------

    def canonical_id(self, kind: str, raw: str) -> bool:
        """Whether ``raw`` is a ``kind`` id ("job", "file", "upload") in the one spelling this provider
        hands out. The ownership check compares strings, so a second spelling of the same upstream
        object (another case, an encoding, junk a lenient decoder drops) must never get that far."""
        if kind == "model":
            return MODEL_NAME.fullmatch(raw) is not None
        return re.fullmatch(self.id_grammar, raw) is not None

    def effective_option(self, name: str, options: Mapping[str, Any]) -> str | None:
        """The value option ``name`` takes, as the adapter uses it, when these are the request's options: how
        a header is told to name the connection's own value of an option fixed by ``locked_with``. Providers
        whose option has a default, or can be carried inside another one, override this."""
        value = options.get(name)
        return None if value in (None, "") else str(value)

    def operator_hosts(self) -> set[str]:
        """Hosts this provider connects to that the operator chose, not a client: its built-in default,
        and endpoints read from the gateway's environment. Only these skip the connect-time check."""
        host = urlsplit(self.default_base_url).hostname if self.default_base_url else None
        return {host.lower()} if host else set()

    # ---- helpers shared by adapters ------------------------------------------------------------

    def base_url(self, ctx: RequestContext) -> str:
        """The URL up to and including the version segment. Overrides (custom host, connection,
        config) win over the provider's own default."""
        url = ctx.base_url_override or self.default_base_url
        if not url:
            raise NotSupported(f"Provider '{self.name}' needs a base URL (x-portkey-custom-host or a connection).")
        return url.rstrip("/")

    def auth_headers(self, ctx: RequestContext) -> dict[str, str]:
        key = ctx.credentials.get(self.credential_field)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def error_message(self, response: UpstreamResponse) -> tuple[str, str | None, str | None]:
        """(message, type, code) from a provider's error body; adapters override for odd shapes."""
        return generic_error_message(response)

    def check(self, ctx: RequestContext, response: UpstreamResponse) -> Any:
        """The decoded JSON of a successful answer; an OpenAI-shaped error otherwise."""
        if 300 <= response.status < 400:
            # Redirects are never followed (a Location is a URL the upstream chose): say so plainly.
            raise UpstreamError(f"The provider answered with a redirect (HTTP {response.status}), which the "
                                "gateway does not follow.", status=502, code="upstream_redirect")
        if response.ok:
            try:
                return response.json()
            except ValueError as exc:
                raise UpstreamError("The provider answered with a body that is not JSON.", status=502,
                                    code="upstream_invalid_response") from exc
        message, err_type, code = self.error_message(response)
        status = response.status if 400 <= response.status < 600 else 502
        headers = {}
        if response.status == 429 and (retry_after := clean_retry_after(response.headers.get("Retry-After", ""))):
            headers["Retry-After"] = retry_after
        # Every text that reaches the client is redacted, not only the message: providers have been
        # seen to echo a key in an error code or type.
        raise UpstreamError(ctx.redact(message), status=status, type=ctx.redact(err_type or "upstream_error")[:64],
                            code=ctx.redact(code or f"upstream_{status}")[:64], headers=headers)

    async def download(self, ctx: RequestContext, url: str, *, headers: dict[str, str] | None = None,
                       params: Any = None) -> Download:
        """Stream a provider's file body back, chunk by chunk; errors are read whole and mapped."""
        resp = await ctx.upstream.open("GET", url, ctx.policy, headers=headers, params=params)
        if resp.status >= 400:
            try:
                body = await resp.read()
            finally:
                resp.release()
            self.check(ctx, UpstreamResponse(resp.status, resp.headers, body))

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in resp.content.iter_chunked(256 * 1024):
                    yield chunk
            finally:
                resp.release()

        return Download(chunks(), media_type=resp.headers.get("Content-Type", "application/octet-stream"))

    async def open_stream(self, ctx: RequestContext, method: str, url: str, *, headers: dict[str, str],
                          json: Any = None, params: Any = None) -> aiohttp.ClientResponse:
        """Open a streamed answer (chat with ``stream: true``): retried under the policy until it starts,
        an error status read (bounded) and mapped like any other answer. The caller releases it."""
        resp = await ctx.upstream.open(method, url, ctx.policy, headers=headers, params=params, json=json,
                                       retry=True)
        ctx.upstream_status = resp.status
        if resp.status >= 300:
            try:
                body = await read_bounded(resp, 1024 * 1024)
            finally:
                resp.release()
            self.check(ctx, UpstreamResponse(resp.status, resp.headers, body))
        return resp

    @staticmethod
    async def body_chunks(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        """An opened answer's bytes as they arrive; the connection is released however the reading ends
        (finished, failed, or the client went away and the task was cancelled)."""
        try:
            async for piece in resp.content.iter_any():
                yield piece
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise UpstreamUnreachable("The provider's stream broke off.") from exc
        finally:
            resp.release()

    @staticmethod
    def segment(value: str) -> str:
        """An id as one URL path segment: every reserved character escaped (the id grammar already
        excludes them; this keeps a path from ever being cut or climbed should one slip through)."""
        return quote(value, safe="")

    def dataset_rules_for(self, model: str) -> DatasetRules:
        """The rules for a job on this base model (providers whose limits differ by model override this)."""
        return self.dataset_rules

    def unsupported(self, operation: str) -> NotSupported:
        return NotSupported(f"Provider '{self.name}' does not support {operation}.")

    # ---- fine-tuning jobs ----------------------------------------------------------------------

    async def create_job(self, ctx: RequestContext, body: JSON) -> JSON:
        raise self.unsupported("creating fine-tuning jobs")

    async def list_jobs(self, ctx: RequestContext, page: Page) -> JSON:
        raise self.unsupported("listing fine-tuning jobs")

    async def retrieve_job(self, ctx: RequestContext, job_id: str) -> JSON:
        raise self.unsupported("retrieving fine-tuning jobs")

    async def cancel_job(self, ctx: RequestContext, job_id: str) -> JSON:
        raise self.unsupported("cancelling fine-tuning jobs")

    async def pause_job(self, ctx: RequestContext, job_id: str) -> JSON:
        raise self.unsupported("pausing fine-tuning jobs")

    async def resume_job(self, ctx: RequestContext, job_id: str) -> JSON:
        raise self.unsupported("resuming fine-tuning jobs")

    async def delete_job(self, ctx: RequestContext, job_id: str) -> JSON:
        # Not in OpenAI's API; providers that can delete a job (Azure OpenAI) answer
        # {"id", "object": "fine_tuning.job", "deleted": true}.
        raise self.unsupported("deleting fine-tuning jobs")

    async def list_events(self, ctx: RequestContext, job_id: str, page: Page) -> JSON:
        raise self.unsupported("fine-tuning job events")

    async def list_checkpoints(self, ctx: RequestContext, job_id: str, page: Page) -> JSON:
        raise self.unsupported("fine-tuning job checkpoints")

    # ---- files ---------------------------------------------------------------------------------

    async def upload_file(self, ctx: RequestContext, upload: IncomingFile) -> JSON:
        raise self.unsupported("file uploads")

    async def list_files(self, ctx: RequestContext, page: Page) -> JSON:
        raise self.unsupported("listing files")

    async def retrieve_file(self, ctx: RequestContext, file_id: str) -> JSON:
        raise self.unsupported("retrieving files")

    async def delete_file(self, ctx: RequestContext, file_id: str) -> JSON:
        raise self.unsupported("deleting files")

    async def file_content(self, ctx: RequestContext, file_id: str) -> Download:
        raise self.unsupported("downloading file content")

    # ---- multi-part uploads --------------------------------------------------------------------

    async def create_upload(self, ctx: RequestContext, body: JSON) -> JSON:
        raise self.unsupported("multi-part uploads")

    async def add_upload_part(self, ctx: RequestContext, upload_id: str, part: IncomingFile) -> JSON:
        raise self.unsupported("multi-part uploads")

    async def complete_upload(self, ctx: RequestContext, upload_id: str, body: JSON) -> JSON:
        raise self.unsupported("multi-part uploads")

    async def cancel_upload(self, ctx: RequestContext, upload_id: str) -> JSON:
        raise self.unsupported("multi-part uploads")

    # ---- using the tuned model: chat completions and models (tunegate/serving) -------------------
    # `body` is the client's chat request, already checked for OpenAI's common shape
    # (tunegate.serving.request.check_chat_request). Answers are OpenAI objects: `chat.completion`,
    # `chat.completion.chunk`, `model`, `list`.

    async def chat(self, ctx: RequestContext, body: JSON) -> JSON:
        raise self.unsupported("chat completions")

    async def chat_stream(self, ctx: RequestContext, body: JSON) -> AsyncIterator[JSON]:
        """Open a streamed chat completion. Awaiting this sends the request and waits for the provider's
        answer to start, so a refusal (401, 404, 429 …) is still an ordinary error response; the iterator
        then yields `chat.completion.chunk` objects as the provider sends them. An error while iterating
        reaches the client as a final SSE error event (the response has started by then)."""
        raise self.unsupported("streamed chat completions")

    async def list_models(self, ctx: RequestContext) -> JSON:
        raise self.unsupported("listing models")

    async def retrieve_model(self, ctx: RequestContext, model: str) -> JSON:
        raise self.unsupported("retrieving models")

    async def delete_model(self, ctx: RequestContext, model: str) -> JSON:
        raise self.unsupported("deleting models")

    async def deploy_model(self, ctx: RequestContext, model: str, body: JSON) -> JSON:
        """Make a tuned model callable where the provider needs an explicit step (a deployment, a
        provisioned throughput); the model object answered carries the deployment's state."""
        raise self.unsupported("deploying models (its tuned models need no deployment step, or it has none)")

    # ---- other OpenAI fine-tuning operations (checkpoint permissions, graders) -------------------

    async def passthrough(self, ctx: RequestContext, method: str, path: str,
                          query: list[tuple[str, str]], body: JSON | None) -> JSON:
        raise self.unsupported(f"{method} /v1{path}")


def clean_retry_after(value: str) -> str | None:
    """A Retry-After the client may see: seconds, or an HTTP date re-written from its parsed value, so
    nothing an upstream put there (a secret, a header injection) travels on as it was."""
    value = value.strip()
    if value.isascii() and value.isdigit() and len(value) <= 9:  # '²'.isdigit() is True too
        return value
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return email.utils.format_datetime(when if when.tzinfo else when.replace(tzinfo=UTC), usegmt=True)


def whole_number(value: Any) -> int | None:
    """A count an upstream sent (tokens, examples, bytes): a non-negative JSON integer, or a string of at
    most 18 ASCII digits; None for anything else. ``str.isdigit`` is no test for this: it passes '²',
    which ``int()`` refuses (a 500), and '١' (ARABIC-INDIC DIGIT ONE), which ``int()`` reads as 1."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and _ASCII_DIGITS.fullmatch(value):
        return int(value)
    return None


_ASCII_DIGITS = re.compile(r"[0-9]{1,18}")
ERROR_TEXT_CHARS = 200
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)


def short_error_text(body: bytes, content_type: str = "") -> str:
    """What of a non-JSON error body may reach the client: one short printable line. An HTML or XML page
    (a proxy's or a framework's error page, often with a stack trace and the server's internals) gives
    its <title> at most; plain text its first non-empty line. The caller still redacts it."""
    head = body[:16 * 1024]
    if "html" in content_type.lower() or "xml" in content_type.lower() or head.lstrip().startswith(b"<"):
        title = _TITLE.search(head)
        head = re.sub(rb"<[^>]*>", b" ", title.group(1)) if title else b""
    for line in head.decode("utf-8", "replace").splitlines():
        line = " ".join("".join(c if c.isprintable() else " " for c in line).split())
        if line:
            if len(line) > ERROR_TEXT_CHARS:
                # Cut at a space, or drop the line: a secret split by the cut would escape the redaction.
                cut = line[:ERROR_TEXT_CHARS]
                line = cut.rsplit(" ", 1)[0] + " …" if " " in cut else ""
            return line
    return ""


def generic_error_message(response: UpstreamResponse) -> tuple[str, str | None, str | None]:
    """Find the human message in the error bodies providers commonly send."""
    fallback = f"The provider answered with HTTP {response.status}."
    try:
        data = response.json()
    except ValueError:
        text = short_error_text(response.body, response.headers.get("Content-Type", ""))
        return (f"{fallback} {text}" if text else fallback), None, None
    if isinstance(data, Mapping):
        err = data.get("error", data)
        if isinstance(err, str):
            return err, None, None
        if isinstance(err, Mapping):
            message = err.get("message") or data.get("message") or data.get("detail")
            if isinstance(message, list | dict):
                message = str(message)[:500]
            code = err.get("code")
            err_type = err.get("type")
            return (str(message) if message else fallback), (str(err_type) if err_type else None), (
                str(code) if code is not None else None)
    return fallback, None, None


def page_in_memory(items: list[JSON], page: Page, kind: str, *, with_ids: bool = False) -> JSON:
    """One page of a list already in memory (events, checkpoints), with OpenAI's cursor: ``after`` is the
    id of the last item of the previous page; an id that is not in the list is a 400."""
    if page.after:
        ids = [item["id"] for item in items]
        if page.after not in ids:
            raise InvalidRequest(f"'after' names no {kind} of this job: '{page.after}'.", param="after",
                                 code="invalid_cursor")
        items = items[ids.index(page.after) + 1:]
    return models.page(items[:page.limit], len(items) > page.limit, with_ids=with_ids)
