"""F5: a key whose allow-list is an alias ("models": ["auto-cheap"]) is served by models the
admin never listed: the caller's own extra_body `allow`/`deny` are merged under the alias, and
session pins are global (not per key), so another key's session steers it too. The allow-list
check looks only at the request's `model` name, never at the model actually served."""

import httpx
import pytest

from .harness import LocalUpstream, key, serve

ALIAS = "[aliases]\nauto-cheap = { quality_floor = 0.5 }\n"


@pytest.fixture
def url():
    with LocalUpstream() as up, serve(up, ALIAS) as (u, _, _):
        yield u


def _chat(url, k, **kw):
    body = {"model": "auto-cheap", "messages": [{"role": "user", "content": "hi"}], **kw}
    r = httpx.post(
        url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {k['key']}"}
    )
    return r.status_code, r.json().get("model")


@pytest.mark.parametrize("extra", [{"allow": ["delta"]}, {"deny": ["alpha", "beta", "gamma"]}])
def test_caller_constraints_do_not_widen_an_alias_key(url, extra):
    k = key(url, models=["auto-cheap"])
    status, model = _chat(url, k, **extra)
    # observed: (200, 'delta') -- the priciest model, reached through an alias-only key
    assert status == 403 or model == "alpha", (status, model)


def test_another_keys_session_pin_does_not_steer_an_alias_key(url):
    other = key(url, name="other")
    r = httpx.post(
        url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {other['key']}"},
        json={"model": "delta", "user": "s1", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.json()["model"] == "delta"
    k = key(url, models=["auto-cheap"])
    assert _chat(url, k, user="s1") == (200, "alpha")  # observed: (200, 'delta')
