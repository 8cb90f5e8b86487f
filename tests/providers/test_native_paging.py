"""Native paging, 250 jobs on each provider that pages with its own tokens — Bedrock (``nextToken``), Vertex AI
and Fireworks (``pageToken``), Mistral (``page``) — walked through the gateway with the official `openai` SDK's
auto-pagination: exactly one upstream list call per page served and no per-item GET; the next page is served
from the token saved in the database, by this gateway or a second one on the same database; a cursor never
served, or whose token the provider refuses, is found by re-listing; a saved token is never used for another
tunegate key. Every test runs on SQLite, and on PostgreSQL where TUNEGATE_TEST_POSTGRES_URL is set.

The stand-ins page as their modules record (each beside its list handler, with the SDK it follows): opaque
tokens bound to the other query parameters, refused (400) when unknown."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.gateway import Gateway
from tests.standins.bedrock import ACCESS_KEY, SECRET, BedrockStandIn
from tests.standins.fireworks import FireworksStandIn
from tests.standins.mistral import MistralStandIn
from tests.standins.openai_like import ServerThread
from tests.standins.vertex import PROJECT_NUMBER, VertexStandIn, rfc3339
from tests.stores import _reset_postgres
from tunegate.providers import ids
from tunegate.providers.vertex_ai import jobs as vertex_jobs

N = 250
LIMIT = 100
POSTGRES = os.environ.get("TUNEGATE_TEST_POSTGRES_URL")


@dataclass
class Upstream:
    """One provider's stand-in with N jobs in it, and how to read what the gateway sent it."""

    name: str
    headers: dict[str, str]
    api_key: str
    ids: list[str]  # the public ids, newest first (the order every one of these lists in)
    recorded: list[Any]  # the stand-in's request log
    is_list: Callable[[Any], bool]
    token_of: Callable[[dict[str, str]], str | None]  # the position a list call continued from
    expire_tokens: Callable[[], None]  # the provider forgets (or invalidates) the tokens it handed out

    def calls_since(self, mark: int) -> list[Any]:
        return self.recorded[mark:]

    def lists_since(self, mark: int) -> list[dict[str, str]]:
        return [dict(r.query) for r in self.calls_since(mark) if self.is_list(r)]


def _bedrock(stack: ExitStack) -> Upstream:
    fake = BedrockStandIn()
    for n in range(N):
        fake.create({"jobName": f"job-{n}", "customModelName": f"model-{n}", "baseModelIdentifier": "amazon.nova-micro-v1:0",
                     "roleArn": "arn:aws:iam::123456789012:role/Tuning", "trainingDataConfig": {"s3Uri": "s3://b/t.jsonl"},
                     "outputDataConfig": {"s3Uri": "s3://b/out/"}})
    server = stack.enter_context(ServerThread(fake.app()))
    headers = {"x-portkey-provider": "bedrock", "x-portkey-aws-region": "us-east-1", "x-portkey-custom-host": server.url,
               "x-portkey-aws-access-key-id": ACCESS_KEY, "x-portkey-aws-secret-access-key": SECRET}
    return Upstream("bedrock", headers, "unused", [ids.encode("ftjob", arn) for arn in reversed(fake.jobs)],
                    fake.requests, lambda r: r.path == "/model-customization-jobs", lambda q: q.get("nextToken"),
                    fake.page_tokens.clear)


def _vertex(stack: ExitStack) -> Upstream:
    fake = VertexStandIn()
    fake.tokens["ya29.paging-test"] = ("tuner@tg-project.iam.gserviceaccount.com", 4e9)
    for n in range(N):
        name = f"projects/{PROJECT_NUMBER}/locations/us-central1/tuningJobs/{7100000000000000000 + n}"
        stamp = rfc3339(fake._now())
        fake.jobs[name] = {"name": name, "baseModel": "gemini-2.5-flash", "tunedModelDisplayName": f"m{n}",
                           "state": "JOB_STATE_SUCCEEDED", "createTime": stamp, "updateTime": stamp, "endTime": stamp,
                           "supervisedTuningSpec": {"trainingDatasetUri": "gs://b/t.jsonl"}}
    server = stack.enter_context(ServerThread(fake.app()))
    headers = {"x-portkey-provider": "vertex-ai", "x-portkey-custom-host": server.url + "/v1",
               "x-portkey-vertex-project-id": "tg-project", "x-portkey-vertex-region": "us-central1"}
    return Upstream("vertex-ai", headers, "ya29.paging-test", [vertex_jobs.job_id(n) for n in reversed(fake.jobs)],
                    fake.requests, lambda r: r.path.endswith("/tuningJobs"), lambda q: q.get("pageToken"),
                    fake._page_tokens.clear)


