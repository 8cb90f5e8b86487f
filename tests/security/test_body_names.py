"""A body that names an object by its full resource name, or by a second spelling of it, is held to the
ownership rule like a path's id (docs/security.md, rule 3): the name is canonicalised first, then checked.

- Fireworks: a job create's base `model` (`accounts/{account}/models/{id}`) and datasets (`training_file`,
  `validation_file` as `accounts/{account}/datasets/{id}`, recorded by their bare id), and a chat's `model`,
  in any case. A name of another shape (a trailing slash, more segments, `Accounts/…`, another collection) is
  refused before anything is sent.
- Bedrock: a job create's base `model` by custom model ARN or by its short name (the ARN GetCustomModel
  answers with is checked, and sent), and a chat's `model`, in any case, and under the `modelArn` Bedrock's
  deployments name (an upstream that reads ARNs leniently is simulated).

Alice and Bob are two tunegate keys on one team connection, through the real gateway over sockets against the
provider stand-ins; Alice's objects are recorded as hers, as a create through the gateway records them.
Every request Bob makes must be a 404 (or a 400 for a malformed name) that reached no upstream object of
Alice's; the controls show Alice's own request does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest
import requests

from tests.gateway import Gateway
from tests.standins import bedrock as bedrock_standin
from tests.standins.bedrock_chat import BedrockChatStandIn
from tests.standins.fireworks import FireworksStandIn, rfc3339
from tests.standins.openai_like import ServerThread

MESSAGES = [{"role": "user", "content": "Hello"}]


def _keys(gw: Gateway, connection: str, provider: str, secrets: dict[str, str], base_url: str,
          options: dict[str, Any], record: list[tuple[str, str]]) -> dict[str, str]:
    async def work(store: Any) -> dict[str, str]:
        await store.add_connection(connection, provider, secrets, base_url, options)
        alice_key, alice = await store.create_key("alice", [connection])
        _bob_key, bob = await store.create_key("bob", [connection])
        for kind, object_id in record:
            await store.record(kind, object_id, provider, connection, alice_key.id, "running", None)
        return {"alice": str(alice), "bob": str(bob)}

    return gw.with_store(work)


def _call(gw: Gateway, key: str, connection: str, method: str, path: str, **kw: Any) -> requests.Response:
    headers = {"x-portkey-api-key": key, "x-portkey-virtual-key": connection,
               "x-portkey-config": json.dumps({"retry": {"attempts": 0}})}
    return requests.request(method, gw.url + path, headers=headers, timeout=30, **kw)


def _error(r: requests.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    if param is not None:
        assert body["error"]["param"] == param, body
    return dict(body["error"])


# ---- Fireworks ----------------------------------------------------------------------------------------

FW_ACCOUNT = "team"
FW_MODEL = f"accounts/{FW_ACCOUNT}/models/alice-ft"
FW_DATASET = "file-alice-data"  # recorded by its bare id, as a Fireworks upload through the gateway records it
BOB_DATASET = "file-bob-data"


@dataclass
class Fireworks:
    standin: FireworksStandIn
    gw: Gateway
    keys: dict[str, str]

    def call(self, who: str, method: str, path: str, **kw: Any) -> requests.Response:
        return _call(self.gw, self.keys[who], "team-fw", method, path, **kw)

    def reached_alice(self) -> list[str]:
        """Upstream requests that named Alice's model or dataset anywhere (case-folded)."""
        return [f"{r.method} {r.path}" for r in self.standin.requests
                if any(n in (unquote(r.path) + r.body.decode("utf-8", "replace")).lower()
                       for n in ("alice-ft", FW_DATASET))]

    def created(self) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.standin.requests
                if r.method == "POST" and r.path.endswith("/supervisedFineTuningJobs")]


