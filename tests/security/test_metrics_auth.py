"""``/metrics`` once keys exist (finding 14): a tunegate key or, when the operator sets one, only the
metrics token; an open gateway's metrics stay open. Driven over the real server's socket."""

from __future__ import annotations

from pathlib import Path

import requests

from tests.gateway import Gateway


def _key(gw: Gateway) -> str:
    async def make(store):  # type: ignore[no-untyped-def]
        return (await store.create_key("team", ["*"]))[1]

    return gw.with_store(make)  # type: ignore[no-any-return]


def test_open_gateway_metrics_stay_open(gateway: Gateway) -> None:
    assert requests.get(gateway.url + "/metrics", timeout=10).status_code == 200


def test_keyed_gateway_metrics_need_a_key(gateway: Gateway) -> None:
    key = _key(gateway)
    anonymous = requests.get(gateway.url + "/metrics", timeout=10)
    assert anonymous.status_code == 401 and "tunegate_requests" not in anonymous.text
    assert anonymous.json()["error"]["code"] == "metrics_unauthorized"
    assert anonymous.headers["www-authenticate"] == "Bearer"
    wrong = requests.get(gateway.url + "/metrics", headers={"Authorization": "Bearer tg-nope-nope"}, timeout=10)
    assert wrong.status_code == 401
    ok = requests.get(gateway.url + "/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert ok.status_code == 200 and "tunegate_requests" in ok.text


def test_a_metrics_token_is_the_only_way_in(tmp_path: Path) -> None:
    with Gateway(tmp_path / "d", metrics_token="scrape-token-0123456789") as gw:
        assert requests.get(gw.url + "/metrics", timeout=10).status_code == 401  # even on an open gateway
        key = _key(gw)
        by_key = requests.get(gw.url + "/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert by_key.status_code == 401
        ok = requests.get(gw.url + "/metrics", headers={"Authorization": "Bearer scrape-token-0123456789"},
                          timeout=10)
        assert ok.status_code == 200 and "tunegate_requests" in ok.text
