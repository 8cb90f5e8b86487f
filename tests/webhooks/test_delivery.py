"""A job progresses on the OpenAI stand-in with nobody polling it: the watcher sees each status, and the
owner's endpoint receives exactly one signed `fine_tuning.job.succeeded`, verified by the unmodified
`openai` SDK's `webhooks.unwrap()`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import openai
import pytest

from tests.gateway import Gateway
from tests.standins.openai_like import StandIn
from tests.webhooks.helpers import FAST_HOOKS, FAST_WATCH, Receiver, create_job, eventually, prepare, register


def test_one_succeeded_event_verified_by_the_sdk(tmp_path: Path, standin: tuple[StandIn, str],
                                                 receiver: Receiver) -> None:
    s, url = standin
    keys = prepare(tmp_path / "d", url, s.api_key)
    with Gateway(tmp_path / "d", watch=FAST_WATCH, webhooks=FAST_HOOKS) as gw:
        endpoint = register(gw.url, keys["alice"], receiver.url)
        assert endpoint["signing_secret"].startswith("whsec_") and endpoint["object"] == "webhook_endpoint"
        job_id = create_job(gw.url, keys["alice"])
        got = receiver.wait(1)
        time.sleep(1.0)  # any duplicate would arrive within this
        snapshot = gw.with_store(lambda st: st.lookup("job", job_id))
    assert len(receiver.got) == 1, [r.body for r in receiver.got]
    event = openai.OpenAI(api_key="unused").webhooks.unwrap(got[0].body, got[0].headers,
                                                            secret=endpoint["signing_secret"])
    assert event.type == "fine_tuning.job.succeeded" and event.data.id == job_id
    assert event.object == "event" and event.id.startswith("evt_")
    assert got[0].headers["webhook-id"].startswith("wh_")
    # The registry's snapshot came from the watcher's polls (the test never retrieved the job).
    assert snapshot is not None and snapshot.status == "succeeded"
    assert snapshot.snapshot is not None and snapshot.snapshot["fine_tuned_model"]
    polls = [r for r in s.requests if r.method == "GET" and r.path == f"/fine_tuning/jobs/{job_id}"]
    assert len(polls) == 3  # validating_files -> queued -> running -> succeeded, then no more polls


def test_a_tampered_body_fails_the_sdk_check(tmp_path: Path, standin: tuple[StandIn, str],
                                             receiver: Receiver) -> None:
    s, url = standin
    keys = prepare(tmp_path / "d", url, s.api_key)
    with Gateway(tmp_path / "d", watch=FAST_WATCH, webhooks=FAST_HOOKS) as gw:
        secret = register(gw.url, keys["alice"], receiver.url)["signing_secret"]
        create_job(gw.url, keys["alice"])
        got = receiver.wait(1)[0]
    forged = json.dumps({**json.loads(got.body), "type": "fine_tuning.job.failed"})
    with pytest.raises(openai.InvalidWebhookSignatureError):
        openai.OpenAI(api_key="unused").webhooks.unwrap(forged, got.headers, secret=secret)


def test_receiver_down_then_up_gets_the_same_webhook_id(tmp_path: Path, standin: tuple[StandIn, str]) -> None:
    s, url = standin
    keys = prepare(tmp_path / "d", url, s.api_key)
    receiver = Receiver(script=[503, 500])  # up, but failing, for the first two attempts
    receiver.up()
    try:
        with Gateway(tmp_path / "d", watch=FAST_WATCH, webhooks=FAST_HOOKS) as gw:
            endpoint = register(gw.url, keys["alice"], receiver.url)
            receiver.down()  # and then down altogether for a while
            job_id = create_job(gw.url, keys["alice"])
            eventually(lambda: gw.with_store(lambda st: st.lookup("job", job_id)).status == "succeeded")
            time.sleep(1.0)  # attempts fail while it is down
            receiver.up()
            got = receiver.wait(3)
            eventually(lambda: [r for r in got if r.headers.get("webhook-id")] and
                       receiver.got[-1:] and len(receiver.got) >= 3)
            time.sleep(0.5)
            log = _log(gw.url, keys["alice"], endpoint["id"])
    finally:
        receiver.down()
    ids = {r.headers["webhook-id"] for r in receiver.got}
    assert len(ids) == 1, ids  # every attempt, failed or not, carried the same id
    for r in receiver.got:
        openai.OpenAI(api_key="unused").webhooks.verify_signature(r.body, r.headers, secret=endpoint["signing_secret"])
    assert [r.body for r in receiver.got].count(receiver.got[-1].body) == len(receiver.got)  # same bytes
    assert log[0]["state"] == "delivered" and log[0]["attempts"] >= 3 and log[0]["last_status"] == 200
    assert log[0]["id"] == ids.pop() and log[0]["latency_ms"] is not None


def _log(gw_url: str, key: str, endpoint_id: str) -> list[dict[str, object]]:
    import requests

    answer = requests.get(f"{gw_url}/v1/webhooks/{endpoint_id}/deliveries", headers={"Authorization": f"Bearer {key}"},
                          timeout=10)
    assert answer.status_code == 200, answer.text
    return list(answer.json()["data"])