@pytest.fixture
def fireworks(tmp_path: Path) -> Iterator[Fireworks]:
    standin = FireworksStandIn(account=FW_ACCOUNT, deployments={f"accounts/{FW_ACCOUNT}/deployments/base"})
    standin.jobs["alice-ft"] = {"name": f"accounts/{FW_ACCOUNT}/supervisedFineTuningJobs/alice-ft",
                                "state": "JOB_STATE_COMPLETED", "outputModel": FW_MODEL,
                                "completedTime": rfc3339(time.time()),
                                "baseModel": "accounts/fireworks/models/llama-v3p1-8b-instruct"}
    standin.deployed[f"accounts/{FW_ACCOUNT}/deployedModels/alice"] = {
        "name": f"accounts/{FW_ACCOUNT}/deployedModels/alice", "model": FW_MODEL,
        "deployment": f"accounts/{FW_ACCOUNT}/deployments/base", "default": True, "state": "DEPLOYED"}
    for dataset in (FW_DATASET, BOB_DATASET):
        standin.datasets[dataset] = {"name": f"accounts/{FW_ACCOUNT}/datasets/{dataset}", "state": "READY",
                                     "createTime": standin.now(), "status": {"code": "OK", "message": ""}}
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "data") as gw:
        keys = _keys(gw, "team-fw", "fireworks-ai", {"api_key": standin.api_key}, upstream.url + "/v1",
                     {"fireworks_account_id": FW_ACCOUNT}, [("model", FW_MODEL), ("file", FW_DATASET)])
        yield Fireworks(standin, gw, keys)


@pytest.mark.parametrize("model", [FW_MODEL, "accounts/TEAM/models/ALICE-FT", "accounts/team/models/Alice-Ft"])
def test_fireworks_job_create_on_another_keys_tuned_model_is_a_404(fireworks: Fireworks, model: str) -> None:
    r = fireworks.call("bob", "POST", "/v1/fine_tuning/jobs", json={"model": model, "training_file": BOB_DATASET})
    _error(r, 404, "model")
    assert fireworks.created() == [] and fireworks.reached_alice() == []
    # The control: Alice trains on from her own model, by its name.
    mine = fireworks.call("alice", "POST", "/v1/fine_tuning/jobs", json={"model": FW_MODEL, "training_file": FW_DATASET})
    assert mine.status_code == 200, mine.text
    assert fireworks.created()[0]["baseModel"] == FW_MODEL


@pytest.mark.parametrize("field", ["training_file", "validation_file"])
@pytest.mark.parametrize("name", [f"accounts/{FW_ACCOUNT}/datasets/{FW_DATASET}",
                                  f"accounts/TEAM/datasets/{FW_DATASET.upper()}", FW_DATASET.upper()])
def test_fireworks_job_create_on_another_keys_dataset_by_its_name_is_a_404(fireworks: Fireworks, field: str,
                                                                           name: str) -> None:
    body = {"model": "llama-v3p1-8b-instruct", "training_file": BOB_DATASET, field: name}
    _error(fireworks.call("bob", "POST", "/v1/fine_tuning/jobs", json=body), 404, field)
    assert fireworks.created() == [] and fireworks.reached_alice() == []
    # The control: Alice names her own dataset by its full name.
    full = f"accounts/{FW_ACCOUNT}/datasets/{FW_DATASET}"
    mine = fireworks.call("alice", "POST", "/v1/fine_tuning/jobs", json={"model": "llama-v3p1-8b-instruct",
                                                                          "training_file": full})
    assert mine.status_code == 200, mine.text
    assert fireworks.created()[0]["dataset"] == full


