"""`satisfice serve` facing hostile or careless clients (raw sockets, the admin API): each
test failed on the code it was written against because of the defect its docstring names.
Servers run on 127.0.0.1 only, through tests/server_support.py."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from satisfice import Router, _core
from satisfice.server import ServerConfig
from satisfice.testing import LocalUpstream

from .chat_support import registry
from .server_support import ADMIN, running

BODY = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "hi"}]}).encode()


@pytest.fixture(scope="module")
def served(master: None) -> Iterator[str]:
    with LocalUpstream() as up:
        _core.wait_for_tokenizers()
        with running(ServerConfig(read_timeout_s=5), Router(registry(up.url))) as (url, _):
            yield url


@pytest.fixture(scope="module")
def master() -> Iterator[None]:  # module-wide: the server is (`conftest.master` is per test)
    mp = pytest.MonkeyPatch()
    from .server_support import MASTER

    mp.setenv("SATISFICE_MASTER_KEY", MASTER)
    yield
    mp.undo()


def _exchange(url: str, data: bytes, timeout: float = 10) -> tuple[bytes, float]:
    """`data` sent on a connection of its own; what came back until the server closed it,
    and how long that took."""
    host, port = url.removeprefix("http://").split(":")
    start = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        with contextlib.suppress(ConnectionError):  # refused before all of it was sent
            s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionError:
            pass
    return out, time.monotonic() - start


def _head(path: str, extra: bytes = b"", chunked: bool = False) -> bytes:
    framing = b"transfer-encoding: chunked" if chunked else b"content-length: %d" % len(BODY)
    return (
        b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n%s\r\n%s"
        b"connection: close\r\n\r\n" % (path.encode(), framing, extra)
    )


def _error_of(reply: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


def test_a_head_past_its_bound_is_refused(served: str) -> None:
    """Defect: a request's head (request line and headers) had no bound: a 60 MB header
    was read whole and the request served (uvicorn's httptools protocol has no limit, where
    its h11 one refuses 16 KiB), while the body is bounded at `max_body_bytes`; a few
    such connections at once held gigabytes.

    Expected: a 431 in the API's error shape once the head passes its bound, the
    connection closed, and the next request served; a head of 64 KB (more than any real
    client's) is served."""
    big = b"x-big: " + b"a" * 8_000_000 + b"\r\n"
    reply, took = _exchange(served, _head("/v1/chat/completions", big) + BODY)
    status, err = _error_of(reply)
    assert status == 431, reply[:300]
    assert "header" in err["error"]["message"]  # type: ignore[index]
    assert took < 5
    ok = httpx.post(served + "/v1/chat/completions", content=BODY, timeout=10)
    assert ok.status_code == 200
    extra = b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 1000) for i in range(64))
    reply, _ = _exchange(served, _head("/v1/chat/completions", extra) + BODY)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:300]


