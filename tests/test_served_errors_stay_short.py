"""A refused request's error quotes what it refuses within a bound (adversarial input through
`satisfice serve`): each test failed on the code it was written against because of the defect
its docstring names. Servers run on 127.0.0.1 only, through tests/server_support.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from satisfice import Registry, Router, _core
from satisfice.errors import ConfigError, InputError, UnknownModelError
from satisfice.server import ServerConfig
from satisfice.testing import LocalUpstream

from .chat_support import registry
from .server_support import running

BIG = "m" * 1_000_000
U = [{"role": "user", "content": "hi"}]
#: far above any message a refusal needs (the registry's ids listed, a field's name)
BOUND = 4_000


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    with LocalUpstream() as up:
        reg = registry(up.url)
        _core.wait_for_tokenizers()
        with running(ServerConfig(), Router(reg)) as (url, _):
            yield url


# (path, body): each quotes a 1 MB string the caller sent
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "model id": ("/v1/chat/completions", {"model": BIG, "messages": U}),
    "anthropic model id": ("/v1/messages", {"model": BIG, "max_tokens": 5, "messages": U}),
    "allow": ("/v1/chat/completions", {"model": "auto", "messages": U, "allow": [BIG]}),
    "needs": ("/v1/chat/completions", {"model": "auto", "messages": U, "needs": [BIG]}),
    "parameter name": ("/v1/chat/completions", {"model": "auto", "messages": U, BIG: 1}),
    "many parameter names": (
        "/v1/chat/completions",
        {"model": "auto", "messages": U, **{f"p{i}" + "x" * 60: 1 for i in range(20_000)}},
    ),
    "anthropic parameter name": (
        "/v1/messages",
        {"model": "auto", "max_tokens": 5, "messages": U, BIG: 1},
    ),
    "anthropic block type": (
        "/v1/messages",
        {
            "model": "auto",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": [{"type": BIG}]}],
        },
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_refusal_does_not_echo_a_megabyte_back(served: str, case: str) -> None:
    """Defect: a request refused for a string it sent (an unknown model id, an `allow` or
    `needs` entry, a parameter's name, an Anthropic block's type) had its error quote the
    string whole: a 1 MB model id came back as a 1 MB error message (1.2 MB for 20,000
    unknown parameter names), where the same server quotes a `tool_choice` name or a
    `response_format` type to 40-60 characters, and its log and ledger bound the message.

    Expected: a 4xx in the API's error shape that names what is wrong, its message bounded
    (the string cut, a long list of names shortened, saying how many more)."""
    path, body = CASES[case]
    r = httpx.post(served + path, json=body, timeout=30)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:200])
    err = r.json()["error"]
    assert err["message"] and err["type"]
    assert len(r.content) < BOUND, f"{case}: a {len(r.content):,}-byte error body"
    # the next ordinary request is served
    ok = httpx.post(served + "/v1/chat/completions", json={"model": "auto", "messages": U})
    assert ok.status_code == 200, ok.text[:200]


def test_library_errors_quote_a_bound_of_what_they_refuse(tmp_path: Path) -> None:
    """The same in the library: `Registry[...]` (every unknown id a caller names: a model,
    `allow`, `deny`, `prefer`) and `needs` had put the caller's whole string in the error's
    message, which callers log."""
    reg = Registry.default()
    with pytest.raises(UnknownModelError) as e:
        reg[BIG]
    assert "unknown model 'mmm" in str(e.value) and len(str(e.value)) < BOUND
    r = Router(reg)
    with pytest.raises(ConfigError) as c:
        r.route("hi", needs=(BIG,))
    assert "constraints.needs: unknown" in str(c.value) and len(str(c.value)) < BOUND
    with pytest.raises(ConfigError) as c:
        r.route("hi", allow=[1] * 100_000)
    assert len(str(c.value)) < BOUND


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": BIG, "content": "hi"}],
        [{"role": "user", "content": [{"type": BIG, "text": "hi"}]}],
    ],
    ids=["role", "part type"],
)
def test_the_count_quotes_a_bound_of_a_role_or_part_type(messages: list[dict]) -> None:
    """The same in the extension's reading of messages (rust/py.rs): an unknown role or
    content part type had been quoted whole in the InputError."""
    with pytest.raises(InputError) as e:
        Router().route(messages)
    msg = str(e.value)
    assert "mmm" in msg and "..." in msg and len(msg) < 300


def test_quoted_names_reads_a_generator_once() -> None:
    """Names of mixed types from a generator: sorting them had read it, and the fallback
    then quoted an empty list."""
    from satisfice.errors import quoted_names

    assert quoted_names(x for x in ["b", 1, "a"]) == "['b', 1, 'a']"
    assert quoted_names(str(i) for i in range(12)).endswith("... 2 more]")


MASTER = "sk-master-" + "q7" * 16


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/chat/completions", {"model": MASTER, "messages": U}),
        ("POST", "/v1/messages", {"model": MASTER, "max_tokens": 5, "messages": U}),
        ("GET", f"/v1/models/{MASTER}", None),
    ],
    ids=["chat", "messages", "models"],
)
def test_a_key_sent_as_a_model_id_is_not_quoted_back(
    monkeypatch: pytest.MonkeyPatch, method: str, path: str, body: Any
) -> None:
    """The server scrubs its keys from what a request makes it say: an unknown model id
    quoted in its 404 had come back whole when it was the master key."""
    monkeypatch.setenv("SATISFICE_TEST_MASTER", MASTER)
    with LocalUpstream() as up:
        cfg = ServerConfig(master_key_env="SATISFICE_TEST_MASTER")
        with running(cfg, Router(registry(up.url))) as (url, _):
            auth = {"authorization": f"Bearer {MASTER}"}
            r = httpx.request(method, url + path, json=body, headers=auth, timeout=30)
    assert r.status_code == 404, (r.status_code, r.text[:300])
    assert MASTER not in r.text and "[redacted]" in r.text, r.text[:300]


def test_an_alias_conflict_and_a_keys_model_list_quote_a_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An alias's allow list against a request's, and a key limited to some models asked
    for another: each error had quoted the caller's model id and list whole (1 MB back,
    scrubbed on the event loop)."""
    monkeypatch.setenv("SATISFICE_TEST_MASTER", MASTER)
    with LocalUpstream() as up:
        cfg = ServerConfig(master_key_env="SATISFICE_TEST_MASTER",
                           aliases={"fast": {"allow": ["beta"]}})  # fmt: skip
        with running(cfg, Router(registry(up.url))) as (url, _):
            admin = {"authorization": f"Bearer {MASTER}"}
            k = httpx.post(url + "/admin/keys", headers=admin, timeout=30,
                           json={"name": "k", "models": ["alpha"]}).json()["key"]  # fmt: skip
            caller = {"authorization": f"Bearer {k}"}
            conflict = httpx.post(url + "/v1/chat/completions", headers=admin, timeout=30, json={
                "model": "fast", "messages": U, "allow": [BIG]})  # fmt: skip
            listed = httpx.post(url + "/v1/chat/completions", headers=caller, timeout=30,
                                json={"model": BIG, "messages": U})  # fmt: skip
    assert conflict.status_code == 400 and len(conflict.content) < BOUND, conflict.text[:200]
    assert listed.status_code == 403 and len(listed.content) < BOUND, listed.text[:200]