@pytest.mark.parametrize("field, name", [
    ("model", f"{FW_MODEL}/"), ("model", f"{FW_MODEL}/versions/1"), ("model", f"Accounts/{FW_ACCOUNT}/models/alice-ft"),
    ("model", f"accounts/{FW_ACCOUNT}/datasets/alice-ft"), ("model", "accounts/team/models/"),
    ("training_file", f"accounts/{FW_ACCOUNT}/datasets/{FW_DATASET}/"),
    ("training_file", f"accounts/{FW_ACCOUNT}/models/{FW_DATASET}"),
    ("validation_file", f"accounts/{FW_ACCOUNT}/datasets/{FW_DATASET}/x"),
])
def test_fireworks_a_body_name_of_another_shape_is_a_400_never_sent(fireworks: Fireworks, field: str,
                                                                    name: str) -> None:
    body = {"model": "llama-v3p1-8b-instruct", "training_file": BOB_DATASET, field: name}
    _error(fireworks.call("bob", "POST", "/v1/fine_tuning/jobs", json=body), 400, field)
    assert fireworks.created() == []


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["accounts/TEAM/models/ALICE-FT", "accounts/team/models/ALICE-FT", "ALICE-FT"])
def test_fireworks_chat_with_another_keys_model_in_another_case_is_a_404(fireworks: Fireworks, model: str,
                                                                          stream: bool) -> None:
    r = fireworks.call("bob", "POST", "/v1/chat/completions", json={"model": model, "messages": MESSAGES,
                                                                     "stream": stream})
    _error(r, 404)
    assert fireworks.reached_alice() == []
    chat = fireworks.call("alice", "POST", "/v1/chat/completions", json={"model": FW_MODEL, "messages": MESSAGES,
                                                                          "stream": stream})
    assert chat.status_code == 200, chat.text


@pytest.mark.parametrize("method, suffix", [("GET", ""), ("DELETE", ""), ("POST", "/deploy")])
def test_fireworks_another_keys_model_by_its_name_in_another_case_is_a_404(fireworks: Fireworks, method: str,
                                                                            suffix: str) -> None:
    kw = {"json": {"deployment": "base"}} if suffix else {}
    r = fireworks.call("bob", method, f"/v1/models/accounts/TEAM/models/ALICE-FT{suffix}", **kw)
    _error(r, 404)
    assert fireworks.reached_alice() == [] and fireworks.standin.deleted_models == set()


# ---- Bedrock ------------------------------------------------------------------------------------------

ROLE = f"arn:aws:iam::{bedrock_standin.ACCOUNT}:role/BedrockFineTuning"
TRAINING = "s3://tunegate-train/data/train.jsonl"


@dataclass
class Bedrock:
    standin: BedrockChatStandIn
    gw: Gateway
    keys: dict[str, str]
    model: str  # Alice's custom model ARN
    deployment: str

    @property
    def suffix(self) -> str:
        return self.model.rsplit("/", 1)[1]

    def call(self, who: str, method: str, path: str, **kw: Any) -> requests.Response:
        return _call(self.gw, self.keys[who], "team-br", method, path, **kw)

    def reached_alice(self) -> list[str]:
        """Upstream requests that named Alice's model or its deployment anywhere (decoded, case-folded)."""
        names = (self.suffix, "alice-weather", self.deployment.rsplit("/", 1)[1])
        return [f"{r.method} {r.path}" for r in self.standin.requests
                if any(n in (unquote(r.path) + json.dumps(r.query) + r.body.decode("utf-8", "replace")).lower()
                       for n in names)]

    def created(self) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.standin.requests
                if r.method == "POST" and r.path == "/model-customization-jobs"]

    def converse_calls(self) -> list[str]:
        return [r.path for r in self.standin.requests if r.path.startswith("/model/")]

    def lenient(self) -> None:
        """Make the stand-in read a custom model ARN as Bedrock might: by its last segment, in any case."""
        def canonical(value: str | None) -> str | None:
            tail = (value or "").rstrip("/").rsplit("/", 1)[-1].lower()
            return next((arn for arn in self.standin.all_custom_models() if arn.rsplit("/", 1)[-1] == tail), value)

        models_op, deployments_op = self.standin.custom_model_op, self.standin.deployment_op
        self.standin.custom_model_op = (  # type: ignore[method-assign]
            lambda method, ident, query: models_op(method, canonical(ident), query))
        self.standin.deployment_op = (  # type: ignore[method-assign]
            lambda method, ident, query, body: deployments_op(
                method, ident, {**query, **({"modelArnEquals": canonical(query["modelArnEquals"])}
                                            if query.get("modelArnEquals") else {})}, body))