def _fireworks(stack: ExitStack) -> Upstream:
    fake = FireworksStandIn(account="acme-ai")
    for n in range(N):
        job_id = f"job-{n:03d}"
        now = fake.now()
        fake.jobs[job_id] = {"name": fake.job_name(job_id), "dataset": fake.dataset_name("d"), "state": "JOB_STATE_COMPLETED",
                             "baseModel": "accounts/fireworks/models/qwen3-8b", "status": {"code": "OK", "message": ""},
                             "createTime": now, "updateTime": now, "outputModel": f"accounts/acme-ai/models/{job_id}"}
    server = stack.enter_context(ServerThread(fake.app()))
    headers = {"x-portkey-provider": "fireworks", "x-portkey-custom-host": server.url + "/v1",
               "x-portkey-fireworks-account-id": "acme-ai"}
    return Upstream("fireworks", headers, fake.api_key, list(reversed(fake.jobs)), fake.requests,
                    lambda r: r.path.endswith("/supervisedFineTuningJobs"), lambda q: q.get("pageToken"),
                    fake.page_tokens.clear)


def _mistral(stack: ExitStack) -> Upstream:
    fake = MistralStandIn()
    made = [fake.add_job("open-mistral-7b", "file-0")["id"] for _ in range(N)]
    server = stack.enter_context(ServerThread(fake.app()))
    headers = {"x-portkey-provider": "mistral", "x-portkey-custom-host": server.url + "/v1"}

    def add_one() -> None:  # Mistral's tokens are page numbers: a new job moves them all
        fake.add_job("open-mistral-7b", "file-0")

    return Upstream("mistral", headers, fake.api_key, list(reversed(made)), fake.requests,
                    lambda r: r.path == "/v1/fine_tuning/jobs", lambda q: None if q.get("page") == "0" else q.get("page"),
                    add_one)


PROVIDERS = {"bedrock": _bedrock, "vertex-ai": _vertex, "fireworks": _fireworks, "mistral": _mistral}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        if not POSTGRES:
            pytest.skip("TUNEGATE_TEST_POSTGRES_URL not set (bash .ci/run starts a server)")
        asyncio.run(_reset_postgres(POSTGRES))
        return POSTGRES
    return f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"


@pytest.fixture(params=sorted(PROVIDERS))
def upstream(request: pytest.FixtureRequest) -> Iterator[Upstream]:
    with ExitStack() as stack:
        yield PROVIDERS[request.param](stack)


@pytest.fixture
def gateways(tmp_path: Path, database_url: str) -> Iterator[tuple[Gateway, Gateway]]:
    """Two gateway instances on one database (as behind a load balancer), each with its own data folder."""
    with Gateway(tmp_path / "a", database_url=database_url) as a, Gateway(tmp_path / "b", database_url=database_url) as b:
        yield a, b


def sdk(gw: Gateway, up: Upstream, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=up.api_key, default_headers={**up.headers, **headers},
                         max_retries=0)


