"""Model ids the registry accepts hold through `satisfice serve` (adversarial review of the
server as a shared service): each test failed on the code it was written against because of
the defect its docstring names. Servers run on 127.0.0.1 only, through tests/server_support.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from satisfice import Policy, Registry, Router, _core
from satisfice.server import ServerConfig
from satisfice.testing import LocalUpstream

from .chat_support import registry
from .server_support import running

MASTER = "master-review-key-0123456789abcdef"
ADMIN = {"authorization": f"Bearer {MASTER}"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[LocalUpstream]:
    with LocalUpstream() as up:
        yield up


@pytest.fixture(autouse=True)
def _master(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SATISFICE_MASTER_KEY", MASTER)


def _serve(reg: Registry, tmp: Path, **cfg: Any) -> Any:
    path = tmp / "r.toml"
    path.write_text(reg.to_toml())
    _core.wait_for_tokenizers()
    config = ServerConfig(registry_path=str(path), **cfg)
    return running(config, Router(reg, Policy(quality_floor=0.5, max_fallbacks=3)))


def test_admin_can_disable_a_model_whose_id_has_a_slash(
    upstream: LocalUpstream, tmp_path: Path
) -> None:
    """Promised: README "Keys, budgets, limits": `POST /admin/deployments/MODEL/disable|enable`
    takes any model of the registry out of / back into service. Model ids may hold a `/`
    (registry._bad_id allows it; OpenRouter-style ids such as `meta-llama/llama-3.1-70b`,
    and /v1/models/{model:path} serves them, app.py:1462), and such a model is routed and
    served.

    What happens: the admin route is `/admin/deployments/{model}/{action}` (admin.py:251),
    whose `{model}` does not match a `/`: both `/admin/deployments/org/alpha/disable` and
    the percent-encoded `org%2Falpha` (uvicorn decodes the path) are a 404 "no such
    endpoint". An operator cannot take such a model out of service (a leaked key, an
    upstream failing) without editing the registry and reloading.

    Fix: route `/admin/deployments/{model:path}` and split the action off the end (or
    take the model in the body); test with a slash id."""
    reg = registry(upstream.url)
    reg = reg.replace(reg["alpha"].replace(id="org/alpha"))  # added beside alpha
    with _serve(reg, tmp_path) as (url, _):
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        try:
            assert (
                c.chat.completions.create(
                    model="org/alpha", messages=[{"role": "user", "content": "hi"}]
                ).model
                == "org/alpha"
            )  # served: a model like any other
        finally:
            c.close()
        r = httpx.post(url + "/admin/deployments/org%2Falpha/disable", headers=ADMIN, json={})
        if r.status_code == 404:
            r = httpx.post(url + "/admin/deployments/org/alpha/disable", headers=ADMIN, json={})
        assert r.status_code == 200, r.text
        assert r.json()["deployments"]["org/alpha/alpha-dep"]["state"] == "disabled"


def test_a_model_id_outside_latin_1_is_answered_not_a_500(
    upstream: LocalUpstream, tmp_path: Path
) -> None:
    """Promised: the registry takes any printable model id (registry._bad_id: only blank
    ends, control and format characters are refused), and the server answers every error
    in the API's shape, never a bare 500 (app.py:1314 "a bug of ours").

    What happens: a model whose id (or deployment name) holds a character outside Latin-1
    (`alpha-中文`) is routed and *called* (billed), then the answer's `x-satisfice-model`
    header is encoded as Latin-1 (wire.headers_of, wire.py:469-470; Starlette's headers
    for a stream and count_tokens) and raises UnicodeEncodeError: every non-streamed,
    streamed and /v1/messages request to it is a 500 "internal error
    (UnicodeEncodeError)" after the upstream billed the call, and
    /v1/messages/count_tokens is Starlette's plain-text 500 with a traceback in the log
    (count_tokens has no catch-all, app.py:1383).

    Fix: refuse ids and deployment names that are not Latin-1 at registry load, or send
    such header values percent-encoded (RFC 8187 style), never raw."""
    reg = registry(upstream.url)
    alpha = reg["alpha"]
    reg = reg.replace(alpha.replace(id="alpha-中文"))
    with _serve(reg, tmp_path) as (url, _):
        asked = {"model": "alpha-中文", "messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(url + "/v1/chat/completions", json=asked)
        counted = httpx.post(url + "/v1/messages/count_tokens", json=asked)
    assert r.status_code == 200, r.text
    assert counted.status_code == 200, counted.text