@pytest.fixture
def bedrock(tmp_path: Path) -> Iterator[Bedrock]:
    standin = BedrockChatStandIn()
    model = standin.add_custom_model(name="alice-weather")
    deployment = f"arn:aws:bedrock:{bedrock_standin.REGION}:{bedrock_standin.ACCOUNT}:custom-model-deployment/0123456789ab"
    standin.deployments[deployment] = {"customModelDeploymentArn": deployment, "modelDeploymentName": "alice-live",
                                       "modelArn": model, "createdAt": standin.now(), "status": "Active",
                                       "_reads": 0, "_token": None}
    secrets = {"aws_access_key_id": bedrock_standin.ACCESS_KEY, "aws_secret_access_key": bedrock_standin.SECRET}
    options = {"aws_region": bedrock_standin.REGION, "aws_s3_bucket": "tunegate-train/team",
               "aws_bedrock_role_arn": ROLE}
    with ServerThread(standin.app()) as upstream, Gateway(tmp_path / "data") as gw:
        keys = _keys(gw, "team-br", "bedrock", secrets, upstream.url, options, [("model", model)])
        yield Bedrock(standin, gw, keys, model, deployment)


def _upper_tail(arn: str) -> str:
    head, _, tail = arn.rpartition("/")
    return f"{head}/{tail.upper()}"


@pytest.mark.parametrize("spelling", ["arn", "name", "upper"])
def test_bedrock_job_create_on_another_keys_custom_model_is_a_404(bedrock: Bedrock, spelling: str) -> None:
    model = {"arn": bedrock.model, "name": "alice-weather", "upper": _upper_tail(bedrock.model)}[spelling]
    r = bedrock.call("bob", "POST", "/v1/fine_tuning/jobs", json={"model": model, "training_file": TRAINING})
    _error(r, 404, "model")
    assert bedrock.created() == []
    # The control: Alice's own model, by ARN or by name, is her base model; the name goes out as the ARN.
    for mine in (bedrock.model, "alice-weather"):
        ok = bedrock.call("alice", "POST", "/v1/fine_tuning/jobs", json={"model": mine, "training_file": TRAINING})
        assert ok.status_code == 200, ok.text
    assert [c["baseModelIdentifier"] for c in bedrock.created()] == [bedrock.model, bedrock.model]


def test_bedrock_job_create_on_another_spelling_bedrock_reads_leniently_is_a_404(bedrock: Bedrock) -> None:
    bedrock.lenient()
    short = bedrock.model.split("/", 1)[0] + "/" + bedrock.suffix  # custom-model/{id}, no base model segment
    for model in (short, _upper_tail(short)):
        r = bedrock.call("bob", "POST", "/v1/fine_tuning/jobs", json={"model": model, "training_file": TRAINING})
        _error(r, 404, "model")
    assert bedrock.created() == []


@pytest.mark.parametrize("suffix", ["/", "/more", "x/"])
def test_bedrock_a_custom_model_arn_of_another_shape_is_refused_never_sent(bedrock: Bedrock, suffix: str) -> None:
    model = bedrock.model + suffix
    r = bedrock.call("bob", "POST", "/v1/fine_tuning/jobs", json={"model": model, "training_file": TRAINING})
    _error(r, 400, "model")
    for upper in (model, model.upper()):
        _error(bedrock.call("bob", "POST", "/v1/chat/completions", json={"model": upper, "messages": MESSAGES}), 404)
    assert bedrock.created() == [] and bedrock.converse_calls() == []


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("lenient", [False, True])
def test_bedrock_chat_with_another_spelling_of_another_keys_model_is_a_404(bedrock: Bedrock, stream: bool,
                                                                           lenient: bool) -> None:
    if lenient:
        bedrock.lenient()
    short = bedrock.model.split("/", 1)[0] + "/" + bedrock.suffix
    spellings = [_upper_tail(bedrock.model)] + ([short] if lenient else [])
    for model in spellings:
        r = bedrock.call("bob", "POST", "/v1/chat/completions", json={"model": model, "messages": MESSAGES,
                                                                       "stream": stream})
        _error(r, 404)
    assert bedrock.converse_calls() == []
    # The control: Alice chats with her model (which warms the deployment cache Bob's spelling then misses).
    chat = bedrock.call("alice", "POST", "/v1/chat/completions", json={"model": bedrock.model, "messages": MESSAGES,
                                                                        "stream": stream})
    assert chat.status_code == 200, chat.text
    assert bedrock.converse_calls() == [f"/model/{quote(bedrock.deployment, safe='')}/"
                                        + ("converse-stream" if stream else "converse")]


