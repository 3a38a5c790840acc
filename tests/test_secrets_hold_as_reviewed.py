"""Secrets that still got out, as a hunt from a separate clone found them. Every test here
failed on the code it was written against: a key written with JSON escapes in an error body
that is no JSON, and a key echoed in another case, reached errors, health, records and a
served client; a catalogue location's and a base URL's credentials were in httpx's INFO log
line; a base URL's password, echoed back, was never scrubbed; a virtual key's repr showed
its hash. Canary values where a secret lives, an upstream (or a catalogue host) on a real
127.0.0.1 socket, and every surface a caller, an operator or a log reader sees grepped."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from satisfice import Policy, Router
from satisfice.errors import SatisficeError
from satisfice.executor import ExecutionConfig
from satisfice.testing import RawUpstream, http_response

from .chat_support import move_alpha, registry

MSGS = [{"role": "user", "content": "hello"}]
#: An Azure OpenAI-shaped key: 32 lower-case hex characters.
HEX_KEY = "3f9a7c0e5b2d4e6f8a1c3e5b7d9f0a2c"
CANARY = "sk-canary-" + "7f3a9c" * 6


@pytest.fixture
def raw() -> Iterator[RawUpstream]:
    with RawUpstream(keep_alive=True) as r:
        yield r


def _alpha_only(raw: RawUpstream, key_env: str = "SATISFICE_REVIEW_KEY", **dep: Any) -> Any:
    """The chat_support registry with alpha on `raw`, keyed by `key_env` (and `dep`'s
    fields), and the others on a closed port."""
    reg = move_alpha(registry("http://127.0.0.1:9"), raw.url)
    alpha = reg["alpha"]
    d = alpha.deployments[0].replace(api_key_env=key_env, **dep)
    return reg.replace(alpha.replace(deployments=(d,)))


def _line(text: str, secret: str) -> str:
    """The log line that holds `secret` (for the failure's message)."""
    return next((ln for ln in text.splitlines() if secret in ln), "")[:300]


def _router(reg: Any, **configure: Any) -> Router:
    r = Router(reg, Policy(quality_floor=0.5, max_fallbacks=0))
    ex = ExecutionConfig(read_timeout_s=2.0, attempt_timeout_s=4.0, backoff_base_s=0.01)
    return r.configure(execution=ex, **configure)


async def _fail(r: Router, ledger: Path) -> tuple[str, str, str]:
    """A request that fails: (the error as str, the health, the ledger's text)."""
    async with r.attach(ledger=ledger):
        with pytest.raises(SatisficeError) as e:
            await r.chat(MSGS)
        health = json.dumps(r.health())
    return str(e.value), health, ledger.read_text()


# -- 1. a key written with a JSON escape in an error body that is not JSON ---------------------


async def test_a_json_escaped_key_in_a_non_json_error_body_is_scrubbed(
    raw: RawUpstream,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """A gateway's error page (text, or JSON cut or with a trailing comma) that echoes the
    key as a JSON string writes it `\\u0073k-canary-...`: all of it but its first letter is
    there as it is, and nothing reads the escape because the body does not parse."""
    monkeypatch.setenv("SATISFICE_REVIEW_KEY", CANARY)
    caplog.set_level(logging.DEBUG)
    escaped = "\\u0073" + CANARY[1:]
    body = b'{"error": {"message": "invalid api key ' + escaped.encode() + b'",}}'
    raw.push(*[http_response(body, status="401 Unauthorized")] * 3)
    err, health, ledger = await _fail(_router(_alpha_only(raw)), tmp_path / "l.jsonl")
    for where, text in [("error", err), ("health", health), ("ledger", ledger),
                        ("log", caplog.text)]:  # fmt: skip
        assert CANARY[1:] not in text, f"the key leaked into the {where}: {text[:400]!r}"


def test_a_json_escaped_key_in_an_upstream_error_never_reaches_a_served_client(
    raw: RawUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same, through `satisfice serve`: the 502's body hands the provider's key to the
    client that called the service."""
    from satisfice.server import ServerConfig

    from .server_support import running

    monkeypatch.setenv("SATISFICE_REVIEW_KEY", CANARY)
    escaped = "\\u0073" + CANARY[1:]
    raw.push(*[http_response(b"bad key " + escaped.encode(), status="500 Internal")] * 8)
    r = Router(_alpha_only(raw), Policy(quality_floor=0.5, max_fallbacks=0))
    with running(ServerConfig(), r) as (url, _):
        resp = httpx.post(
            url + "/v1/chat/completions",
            json={"model": "alpha", "messages": MSGS},
            timeout=30,
        )
    assert resp.status_code >= 500
    text = resp.text + json.dumps(dict(resp.headers))
    assert CANARY[1:] not in text, f"the served client got the key: {text[:400]!r}"


# -- 2. a key echoed in another case ----------------------------------------------------------


@pytest.mark.parametrize("shown", [str.upper, str.lower])
async def test_a_key_echoed_in_another_case_is_scrubbed(
    raw: RawUpstream,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    shown: Any,
) -> None:
    """An upstream that upper-cases what it echoes (a header value normalised, an error
    code built from it): a hex key (Azure's) or any key of one case is the same key in the
    other; the scrubbing compares exactly, so it passes."""
    # (a key of its own each: a key registered by another test is scrubbed in any text)
    key = HEX_KEY if shown is str.upper else "9E41B07C2D5F8A3E6B1C9D0F7A4E2B85"
    monkeypatch.setenv("SATISFICE_REVIEW_KEY", key)
    caplog.set_level(logging.DEBUG)
    body = json.dumps({"error": {"message": f"INVALID_KEY {shown(key)}"}}).encode()
    raw.push(*[http_response(body, status="401 Unauthorized")] * 3)
    err, health, ledger = await _fail(_router(_alpha_only(raw)), tmp_path / "l.jsonl")
    for where, text in [("error", err), ("health", health), ("ledger", ledger),
                        ("log", caplog.text)]:  # fmt: skip
        assert key.lower() not in text.lower(), f"the key leaked into the {where}: {text[:400]!r}"


# -- 3. a catalogue URL's credentials in httpx's log -----------------------------------------


def test_a_refresh_locations_credentials_are_not_logged(
    raw: RawUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """`[registry].refresh.location` (and `satisfice registry update`'s) may hold a password
    or a token; satisfice says it only as `shown()` does, and keeps it out of ServerConfig's
    repr. httpx's own INFO line ("HTTP Request: GET <url> ...") writes it whole."""
    from satisfice import sources

    caplog.set_level(logging.DEBUG)
    raw.push(http_response(b"{}"))
    url = f"http://reader:CATPASSWORD123@127.0.0.1:{raw.port}/prices.json?token=CATTOKEN12345"
    with contextlib.suppress(SatisficeError):  # an empty catalogue may be refused: the log
        sources.load("litellm", url)  # is what is checked
    assert raw.requests, "the catalogue was read"
    for secret in ("CATPASSWORD123", "CATTOKEN12345"):
        assert secret not in caplog.text, f"logged: {_line(caplog.text, secret)!r}"


def test_a_redirect_targets_credentials_are_not_logged(
    raw: RawUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """A catalogue host that redirects to a signed URL (an S3 `?X-Amz-Signature=`): only
    the first URL's secrets were registered, and httpx's INFO line for the redirect's
    request wrote the signature whole. (httpcore's DEBUG trace of the 302's headers, the
    Location among them, is written before any hook can read it: INFO is what is held.)"""
    from satisfice import sources

    caplog.set_level(logging.INFO)
    raw.push(
        http_response(b"", status="302 Found",
                      extra="location: /signed.json?X-Amz-Signature=AMZSIGNATURE12345\r\n"),
        http_response(b"{}"),
    )  # fmt: skip
    with contextlib.suppress(SatisficeError):
        sources.load("litellm", f"http://127.0.0.1:{raw.port}/prices.json")
    assert len(raw.requests) == 2, "the redirect was followed"
    assert "AMZSIGNATURE12345" not in caplog.text, _line(caplog.text, "AMZSIGNATURE12345")


# -- 4. a base URL's credentials with the caller's own httpx client ---------------------------


async def test_a_base_urls_credentials_are_not_logged_with_the_callers_client(
    raw: RawUpstream,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """`router.configure(http=httpx.AsyncClient())` (the README's "your own client"): the
    `?key=` a deployment's base URL carries is registered for scrubbing and masked in its
    repr, and the password of `https://user:pass@host` masked too, but httpx logs the
    request's URL with both at INFO."""
    monkeypatch.setenv("SATISFICE_REVIEW_KEY", CANARY)
    caplog.set_level(logging.DEBUG)
    raw.push(*[http_response(b'{"error": {"message": "no"}}', status="401 Unauthorized")] * 3)
    base = f"http://gw:URLPASSWORD123@127.0.0.1:{raw.port}/v1?key=URLQUERYKEY123"
    async with httpx.AsyncClient() as http:
        r = _router(_alpha_only(raw, base_url=base), http=http)
        await _fail(r, tmp_path / "l.jsonl")
    for secret in ("URLPASSWORD123", "URLQUERYKEY123"):
        assert secret not in caplog.text, f"logged: {_line(caplog.text, secret)!r}"


async def test_a_base_urls_password_echoed_by_the_upstream_is_scrubbed(
    raw: RawUpstream,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The password of a base URL's `user:pass@` is sent (httpx's Basic auth, on the caller's
    client) but never registered for scrubbing (`registry.url_secrets` reads the query
    alone): an upstream that echoes the credentials it got puts them in the error, the
    health and the ledger."""
    import base64

    monkeypatch.setenv("SATISFICE_REVIEW_KEY", CANARY)
    basic = base64.b64encode(b"gw:URLPASSWORD123").decode()
    said = f"bad credentials URLPASSWORD123 (Authorization: Basic {basic})"
    raw.push(*[http_response(json.dumps({"error": {"message": said}}).encode(),
                             status="401 Unauthorized")] * 3)  # fmt: skip
    base = f"http://gw:URLPASSWORD123@127.0.0.1:{raw.port}/v1"
    async with httpx.AsyncClient() as http:
        r = _router(_alpha_only(raw, base_url=base), http=http)
        err, health, ledger = await _fail(r, tmp_path / "l.jsonl")
    assert b"authorization: basic" in raw.requests[0].lower(), "the password was sent"
    for where, text in [("error", err), ("health", health), ("ledger", ledger)]:
        assert "URLPASSWORD123" not in text, f"leaked into the {where}: {text[:400]!r}"
        assert basic not in text, f"Basic credentials leaked into the {where}"


# -- 5. a virtual key's hash in its repr -------------------------------------------------------


def test_a_virtual_keys_repr_has_no_hash() -> None:
    """VirtualKey is a dataclass with the default repr: its `key_hash` (the secret's SHA-256,
    the index a key is looked up by) is in every repr, log line or traceback that shows
    one, though `public()` leaves it out of every admin answer."""
    from satisfice.server.state import VirtualKey

    k, secret = VirtualKey.new("alice")
    assert secret not in repr(k)
    assert k.key_hash not in repr(k), repr(k)
    assert k.key_hash not in str(k), str(k)
