"""Coming from Portkey: the `portkey-ai` SDK with `provider="together-ai"` through the whole lifecycle
(upload, create, list across pages, retrieve, cancel, events, files) against the Together stand-in, and the
`openai` SDK with the Portkey slugs `fireworks-ai` and `mistral-ai` against theirs."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.gateway import Gateway
from tests.standins.fireworks import FireworksStandIn
from tests.standins.mistral import MistralStandIn
from tests.standins.openai_like import ServerThread
from tests.standins.together import TogetherStandIn

portkey_ai = pytest.importorskip("portkey_ai")

EXAMPLES = b"".join(
    json.dumps({"messages": [{"role": "system", "content": "You are terse."},
                             {"role": "user", "content": f"Say {i}"},
                             {"role": "assistant", "content": f"{i}"}]}).encode() + b"\n" for i in range(12))


@pytest.fixture
def together(tmp_path: Path) -> Iterator[tuple[TogetherStandIn, Gateway, str]]:
    standin = TogetherStandIn()
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "data") as gw:
        yield standin, gw, upstream.url + "/v1"


def test_portkey_sdk_whole_lifecycle_on_together_ai(together: tuple[TogetherStandIn, Gateway, str]) -> None:
    standin, gw, host = together
    # As a Portkey user writes it: the provider's key as the API key, Portkey's provider slug.
    pk = portkey_ai.Portkey(api_key=standin.api_key, base_url=gw.url + "/v1", provider="together-ai",
                            custom_host=host)

    uploaded = pk.files.create(file=("train.jsonl", io.BytesIO(EXAMPLES)), purpose="fine-tune")
    assert uploaded.id in standin.files and uploaded.purpose == "fine-tune" and uploaded.status == "processed"

    created = [pk.fine_tuning.jobs.create(training_file=uploaded.id, model=f"meta-llama/m{i}").id for i in range(5)]
    assert all(job_id in standin.jobs for job_id in created)
    newest_first = created[::-1]

    first = pk.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in first.data] == newest_first[:2] and first.has_more is True
    second = pk.fine_tuning.jobs.list(limit=2, after=first.data[-1].id)
    assert [j.id for j in second.data] == newest_first[2:4] and second.has_more is True
    last = pk.fine_tuning.jobs.list(limit=2, after=second.data[-1].id)
    assert [j.id for j in last.data] == newest_first[4:] and last.has_more is False

    job = pk.fine_tuning.jobs.retrieve(created[0])
    assert job.id == created[0] and job.training_file == uploaded.id and job.object == "fine_tuning.job"

    pk.fine_tuning.jobs.cancel(created[1])
    assert pk.fine_tuning.jobs.retrieve(created[1]).status == "cancelled"
    assert any(r.method == "POST" and r.path == f"/v1/fine-tunes/{created[1]}/cancel" for r in standin.requests)

    events = pk.fine_tuning.jobs.list_events(created[0])
    assert events.data and all(e.object == "fine_tuning.job.event" for e in events.data)

    files = pk.files.list()
    assert [f.id for f in files.data] == [uploaded.id]
    assert pk.files.retrieve(uploaded.id).id == uploaded.id
    assert b"Say 0" in pk.files.content(uploaded.id).read()
    # Every call reached Together with the caller's key, and the registry keeps Portkey's name.
    assert all(r.headers["Authorization"] == f"Bearer {standin.api_key}" for r in standin.requests)
    assert gw.with_store(lambda s: s.lookup("job", created[0])).provider == "together-ai"


@pytest.mark.parametrize("config", [{"provider": "together-ai"}, {"provider": "together"}])
def test_portkey_sdk_config_names_the_provider(together: tuple[TogetherStandIn, Gateway, str],
                                               config: dict[str, Any]) -> None:
    standin, gw, host = together
    pk = portkey_ai.Portkey(api_key=standin.api_key, base_url=gw.url + "/v1", config=config, custom_host=host)
    assert pk.fine_tuning.jobs.list().data == []
    assert standin.requests[-1].path == "/v1/fine-tunes"


def _openai(gw: Gateway, key: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, default_headers=headers, max_retries=0)


def test_openai_sdk_with_fireworks_ai(tmp_path: Path) -> None:
    standin = FireworksStandIn(account="acme-ai")
    server = ServerThread(standin.app())
    standin.url = server.url
    with server, Gateway(tmp_path / "data") as gw:
        sdk = _openai(gw, standin.api_key, **{"x-portkey-provider": "fireworks-ai",
                                               "x-portkey-custom-host": server.url + "/v1",
                                               "x-portkey-fireworks-account-id": "acme-ai"})
        uploaded = sdk.files.create(file=("train.jsonl", io.BytesIO(EXAMPLES)), purpose="fine-tune")
        model = "accounts/fireworks/models/qwen3-8b"
        jobs = [sdk.fine_tuning.jobs.create(training_file=uploaded.id, model=model).id for _ in range(3)]
        page = sdk.fine_tuning.jobs.list(limit=2)
        rest = sdk.fine_tuning.jobs.list(limit=2, after=page.data[-1].id)
        assert sorted(j.id for j in [*page.data, *rest.data]) == sorted(jobs) and rest.has_more is False
        assert sdk.fine_tuning.jobs.retrieve(jobs[0]).id == jobs[0]
        assert sdk.fine_tuning.jobs.cancel(jobs[1]).status == "cancelled"
        with pytest.raises(openai.BadRequestError):  # Fireworks publishes no event list: a clear 400
            sdk.fine_tuning.jobs.list_events(jobs[0])
        assert [f.id for f in sdk.files.list().data] == [uploaded.id]
        assert sdk.files.retrieve(uploaded.id).id == uploaded.id
        assert gw.with_store(lambda s: s.lookup("job", jobs[0])).provider == "fireworks-ai"


def test_openai_sdk_with_mistral_ai(tmp_path: Path) -> None:
    standin = MistralStandIn()
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "data") as gw:
        sdk = _openai(gw, standin.api_key, **{"x-portkey-provider": "mistral-ai",
                                               "x-portkey-custom-host": upstream.url + "/v1"})
        uploaded = sdk.files.create(file=("train.jsonl", io.BytesIO(EXAMPLES)), purpose="fine-tune")
        jobs = [sdk.fine_tuning.jobs.create(training_file=uploaded.id, model="open-mistral-7b").id for _ in range(3)]
        page = sdk.fine_tuning.jobs.list(limit=2)
        assert [j.id for j in page.data] == jobs[::-1][:2] and page.has_more is True
        rest = sdk.fine_tuning.jobs.list(limit=2, after=page.data[-1].id)
        assert [j.id for j in rest.data] == jobs[:1] and rest.has_more is False
        assert sdk.fine_tuning.jobs.retrieve(jobs[0]).id == jobs[0]
        assert sdk.fine_tuning.jobs.cancel(jobs[1]).id == jobs[1]
        assert sdk.fine_tuning.jobs.list_events(jobs[0]).object == "list"
        assert [f.id for f in sdk.files.list().data] == [uploaded.id]
        assert sdk.files.content(uploaded.id).read()
        assert gw.with_store(lambda s: s.lookup("job", jobs[0])).provider == "mistral-ai"
