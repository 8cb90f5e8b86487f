"""What the gateway remembers about an uploaded dataset, and the provider's dataset rules applied to the
files a job names (``tunegate.providers.rules``).

Uploads keep their validation report: a gateway-managed file in its ``managed_files`` row, a file uploaded
to a provider in a registry row of kind ``dataset`` under the provider's file id (its own row, so the
file's snapshot can be refreshed by any listing without losing the count). A file id with neither was
never validated here, and the provider alone decides about it.
"""

from __future__ import annotations

from typing import Any

from tunegate.context import RequestContext
from tunegate.files import is_managed_file_id
from tunegate.providers.base import JSON
from tunegate.providers.rules import ROLES, FileFacts, check_epochs, check_file

DATASET_KIND = "dataset"


async def record_upload(ctx: RequestContext, created: JSON, report: dict[str, Any]) -> None:
    """Keep the report of a file the provider now holds, with the size the provider reports (after any
    conversion to its format)."""
    if ctx.store is None or not isinstance(created.get("id"), str):
        return
    await ctx.store.record(DATASET_KIND, created["id"], ctx.provider_name, ctx.connection, ctx.key_id, None,
                           {"report": report, "bytes": created.get("bytes")})


async def forget_upload(ctx: RequestContext, file_id: str) -> None:
    if ctx.store is not None:
        await ctx.store.forget(DATASET_KIND, file_id)


async def file_facts(ctx: RequestContext, file_id: str) -> FileFacts | None:
    """The recorded facts of a file this caller may use on this provider; None when there are none."""
    if ctx.store is None:
        return None
    if is_managed_file_id(file_id):
        row = await ctx.store.get_managed_file(file_id)
        if row is not None:
            if ctx.key is not None and row["key_id"] not in (None, ctx.key.id):
                return None  # not the caller's: the create answers 404 for it, not a count
            return FileFacts.from_report(row.get("report"), row.get("bytes"))
    found = await ctx.store.lookup_written_once(DATASET_KIND, file_id)  # (recorded before the id is answered)
    if found is None or not isinstance(found.snapshot, dict) or found.provider != ctx.provider_name:
        return None
    if ctx.key is not None and found.key_id not in (None, ctx.key.id):
        return None
    return FileFacts.from_report(found.snapshot.get("report"), found.snapshot.get("bytes"))


async def check_job_files(ctx: RequestContext, body: JSON) -> None:
    """The named provider's dataset rules for this create: epochs, and each file for the role it plays."""
    rules = ctx.provider.dataset_rules_for(str(body.get("model") or ""))
    check_epochs(rules, ctx.provider_name, body)
    for role in ROLES:
        file_id = body.get(role)
        if not isinstance(file_id, str) or not file_id or rules.bounds(role) == (None, None) \
                and rules.max_file_bytes is None:
            continue  # nothing this provider limits: no lookup
        facts = await file_facts(ctx, file_id)
        if facts is not None:
            check_file(rules, ctx.provider_name, role, file_id, facts)