def test_bedrock_a_cached_deployment_is_checked_again_for_each_caller(bedrock: Bedrock) -> None:
    """Alice's own chat by a second spelling caches her deployment under it; Bob's same spelling then hits
    that cache entry, and is still refused (the model's ARN is kept with it and checked)."""
    bedrock.lenient()
    short = bedrock.model.split("/", 1)[0] + "/" + bedrock.suffix
    mine = bedrock.call("alice", "POST", "/v1/chat/completions", json={"model": short, "messages": MESSAGES})
    assert mine.status_code == 200, mine.text
    before = len(bedrock.standin.requests)
    _error(bedrock.call("bob", "POST", "/v1/chat/completions", json={"model": short, "messages": MESSAGES}), 404)
    assert bedrock.standin.requests[before:] == []


@pytest.mark.parametrize("method, suffix", [("GET", ""), ("DELETE", ""), ("POST", "/deploy")])
def test_bedrock_another_keys_model_by_another_case_in_a_path_is_a_404(bedrock: Bedrock, method: str,
                                                                       suffix: str) -> None:
    kw = {"json": {}} if suffix else {}
    r = bedrock.call("bob", method, f"/v1/models/{_upper_tail(bedrock.model)}{suffix}", **kw)
    _error(r, 404)
    assert bedrock.reached_alice() == [] and bedrock.model in bedrock.standin.custom_models


# ---- Bedrock: deployments made through a key, and custom models named by their short name ---------------


def _deploy(bedrock: Bedrock, who: str, model: str, name: str) -> str:
    """A deployment made through the gateway (POST /v1/models/{model}/deploy): its ARN."""
    r = bedrock.call(who, "POST", f"/v1/models/{model}/deploy", json={"name": name})
    assert r.status_code == 200, r.text
    return str(next(d["id"] for d in r.json()["deployments"] if d["name"] == name))


def _chat(bedrock: Bedrock, who: str, model: str, stream: bool = False) -> requests.Response:
    return bedrock.call(who, "POST", "/v1/chat/completions", json={"model": model, "messages": MESSAGES,
                                                                    "stream": stream})


@pytest.mark.parametrize("stream", [False, True])
def test_bedrock_a_deployment_a_key_made_is_a_404_to_another_key(bedrock: Bedrock, stream: bool) -> None:
    """The deployment ARN CreateCustomModelDeployment answers with is recorded as the deploying key's: another
    key cannot chat with it (by its ARN, another case of it, or its name), retrieve it or delete it."""
    bedrock.standin.deploy_reads = 0  # Active from its first read
    dep = _deploy(bedrock, "alice", bedrock.model, "alice-new")
    tail = dep.rsplit("/", 1)[1]
    before = len(bedrock.standin.requests)
    for model in (dep, _upper_tail(dep), "alice-new"):
        _error(_chat(bedrock, "bob", model, stream), 404)
    for method in ("GET", "DELETE"):
        _error(bedrock.call("bob", method, f"/v1/models/{dep}"), 404)
    assert bedrock.converse_calls() == [] and dep in bedrock.standin.deployments
    assert [f"{r.method} {r.path}" for r in bedrock.standin.requests[before:]
            if tail in (unquote(r.path) + r.body.decode("utf-8", "replace")).lower()] == []
    # The control: Alice chats with her deployment, reads it and deletes it.
    mine = _chat(bedrock, "alice", dep, stream)
    assert mine.status_code == 200, mine.text
    assert bedrock.call("alice", "GET", f"/v1/models/{dep}").json()["id"] == dep
    assert bedrock.call("alice", "DELETE", f"/v1/models/{dep}").json()["deleted"] is True
    assert dep not in bedrock.standin.deployments


