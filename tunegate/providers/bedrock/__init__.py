"""Amazon Bedrock model customization: jobs on the Bedrock control plane, training files in S3.

Jobs: CreateModelCustomizationJob / GetModelCustomizationJob / ListModelCustomizationJobs /
StopModelCustomizationJob (rest-json, ``https://bedrock.{region}.amazonaws.com``), signed with SigV4
(or a Bedrock API key as a bearer token). Files: objects under a prefix of an S3 bucket, uploaded with
a streamed multipart upload. Ids are reversible: a job id wraps the job ARN, a file id wraps its
``s3://bucket/key`` URI (``tunegate.providers.ids``). See MAPPING.md.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, urlsplit

import orjson

from tunegate import models
from tunegate.errors import APIError, InvalidRequest, NotFound, UpstreamError
from tunegate.providers import ids, paging
from tunegate.providers.base import (
    JSON,
    Download,
    IncomingFile,
    Page,
    page_in_memory,
    short_error_text,
    whole_number,
)
from tunegate.providers.bedrock import aws, jobs, s3
from tunegate.providers.bedrock.chat import BedrockChat
from tunegate.providers.rules import NO_RULES, DatasetRules
from tunegate.upstream import UpstreamResponse

if TYPE_CHECKING:
    from tunegate.context import RequestContext

DEFAULT_PURPOSE = "fine-tune"
LIST_PAGE_MAX = 1000  # ListModelCustomizationJobs maxResults: 1–1000 (botocore MaxResults)
_LIST_ORDER = (("sortBy", "CreationTime"), ("sortOrder", "Descending"))
_FILE_KEY = re.compile(r"(?P<stamp>\d{13})[0-9a-f]{8}/(?P<purpose>[-!_*'().a-zA-Z0-9]+)/(?P<name>[-!_*'().a-zA-Z0-9]+)")
_STAMP_MAX = 10**13 - 1  # keys hold (_STAMP_MAX - milliseconds): S3's ascending key order is newest first


class Bedrock(BedrockChat):
    name = "bedrock"
    # customModelName is 1–63 characters and must be unique: tunegate appends "-" and 8 characters.
    suffix_max_length = 54
    # Bedrock's limits depend on the base model: (model id prefix, rules), the first match wins. Source:
    # aws-samples/amazon-nova-samples customization/bedrock-finetuning/understanding/dataset_validation/
    # nova_ft_dataset_validator.py (MODEL_TO_NUM_SAMPLES_MAP, NOVA_2_0_LITE_SAMPLE_BOUNDS: 8–20,000 samples
    # for Nova 1, 200–20,000 for Nova 2 Lite SFT; the maximum counts training and validation together,
    # checked here per file), and the Nova guide "Selecting hyperparameters" (epochs limited to 5).
    # Other families (Titan, Claude 3 Haiku, Llama): unverified, so not checked here.
    model_dataset_rules: ClassVar[tuple[tuple[str, DatasetRules], ...]] = (
        ("amazon.nova-2-lite", DatasetRules(min_training_examples=200, max_training_examples=20_000, max_epochs=5)),
        ("amazon.nova-", DatasetRules(min_training_examples=8, max_training_examples=20_000, max_epochs=5)),
    )

    # docs/security.md rule 2 and MAPPING.md ("Options a connection fixes"): with a connection's stored keys,
    # the role they assume (and its external id) is the connection's, set or not; a connection's bucket
    # fixes the prefix too (the one inside `bucket/prefix`, else the default).
    credential_options = ("aws_role_arn", "aws_external_id")
    locked_with: ClassVar[dict[str, tuple[str, ...]]] = {"aws_s3_bucket": ("aws_s3_prefix",)}

    def effective_option(self, name: str, options: Mapping[str, Any]) -> str | None:
        if name == "aws_s3_prefix":
            return s3.split_bucket(options.get("aws_s3_bucket"), options.get("aws_s3_prefix"))[1]
        return super().effective_option(name, options)

    def dataset_rules_for(self, model: str) -> DatasetRules:
        return next((rules for prefix, rules in self.model_dataset_rules if model.startswith(prefix)), NO_RULES)

    def __init__(self) -> None:
        super().__init__()
        self.roles = aws.RoleSessions()

    async def credentials(self, ctx: RequestContext) -> aws.AwsAuth:
        return await self.roles.credentials(ctx)

    # ---- ids and hosts ---------------------------------------------------------------------------

    def canonical_id(self, kind: str, raw: str) -> bool:
        """Ids wrap an ARN (jobs) or an s3:// URI (files), base64 decoded strictly (``ids.decode``)."""
        if kind not in ("job", "file"):
            return super().canonical_id(kind, raw)
        try:
            native = ids.decode("ftjob" if kind == "job" else "file", raw)
        except NotFound:
            return False
        if kind == "job":
            return bool(jobs.JOB_ARN.fullmatch(native))
        try:
            s3.parse_uri(native)
        except ValueError:
            return False
        return True

    def operator_hosts(self) -> set[str]:
        """Endpoints from the operator's AWS_ENDPOINT_URL[_BEDROCK|_BEDROCK_RUNTIME|_S3|_STS] (emulators,
        VPC endpoints)."""
        urls = (aws.endpoint_from_env(service) for service in ("bedrock", "bedrock_runtime", "s3", "sts"))
        return {host.lower() for url in urls if url and (host := urlsplit(url).hostname)}

    # ---- plumbing --------------------------------------------------------------------------------

    def base_url(self, ctx: RequestContext) -> str:
        if ctx.base_url_override:
            return ctx.base_url_override.rstrip("/")
        return aws.endpoint_from_env("bedrock") or f"https://bedrock.{aws.region(ctx)}.amazonaws.com"

    def error_message(self, response: UpstreamResponse) -> tuple[str, str | None, str | None]:
        """AWS errors: rest-json ``{"message"}`` with ``x-amzn-ErrorType``, or S3's XML ``<Error>``."""
        code = (response.headers.get("x-amzn-ErrorType") or "").split(":", 1)[0] or None
        body = response.body.lstrip()
        if body.startswith(b"<"):
            xml_code, message = s3.xml_error(body)  # only S3 answers in XML here: name it as S3's
            if xml_code or message:
                return s3.named_message(response.status, xml_code, message), None, xml_code or code
        try:
            data = response.json()
        except ValueError:
            data = None
        if isinstance(data, dict):
            message = data.get("message") or data.get("Message")
            code = code or (str(data["__type"]).rsplit("#", 1)[-1] if data.get("__type") else None)
            if message:
                return str(message), None, code
        if response.status == 404 and not body:  # HEAD answers carry no body
            return "Not found.", None, code or "NotFound"
        # An HTML page (a proxy's, with a stack trace) gives its <title> only, plain text its first line.
        text = short_error_text(body, response.headers.get("Content-Type", ""))
        return f"Bedrock answered with HTTP {response.status}. {text}".strip(), None, code

    async def _bedrock(self, ctx: RequestContext, method: str, path: str, *, query: list[tuple[str, str]] | None = None,
                       body: JSON | None = None, idempotent: bool | None = None) -> Any:
        url = self.base_url(ctx) + path
        if query:
            url += "?" + aws.query_string(query)
        data = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        response = await aws.call(ctx, await self.credentials(ctx), "bedrock", aws.region(ctx), method, url, headers=headers,
                                  body=data, idempotent=method == "GET" if idempotent is None else idempotent)
        return self.check(ctx, response)

    def _base_rate(self, ctx: RequestContext) -> float | None:
        raw = ctx.option("bedrock_base_learning_rate")
        if raw is None:
            return None
        try:
            value = float(raw)
        except (TypeError, ValueError):
            value = 0.0
        if value <= 0:
            raise InvalidRequest("x-portkey-bedrock-base-learning-rate must be a positive number.",
                                 param="x-portkey-bedrock-base-learning-rate", code="invalid_provider_option")
        return value

    @staticmethod
    def _arn(job_id: str) -> str:
        arn = ids.decode("ftjob", job_id, "fine-tuning job")
        if not arn.startswith("arn:"):
            raise NotFound(f"No such fine-tuning job: '{job_id}'.")
        return arn

    @staticmethod
    def _job_path(arn: str) -> str:
        return "/model-customization-jobs/" + quote(arn, safe="")

    async def _get(self, ctx: RequestContext, arn: str) -> JSON:
        return await self._bedrock(ctx, "GET", self._job_path(arn))  # type: ignore[no-any-return]

    # ---- jobs ------------------------------------------------------------------------------------

    def _s3_uri(self, value: str, param: str) -> str:
        try:
            uri = value if value.startswith("s3://") else ids.decode("file", value, "file")
        except NotFound:
            raise InvalidRequest(f"No such file: '{value}'.", param=param, code="file_not_found") from None
        if not jobs.S3_URI.fullmatch(uri) or len(uri) > 1024:
            raise InvalidRequest(f"'{param}' must be a file uploaded through tunegate or an s3:// URI Bedrock "
                                 "accepts.", param=param, code="invalid_file")
        return uri

    async def _check_format(self, ctx: RequestContext, file_value: str, uri: str, fam: jobs.Family | None,
                            param: str) -> None:
        """A file uploaded through tunegate records its data format: refuse a file converted for another
        model family now, rather than as a failed job an hour later."""
        credentials = await self.credentials(ctx)
        if file_value.startswith("s3://") or not credentials.sigv4:
            return
        bucket_name, key = s3.parse_uri(uri)
        bucket = s3.Bucket(bucket_name, aws.region(ctx, "aws_s3_region"), aws.endpoint_from_env("s3"))
        try:
            head = await s3.S3(self, ctx, credentials, bucket).head(key, "file", file_value)
        except NotFound:
            raise InvalidRequest(f"No such file: '{file_value}'.", param=param, code="file_not_found") from None
        except UpstreamError as exc:
            if exc.status == 403:  # these keys may not read the bucket (Bedrock's role may): Bedrock will check
                return
            raise
        recorded = head.headers.get("x-amz-meta-tunegate-format")
        if fam is not None and recorded not in (None, "none", fam.data_format):
            raise InvalidRequest(f"'{file_value}' was converted to '{recorded}', but {fam.name} models train on "
                                 f"'{fam.data_format}': upload it again with 'x-portkey-bedrock-model' set to the "
                                 "model.", param=param, code="invalid_training_file")

    def _names(self, ctx: RequestContext, suffix: str | None) -> tuple[str, str, str]:
        """(jobName, customModelName, clientRequestToken). Derived from the client's Idempotency-Key when
        there is one, so a replayed create is the same request to Bedrock; random otherwise."""
        if ctx.idempotency_key:
            seed = f"{ctx.key_id or ''}:{ctx.connection or ''}:{ctx.idempotency_key}"
            digest = hashlib.sha256(seed.encode()).hexdigest()
            token, unique = digest, digest[:20]
        else:
            token, unique = secrets.token_hex(32), secrets.token_hex(10)
        job_name = f"tunegate-{unique}"
        model_name = f"{suffix or 'tunegate'}-{unique[:8]}"
        return job_name, model_name, token

    async def create_job(self, ctx: RequestContext, body: JSON) -> JSON:
        unknown = sorted(k for k, v in body.items() if k not in jobs.CREATE_FIELDS and v is not None)
        if unknown:
            raise InvalidRequest(f"Provider 'bedrock' does not accept '{unknown[0]}'.", param=unknown[0],
                                 code="unsupported_parameter")
        if body.get("seed") is not None:
            raise InvalidRequest("Bedrock model customization takes no seed.", param="seed",
                                 code="unsupported_parameter")
        if body.get("integrations"):
            raise InvalidRequest("Bedrock has no training integrations (e.g. Weights & Biases).",
                                 param="integrations", code="unsupported_parameter")
        suffix = body.get("suffix")
        if suffix is not None and not jobs.SUFFIX.fullmatch(suffix):
            raise InvalidRequest("'suffix' may hold only letters and digits, single '-' or '_' between them "
                                 "(Bedrock's customModelName).", param="suffix", code="invalid_suffix")
        role_arn = ctx.option("aws_bedrock_role_arn")
        if not role_arn:
            raise InvalidRequest("Provider 'bedrock' needs the IAM role Bedrock assumes to read the data: send "
                                 "'x-portkey-aws-bedrock-role-arn' (or a connection that sets "
                                 "'aws_bedrock_role_arn').", param="x-portkey-aws-bedrock-role-arn",
                                 code="missing_provider_option")
        if not jobs.ROLE_ARN.fullmatch(str(role_arn)):
            raise InvalidRequest(f"'{role_arn}' is not an IAM role ARN.", param="x-portkey-aws-bedrock-role-arn",
                                 code="invalid_provider_option")
        # A custom model (another key's, by ARN or by name) is checked under its canonical ARN, which is sent.
        model = await self.owned_custom_model(ctx, str(body["model"]))
        fam = jobs.family(model)
        base_rate = self._base_rate(ctx)
        hyper = jobs.hyper_parameters(body, fam, base_rate)
        tags = jobs.job_tags(body.get("metadata"))
        training = self._s3_uri(body["training_file"], "training_file")
        validation = self._s3_uri(body["validation_file"], "validation_file") if body.get("validation_file") else None
        bucket, prefix = s3.bucket_for(ctx)
        await self._check_format(ctx, body["training_file"], training, fam, "training_file")
        if validation:
            await self._check_format(ctx, body["validation_file"], validation, fam, "validation_file")
        job_name, model_name, token = self._names(ctx, suffix)
        request: JSON = {
            "jobName": job_name,
            "customModelName": model_name,
            "roleArn": str(role_arn),
            "clientRequestToken": token,
            "baseModelIdentifier": model,
            "customizationType": "FINE_TUNING",
            "trainingDataConfig": {"s3Uri": training},
            "outputDataConfig": {"s3Uri": f"s3://{bucket.name}/{prefix}/outputs/{job_name}/"},
            "hyperParameters": hyper,
        }
        if validation:
            request["validationDataConfig"] = {"validators": [{"s3Uri": validation}]}
        if tags:
            request["jobTags"] = tags
        if kms := ctx.option("aws_bedrock_kms_key_id"):
            request["customModelKmsKeyId"] = str(kms)
        # clientRequestToken makes the create idempotent on Bedrock's side: retrying it is safe.
        created = await self._bedrock(ctx, "POST", "/model-customization-jobs", body=request, idempotent=True)
        arn = str(created["jobArn"])
        try:
            raw = await self._get(ctx, arn)
        except APIError as exc:
            if exc.status != 404:
                raise
            raw = {"jobArn": arn, "jobName": job_name, "status": "InProgress",  # not readable yet
                   "creationTime": datetime.now(UTC).isoformat(), "baseModelArn": model,
                   "hyperParameters": hyper, "trainingDataConfig": request["trainingDataConfig"],
                   "validationDataConfig": request.get("validationDataConfig"),
                   "statusDetails": {"validationDetails": {"status": "InProgress"}}}
        return jobs.to_job(raw, metadata=body.get("metadata"), base_override=base_rate)

    async def retrieve_job(self, ctx: RequestContext, job_id: str) -> JSON:
        return jobs.to_job(await self._get(ctx, self._arn(job_id)), base_override=self._base_rate(ctx))

    async def cancel_job(self, ctx: RequestContext, job_id: str) -> JSON:
        arn = self._arn(job_id)
        await self._bedrock(ctx, "POST", self._job_path(arn) + "/stop", idempotent=True)
        return jobs.to_job(await self._get(ctx, arn), base_override=self._base_rate(ctx))

    async def list_jobs(self, ctx: RequestContext, page: Page) -> JSON:
        """Newest first, from ListModelCustomizationJobs alone (no GetModelCustomizationJob per job): one
        call per page. The page after one served here continues from Bedrock's nextToken, saved for its
        last job (``tunegate.providers.paging``); any other ``after`` is looked up by time (see ``_relist``)."""
        if page.extra.get("metadata"):
            raise InvalidRequest("Bedrock cannot filter jobs by metadata (job tags are not listed).",
                                 param="metadata", code="unsupported_parameter")
        cursors = paging.Cursors(ctx, "jobs")
        walked = await paging.resumed(cursors, page.after, lambda start: self._walk(ctx, start, page.limit),
                                      lambda: self._relist(ctx, page))
        cursors.served(walked.resume)
        base_rate = self._base_rate(ctx)
        return models.page([jobs.from_summary(s, base_override=base_rate) for s in walked.items], walked.more)

    async def _walk(self, ctx: RequestContext, start: paging.Resume, limit: int) -> paging.Walk:
        async def fetch(token: str | None, size: int, bound: tuple[tuple[str, str], ...]) -> tuple[list[JSON], str | None]:
            query = [*_LIST_ORDER, *bound, ("maxResults", str(size))] + ([("nextToken", token)] if token else [])
            answer = await self._bedrock(ctx, "GET", "/model-customization-jobs", query=query) or {}
            return list(answer.get("modelCustomizationJobSummaries") or []), answer.get("nextToken") or None

        return await paging.walk(fetch, start, limit, max_size=LIST_PAGE_MAX, id_of=lambda s: s.get("jobArn"))

    async def _relist(self, ctx: RequestContext, page: Page) -> paging.Walk:
        """A page for an ``after`` never served here: that job's creation time (one GET) narrows the listing
        to jobs created up to its second (creationTimeBefore), read past the job itself; the nextToken of
        that listing is bound to the same creationTimeBefore, which the saved position keeps."""
        if not page.after:
            return await self._walk(ctx, paging.Resume(), page.limit)
        arn = self._arn(page.after)
        created = jobs.timestamp((await self._get(ctx, arn)).get("creationTime"))
        if created is None:
            return await self._walk(ctx, paging.Resume(None, LIST_PAGE_MAX, arn), page.limit)
        bound = (("creationTimeBefore", _iso_seconds(created + 1)),)
        try:  # limit + 1: the job itself comes first, unless newer jobs share its second
            return await self._walk(ctx, paging.Resume(None, min(LIST_PAGE_MAX, page.limit + 1), arn, bound),
                                    page.limit)
        except paging.CursorNotFound:  # listed nowhere: the jobs strictly older than it
            return await self._walk(ctx, paging.Resume(query=(("creationTimeBefore", _iso_seconds(created)),)),
                                    page.limit)

    async def list_events(self, ctx: RequestContext, job_id: str, page: Page) -> JSON:
        """Derived from the job itself (Bedrock keeps no event log): see ``jobs.events``."""
        return page_in_memory(jobs.events(await self._get(ctx, self._arn(job_id)), job_id), page, "event")

    async def list_checkpoints(self, ctx: RequestContext, job_id: str, page: Page) -> JSON:
        raise self.unsupported("fine-tuning job checkpoints (Bedrock produces one custom model per job)")

    # ---- files -----------------------------------------------------------------------------------

    async def _store(self, ctx: RequestContext) -> tuple[s3.S3, str]:
        bucket, prefix = s3.bucket_for(ctx)
        return s3.S3(self, ctx, await self.credentials(ctx), bucket), f"{prefix}/files/"

    @staticmethod
    def _uri(file_id: str) -> tuple[str, str]:
        """(bucket, key) a file id wraps (``s3://bucket/key``); anything else is no file."""
        uri = ids.decode("file", file_id, "file")
        try:
            return s3.parse_uri(uri)
        except ValueError:
            raise NotFound(f"No such file: '{file_id}'.") from None

    async def _locate(self, ctx: RequestContext, file_id: str) -> tuple[s3.S3, str]:
        """The S3 object a file id names, held to what the request may reach. A file id wraps any
        ``s3://bucket/key``, so it could name anything the credential (a connection's keys, or the role they
        assume) can read or delete. With a stored connection's credential a key reaches by id only the objects
        ``GET /v1/files`` lists for this request (the request's bucket, under its prefix's ``files/``, named as
        an upload names them) and the objects the registry records as the key's own; anything else is the same
        404 as a missing file, before any call (AssumeRole included) is made (docs/security.md, rule 4). A
        caller's own credential, or an open gateway, reaches what S3 lets it."""
        bucket_name, key = self._uri(file_id)
        if ctx.key is not None and not ctx.own_key and ctx.connection is not None \
                and not self._listed(ctx, bucket_name, key):
            recorded = await ctx.store.placement("file", file_id) if ctx.store is not None else None
            if recorded is None or recorded.key_id != ctx.key.id:
                raise NotFound(f"No such file: '{file_id}'.")
        bucket = s3.Bucket(bucket_name, aws.region(ctx, "aws_s3_region"), aws.endpoint_from_env("s3"))
        return s3.S3(self, ctx, await self.credentials(ctx), bucket), key

    @staticmethod
    def _listed(ctx: RequestContext, bucket_name: str, key: str) -> bool:
        """Whether this request's ``GET /v1/files`` would list the object: in its bucket (none when the request
        names no bucket), under ``{prefix}/files/``, a key of the form uploads make (``_upload_key``)."""
        if ctx.option("aws_s3_bucket") is None:
            return False
        bucket, prefix = s3.bucket_for(ctx)
        return bucket_name == bucket.name and _upload_key(key, f"{prefix}/files/")

    @staticmethod
    def _file(bucket: str, key: str, size: int, fallback_time: Any = None) -> JSON | None:
        head, _, tail = key.rpartition("/files/")
        match = _FILE_KEY.fullmatch(tail)
        if not head or not match:
            return None
        created = (_STAMP_MAX - int(match["stamp"])) // 1000
        return models.file(id=ids.encode("file", f"s3://{bucket}/{key}"), bytes=size,
                           created_at=created or jobs.timestamp(fallback_time) or 0, filename=match["name"],
                           purpose=match["purpose"], status="processed")

    def _data_format(self, ctx: RequestContext, purpose: str) -> str:
        if purpose != "fine-tune":
            return "none"
        explicit = ctx.option("bedrock_data_format")
        if explicit is not None:
            from tunegate.data.converters import TARGETS

            value = str(explicit)
            if value != "none" and value not in TARGETS:
                choices = ", ".join(["none", *(t for t in TARGETS if t.startswith("bedrock"))])
                raise InvalidRequest(f"Unknown Bedrock data format '{value}' (one of: {choices}).",
                                     param="x-portkey-bedrock-data-format", code="invalid_provider_option")
            return value
        model = ctx.option("bedrock_model")
        fam = jobs.family(str(model)) if model else None
        return fam.data_format if fam else jobs.DEFAULT_DATA_FORMAT

    async def upload_file(self, ctx: RequestContext, upload: IncomingFile) -> JSON:
        if not s3.SEGMENT.fullmatch(upload.purpose) or upload.purpose in (".", ".."):
            raise InvalidRequest(f"'{upload.purpose}' is not a purpose tunegate can store in S3.", param="purpose")
        store, prefix = await self._store(ctx)
        data_format = self._data_format(ctx, upload.purpose)
        name = re.sub(r"[^-_.a-zA-Z0-9]", "_", upload.filename)[-200:].lstrip(".") or "upload.jsonl"
        stamp = _STAMP_MAX - int(time.time() * 1000)
        key = f"{prefix}{stamp:013d}{secrets.token_hex(4)}/{upload.purpose}/{name}"
        chunks: AsyncIterator[bytes] = upload.chunks
        if data_format != "none":
            chunks = _converted(upload.chunks, data_format)
        metadata = {"tunegate-format": data_format, "tunegate-filename": quote(upload.filename, safe="")}
        size = await store.upload(key, chunks, metadata)
        obj = self._file(store.bucket.name, key, size)
        assert obj is not None
        return obj

    async def list_files(self, ctx: RequestContext, page: Page) -> JSON:
        if page.extra.get("order") not in (None, "desc"):
            raise InvalidRequest("Bedrock files (S3 objects) are listed newest first only.", param="order",
                                 code="unsupported_parameter")
        purpose = page.extra.get("purpose")
        store, prefix = await self._store(ctx)
        start_after = None
        if page.after:
            other, start_after = self._uri(page.after)  # a position only: nothing of it is read
            if other != store.bucket.name:
                raise InvalidRequest("'after' names a file in another bucket.", param="after")
        want = page.limit + 1
        found: list[JSON] = []
        token = None
        for _ in range(10000):
            objects, token = await store.list(prefix, min(1000, max(want, 1)), start_after, token)
            for obj in objects:
                if not _upload_key(str(obj.get("Key", "")), prefix):
                    continue  # not a key an upload makes: reached by no id either (see _locate)
                item = self._file(store.bucket.name, obj.get("Key", ""), whole_number(obj.get("Size")) or 0,
                                  obj.get("LastModified"))
                if item is not None and (not purpose or item["purpose"] == purpose):
                    found.append(item)
            if len(found) >= want or not token:
                break
        return models.page(found[:page.limit], len(found) > page.limit, with_ids=True)

    async def retrieve_file(self, ctx: RequestContext, file_id: str) -> JSON:
        store, key = await self._locate(ctx, file_id)
        head = await store.head(key, "file", file_id)
        obj = self._file(store.bucket.name, key, whole_number(head.headers.get("Content-Length")) or 0,
                         head.headers.get("Last-Modified"))
        if obj is None:
            raise NotFound(f"No such file: '{file_id}'.")
        return obj

    async def delete_file(self, ctx: RequestContext, file_id: str) -> JSON:
        store, key = await self._locate(ctx, file_id)
        await store.head(key, "file", file_id)  # S3 deletes missing keys silently: OpenAI answers 404
        await store.delete(key)
        return models.deleted(file_id)

    async def file_content(self, ctx: RequestContext, file_id: str) -> Download:
        store, key = await self._locate(ctx, file_id)
        url, headers = store.signed_get(key)
        try:
            return await self.download(ctx, aws.open_url(url), headers=headers)
        except UpstreamError as exc:
            if exc.status == 404 and exc.code != "NoSuchBucket":  # a missing bucket stays S3's error
                raise NotFound(f"No such file: '{file_id}'.") from None
            raise


def _upload_key(key: str, files: str) -> bool:
    """Whether ``key`` is one an upload makes under ``files`` (``{prefix}/files/``): ``{stamp}{8 hex}/{purpose}/
    {name}`` right below it, no ``.`` or ``..`` segment (an endpoint or proxy that resolves dot segments would
    read another key, or another bucket)."""
    if not key.startswith(files):
        return False
    tail = key[len(files):]
    return bool(_FILE_KEY.fullmatch(tail)) and not {".", ".."} & set(tail.split("/"))


def _iso_seconds(unix: int) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _converted(chunks: AsyncIterator[bytes], target: str) -> AsyncIterator[bytes]:
    """The upload converted line by line; a line that cannot be converted is a 400 naming it."""
    from tunegate.data.converters import ConversionError, aconvert

    try:
        async for line in aconvert(chunks, target):
            yield line
    except ConversionError as exc:
        raise InvalidRequest(f"The training file cannot be converted to Bedrock's '{target}' format (line "
                             f"{exc.line}): {exc.message}. Set 'x-portkey-bedrock-model' to the base model, or "
                             "'x-portkey-bedrock-data-format: none' to store it as sent.", param="file",
                             code="invalid_training_file") from None