@pytest.mark.parametrize(
    ("path", "api"), [("/v1/chat/completions", "openai"), ("/v1/messages", "anthropic")]
)
def test_bad_framing_is_answered_in_the_api_error_shape(served: str, path: str, api: str) -> None:
    """Defect: a request whose framing is not HTTP (here a chunk size that is not hex) was
    answered `Invalid HTTP request received.` as text/plain, which an SDK shows as a bare
    status with no message (the Anthropic SDK's error has no `type` to branch on).

    Expected: the 400 in the shape of the API asked, saying what was wrong."""
    body = b"zz\r\n" + BODY + b"\r\n0\r\n\r\n"
    reply, _ = _exchange(served, _head(path, chunked=True) + body)
    status, err = _error_of(reply)
    assert status == 400, reply[:300]
    assert b"application/json" in reply.partition(b"\r\n\r\n")[0]
    if api == "anthropic":
        assert err["type"] == "error"
        assert err["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "HTTP" in err["error"]["message"]  # type: ignore[index]


def test_admin_errors_do_not_quote_a_key_back(served: str) -> None:
    """Defect: the admin API's errors quoted a caller's input whole where /v1's scrub the
    server's keys from it: a satisfice key (or the master key) pasted into a field (a
    budget, a key's model list, a field's name, a model in a disable's path) came back
    whole in the 400.

    Expected: each refused with its 400, the key shown as [redacted]."""
    made = httpx.post(served + "/admin/keys", json={"name": "pasted"}, headers=ADMIN)
    secret = made.json()["key"]
    for method, path, body in [
        ("POST", "/admin/keys", {"name": "x", "budget_usd": secret}),
        ("POST", "/admin/keys", {"name": "x", "models": [secret]}),
        ("POST", "/admin/keys", {"name": "x", secret: 1}),
        ("POST", f"/admin/deployments/{secret}/disable", {}),
    ]:
        r = httpx.request(method, served + path, json=body, headers=ADMIN, timeout=10)
        assert r.status_code == 400, (path, r.text[:300])
        said = r.json()["error"]["message"]
        # (quoted redacted, or a list's key refused as a key: `_name`)
        assert secret not in r.text and ("[redacted]" in said or "holds a key" in said), said


def test_too_many_betas_are_told_the_bound(served: str) -> None:
    """Defect: `anthropic-beta` headers past the 8,192 characters the server sends on (a
    client's betas over several headers, joined) were refused as "must be ASCII text",
    though every one was ASCII: the client was told to fix what was not wrong.

    Expected: the 400 names the bound."""
    betas = [("anthropic-beta", f"feature-{i}-2025-01-01") for i in range(500)]
    body = {"model": "auto", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(served + "/v1/messages", json=body, headers=betas, timeout=10)
    assert r.status_code == 400, r.text[:300]
    assert "8,192" in r.json()["error"]["message"], r.text


def test_a_key_cut_short_in_an_error_is_still_redacted(served: str) -> None:
    """Defect: an error quotes a caller's value cut to ~60 characters (`{v!r:.60}`) before
    the server scrubs it, and its keys were known by their prefix and 16 characters after
    it: a key as a tool_choice's name came back (and went to the log) as `sk-sat-` and the
    first characters of its secret.

    Expected: whatever of the key's secret the cut left is redacted."""
    made = httpx.post(served + "/admin/keys", json={"name": "cut"}, headers=ADMIN)
    secret = made.json()["key"]
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "tool_choice": {"type": "function", "function": {"name": "x " * 20 + secret}},
    }
    r = httpx.post(served + "/v1/chat/completions", json=body, timeout=10,
                   headers={"authorization": f"Bearer {secret}"})  # fmt: skip
    assert r.status_code == 400, r.text[:300]
    said = r.json()["error"]["message"]
    assert "[redacted]" in said and secret[7:12] not in said, said


def test_a_key_is_not_stored_as_a_keys_name_or_team(served: str) -> None:
    """Defect: the admin API stored a satisfice key pasted as another key's name or team,
    then showed it in /admin/keys, as a metrics label and on every record of that key.

    Expected: refused with a 400 that says why (the key redacted), nothing stored."""
    secret = httpx.post(served + "/admin/keys", json={"name": "a"}, headers=ADMIN).json()["key"]
    before = httpx.get(served + "/admin/keys", headers=ADMIN).text
    for body in ({"name": f"ops {secret}"}, {"name": "ops", "team": secret}):
        r = httpx.post(served + "/admin/keys", json=body, headers=ADMIN, timeout=10)
        assert r.status_code == 400 and "holds a key" in r.text and secret not in r.text, r.text
    assert httpx.get(served + "/admin/keys", headers=ADMIN).text == before


def test_a_word_holding_the_key_prefix_is_no_key(served: str) -> None:
    """Defect: a server key was redacted however few characters followed its prefix, within
    a word too: an answer's `.task-sat-score` (a CSS class) reached the client as
    `.ta[redacted]`, and a key named `risk-sat-ops` was refused as holding a key.

    Expected: within a word the prefix is a key's only with a key's run after it (16 or more
    characters, as before); where it starts a word, a key however short (the cut above)."""
    from satisfice._redact import register_prefix, scrub
    from satisfice.server.state import KEY_PREFIX

    register_prefix(KEY_PREFIX)  # (as the server did: the same prefix)
    answer = "Add .task-sat-score\nto the risk-sat-weighted row, desk-sat-1."
    assert scrub(answer) == answer
    assert scrub("paste sk-sat-ab") == "paste [redacted]"
    assert "[redacted]" in scrub("x" * 40 + KEY_PREFIX + "A" * 16)
    made = httpx.post(served + "/admin/keys", json={"name": "risk-sat-ops", "team": "task-sat-a"},
                      headers=ADMIN, timeout=10)  # fmt: skip
    assert made.status_code == 201, made.text[:300]
    assert made.json()["name"] == "risk-sat-ops" and made.json()["team"] == "task-sat-a"