def test_250_jobs_one_list_call_per_page(upstream: Upstream, gateways: tuple[Gateway, Gateway]) -> None:
    gw, _ = gateways
    mark = len(upstream.recorded)
    pages = list(sdk(gw, upstream).fine_tuning.jobs.list(limit=LIMIT).iter_pages())
    assert [j.id for p in pages for j in p.data] == upstream.ids
    calls = upstream.calls_since(mark)
    lists = upstream.lists_since(mark)
    print(f"{upstream.name}: {N} jobs, {len(pages)} pages served, {len(lists)} upstream list calls, "
          f"{len(calls) - len(lists)} other upstream calls")
    assert len(pages) == 3 and len(lists) == len(pages)  # one list call per page
    assert len(calls) == len(lists)  # and nothing else: no GET per job, no look-up of the cursor
    assert [upstream.token_of(q) is not None for q in lists] == [False, True, True]  # the provider's own token


def test_a_second_instance_serves_the_next_page(upstream: Upstream, gateways: tuple[Gateway, Gateway]) -> None:
    gw, other = gateways
    first = sdk(gw, upstream).fine_tuning.jobs.list(limit=LIMIT)
    mark = len(upstream.recorded)
    second = sdk(other, upstream).fine_tuning.jobs.list(limit=LIMIT, after=first.data[-1].id)
    assert [j.id for j in second.data] == upstream.ids[LIMIT:2 * LIMIT] and second.has_more is True
    lists = upstream.lists_since(mark)
    assert len(upstream.calls_since(mark)) == len(lists) == 1 and upstream.token_of(lists[0]) is not None


def test_a_cursor_never_served_is_found_by_relisting(upstream: Upstream, gateways: tuple[Gateway, Gateway]) -> None:
    gw, other = gateways
    client = sdk(gw, upstream)
    odd = client.fine_tuning.jobs.list(limit=20, after=upstream.ids[150])  # no page ever ended there
    assert [j.id for j in odd.data] == upstream.ids[151:171] and odd.has_more is True
    mark = len(upstream.recorded)  # the re-listing left the provider's position for the page after it
    nxt = sdk(other, upstream).fine_tuning.jobs.list(limit=20, after=odd.data[-1].id)
    assert [j.id for j in nxt.data] == upstream.ids[171:191]
    assert len(upstream.calls_since(mark)) == len(upstream.lists_since(mark)) == 1


def test_a_refused_token_falls_back_to_relisting(upstream: Upstream, gateways: tuple[Gateway, Gateway]) -> None:
    gw, _ = gateways
    client = sdk(gw, upstream)
    first = client.fine_tuning.jobs.list(limit=LIMIT)
    upstream.expire_tokens()
    mark = len(upstream.recorded)
    page = client.fine_tuning.jobs.list(limit=LIMIT, after=first.data[-1].id)
    assert [j.id for j in page.data] == upstream.ids[LIMIT:2 * LIMIT]
    lists = upstream.lists_since(mark)
    assert upstream.token_of(lists[0]) is not None and len(lists) >= 2  # the saved token, then the re-listing


def test_a_bad_cursor_is_a_client_error(upstream: Upstream, gateways: tuple[Gateway, Gateway]) -> None:
    gw, _ = gateways
    with pytest.raises(openai.APIStatusError) as err:
        sdk(gw, upstream).fine_tuning.jobs.list(limit=5, after="ftjob-bm90LWEtam9i")
    assert 400 <= err.value.status_code < 500
    assert set(err.value.body) >= {"message", "type", "param", "code"}  # type: ignore[arg-type]


def test_a_saved_token_is_never_another_keys(upstream: Upstream, tmp_path: Path) -> None:
    with Gateway(tmp_path / "keys") as gw:
        async def two_keys(store: Any) -> list[str]:
            return [(await store.create_key(name, ["*"], allow_provider_keys=True))[1] for name in ("a", "b")]

        key_a, key_b = gw.with_store(two_keys)
        first = sdk(gw, upstream, **{"x-portkey-api-key": key_a}).fine_tuning.jobs.list(limit=LIMIT)
        mark = len(upstream.recorded)
        page = sdk(gw, upstream, **{"x-portkey-api-key": key_b}).fine_tuning.jobs.list(limit=LIMIT,
                                                                                         after=first.data[-1].id)
        assert [j.id for j in page.data] == upstream.ids[LIMIT:2 * LIMIT]
        assert upstream.token_of(upstream.lists_since(mark)[0]) is None  # key b re-lists from the start