def test_bedrock_a_shared_model_is_not_called_through_another_keys_deployment(bedrock: Bedrock) -> None:
    """A custom model no key owns (made outside the gateway) that Alice deployed: Bob's chat with it does not
    go through Alice's deployment, and his read of the model does not show it."""
    bedrock.standin.deploy_reads = 0
    shared = bedrock.standin.add_custom_model(name="shared")
    dep = _deploy(bedrock, "alice", shared, "alice-on-shared")
    r = _chat(bedrock, "bob", shared)
    assert _error(r, 400, "model")["code"] == "model_not_deployed"
    assert bedrock.converse_calls() == []
    seen = bedrock.call("bob", "GET", f"/v1/models/{shared}")
    assert seen.status_code == 200 and seen.json()["deployments"] == [] and seen.json()["ready"] is False
    listed = {m["id"]: m for m in bedrock.call("bob", "GET", "/v1/models").json()["data"]}
    assert listed[shared]["deployments"] == []
    # The control: Alice's chat with the shared model goes through her deployment.
    mine = _chat(bedrock, "alice", shared)
    assert mine.status_code == 200, mine.text
    assert bedrock.converse_calls() == [f"/model/{quote(dep, safe='')}/converse"]


@pytest.mark.parametrize("stream", [False, True])
def test_bedrock_a_deployment_of_another_keys_model_made_elsewhere_is_a_404(bedrock: Bedrock, stream: bool) -> None:
    """Alice's model's deployment made outside the gateway (not in the registry) serves Alice's model: by its
    ARN or its name it is a 404 to Bob in chat, and to read or delete."""
    for model in (bedrock.deployment, "alice-live"):
        _error(_chat(bedrock, "bob", model, stream), 404)
    for method in ("GET", "DELETE"):
        _error(bedrock.call("bob", method, f"/v1/models/{bedrock.deployment}"), 404)
    assert bedrock.converse_calls() == [] and bedrock.deployment in bedrock.standin.deployments
    assert {r.method for r in bedrock.standin.requests} == {"GET"}  # look-ups only
    for model in (bedrock.deployment, "alice-live"):
        mine = _chat(bedrock, "alice", model, stream)
        assert mine.status_code == 200, mine.text
    assert bedrock.converse_calls() == [f"/model/{quote(bedrock.deployment, safe='')}/"
                                        + ("converse-stream" if stream else "converse")] * 2


@pytest.mark.parametrize("stream", [False, True])
def test_bedrock_chat_naming_another_keys_custom_model_by_its_short_name_is_a_404(bedrock: Bedrock,
                                                                                 stream: bool) -> None:
    """The registry holds Alice's model by its ARN; a chat naming it by its short name is resolved
    (GetCustomModel) and checked under that ARN before Converse is called."""
    for model in ("alice-weather", "ALICE-WEATHER"):
        _error(_chat(bedrock, "bob", model, stream), 404)
    assert bedrock.converse_calls() == []
    assert {r.method for r in bedrock.standin.requests} == {"GET"}  # look-ups by name only
    # The control: Alice chats with her model by its short name, through its deployment.
    mine = _chat(bedrock, "alice", "alice-weather", stream)
    assert mine.status_code == 200, mine.text
    assert bedrock.converse_calls() == [f"/model/{quote(bedrock.deployment, safe='')}/"
                                        + ("converse-stream" if stream else "converse")]


@pytest.mark.parametrize("stream", [False, True])
def test_bedrock_provisioned_throughput_of_another_keys_model_is_a_404(bedrock: Bedrock, stream: bool) -> None:
    """Provisioned throughput bought (outside the gateway) for Alice's model serves Alice's model: by its ARN
    or its name (GetProvisionedModelThroughput says which model) it is a 404 to Bob, never called."""
    throughput = bedrock.standin.add_provisioned(bedrock.model, "alice-pt")
    for model in (throughput, "alice-pt", _upper_tail(throughput)):
        _error(_chat(bedrock, "bob", model, stream), 404)
    assert bedrock.converse_calls() == []
    assert {r.method for r in bedrock.standin.requests} == {"GET"}  # look-ups only
    for model in (throughput, "alice-pt"):
        mine = _chat(bedrock, "alice", model, stream)
        assert mine.status_code == 200, mine.text
    assert bedrock.converse_calls() == [f"/model/{quote(throughput, safe='')}/"
                                        + ("converse-stream" if stream else "converse")] * 2
