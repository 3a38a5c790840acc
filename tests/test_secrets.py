"""Canary keys: an upstream that echoes the key back (in error bodies, answers, streams)
never gets it into an exception, an attempt, health, a repr, a record or a DEBUG log."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from satisfice.errors import SatisficeError
from satisfice.testing import LocalUpstream, reply, status

from .chat_support import registry, router, wire

CANARY = "sk-canary-" + "7f3a9c" * 6
MSGS = [{"role": "user", "content": "hello"}]


def keyed(url: str) -> object:
    reg = registry(url)
    out = reg
    for m in reg:
        dep = m.deployments[0].replace(api_key_env="SATISFICE_CANARY_KEY")
        out = out.replace(m.replace(deployments=(dep,)))
    return out


def assert_clean(*surfaces: object) -> None:
    for s in surfaces:
        text = s if isinstance(s, str) else repr(s)
        assert CANARY not in text, f"the key leaked into {text[:200]!r}"


@pytest.mark.parametrize("stream", [False, True])
async def test_echoed_keys_never_leak(
    up: LocalUpstream,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    stream: bool,
) -> None:
    monkeypatch.setenv("SATISFICE_CANARY_KEY", CANARY)
    caplog.set_level(logging.DEBUG)
    echo = f"invalid header Authorization: Bearer {CANARY} / x-api-key: {CANARY}"
    up.script(wire("alpha"), status(500, message=echo), status(503, message=echo))
    up.script(wire("beta"), status(401, message=echo))
    up.script(wire("gamma"), status(400, message=echo))  # a bad request: stops here
    async with router(up.url) as r:
        r.update(keyed(up.url))  # type: ignore[arg-type]
        with pytest.raises(SatisficeError) as e:
            await (r.stream(MSGS).result() if stream else r.chat(MSGS))
        err = e.value
        health = json.dumps(r.health())
        up.script(wire("delta"), reply(f"your key is {CANARY}"))
        r.enable("beta")
        up.script(wire("alpha"), reply(f"the key: {CANARY}."))
        res = await (r.stream(MSGS).result() if stream else r.chat(MSGS))
        health2 = json.dumps(r.health())
    assert up.seen(wire("alpha"))[0].headers["authorization"] == f"Bearer {CANARY}"  # it was sent
    attempts = getattr(err, "attempts", [])
    assert attempts, "the error lists its attempts"
    assert_clean(str(err), repr(err), err.args, [a.to_dict() for a in attempts], health, health2)
    assert_clean(res.text, repr(res), json.dumps(res.to_record()), str(res.raw))
    assert "[redacted]" in res.text
    assert_clean(caplog.text)


async def test_a_key_too_short_to_scrub_is_refused_not_sent(
    up: LocalUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 7-character key could not be told from ordinary words in what upstreams send back,
    # so it could not be kept out of errors and records: the deployment refuses it, saying
    # why and what to do, and the key never goes on the wire.
    short = "tk-9Qz7"
    monkeypatch.setenv("SATISFICE_CANARY_KEY", short)
    async with router(up.url) as r:
        r.update(keyed(up.url))  # type: ignore[arg-type]
        with pytest.raises(SatisficeError) as e:
            await r.chat(MSGS)
    err = str(e.value)
    assert "SATISFICE_CANARY_KEY holds a key of 7 characters" in err and "longer key" in err
    assert short not in err
    assert not any(up.seen(wire(m)) for m in ("alpha", "beta", "gamma", "delta"))


async def test_an_error_not_of_ours_is_recorded_and_logged_without_the_key(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Any exception inside chat() is now recorded: one that quotes the request's headers
    (a transport's bug, here) had put the key in the ledger and the request log."""
    import httpx

    from satisfice import Policy, Router
    from satisfice.ledger import read_records

    monkeypatch.setenv("SATISFICE_CANARY_KEY", CANARY)
    caplog.set_level(logging.DEBUG)

    def broken(request: httpx.Request) -> httpx.Response:
        raise RuntimeError(f"cannot send header {request.headers.get('authorization')!r}")

    db = tmp_path / "l.jsonl"
    async with httpx.AsyncClient(transport=httpx.MockTransport(broken)) as http:
        r = Router(keyed("http://127.0.0.1:9"), Policy(quality_floor=0.5))  # type: ignore[arg-type]
        async with r.configure(http=http).attach(ledger=db):
            with pytest.raises(RuntimeError):
                await r.chat(MSGS)
    (rec,) = read_records(db)
    assert rec["error_type"] == "RuntimeError" and "[redacted]" in rec["error"]
    assert_clean(json.dumps(rec), caplog.text)


HEX_KEY = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"  # openssl rand -hex 32
GROQ_SHAPED = "gsk_" + "Xq7Lm2Np9Rt4Vw8Yz1Bc3Df5Gh6Jk0MnPqRsTuVwXyZaBcDeFgHi"


@pytest.mark.parametrize("pasted", [HEX_KEY, GROQ_SHAPED])
def test_a_key_pasted_where_a_variables_name_goes_is_refused_unechoed(
    tmp_path: Path, pasted: str
) -> None:
    # the server's master_key_env took any alphanumeric string, and the admin API answered
    # every unauthenticated caller "set <it>"; api_key_env took gsk_<52 alphanumerics>, and
    # every chat error said "environment variable <it> is not set"
    from satisfice import Registry
    from satisfice.server import ServerConfig

    cfg = tmp_path / "s.toml"
    cfg.write_text(f'[server]\nmaster_key_env = "{pasted}"\n')
    with pytest.raises(SatisficeError) as e:
        ServerConfig.load(cfg)
    assert pasted not in str(e.value) and "not hold the key itself" in str(e.value)
    model = {"id": "m", "provider": "groq", "tokenizer": "o200k_base",
             "context_window": 8000, "max_output": 1000, "price": {"input": 1, "output": 1},
             "deployments": [{"api": "openai", "base_url": "http://127.0.0.1:9/v1",
                              "api_key_env": pasted}]}  # fmt: skip
    with pytest.raises(SatisficeError) as e:
        Registry.from_dict({"model": [model]})
    assert pasted not in str(e.value)


def test_the_server_configs_repr_has_no_password() -> None:
    from satisfice.server import ServerConfig

    cfg = ServerConfig(
        state_backend="redis",
        redis_url="redis://:hunter2-redis-pw@127.0.0.1:6379/0",
        ledger="postgresql://u:hunter2-pg-pw@127.0.0.1/db",
    )
    assert "hunter2" not in repr(cfg) and "hunter2" not in str(cfg)


def test_the_admin_api_off_does_not_name_the_variable() -> None:
    from starlette.testclient import TestClient

    from satisfice.server import ServerConfig, create_app

    app = create_app(ServerConfig(master_key_env="SOME_TEAM_MASTER_KEY_VAR"))
    r = TestClient(app).get("/admin/keys")
    assert r.status_code == 403 and "SOME_TEAM_MASTER_KEY_VAR" not in r.text


async def _echoed(up: LocalUpstream, echo: str, stream: bool) -> tuple[SatisficeError, Any]:
    """Every model refuses with `echo` as its error (the request's error), then alpha
    answers with it (the answer): what the key-echo tests read."""
    for m in ("alpha", "beta", "gamma", "delta"):
        up.script(wire(m), status(401, message=echo))
    async with router(up.url) as r:
        r.update(keyed(up.url))  # type: ignore[arg-type]
        with pytest.raises(SatisficeError) as e:
            await (r.stream(MSGS).result() if stream else r.chat(MSGS))
        for m in ("alpha", "beta", "gamma", "delta"):
            r.enable(m)
        up.script(wire("alpha"), reply(f"the key: {echo}."))
        res = await (r.stream(MSGS).result() if stream else r.chat(MSGS))
    return e.value, res


@pytest.mark.parametrize("stream", [False, True])
async def test_a_key_echoed_percent_or_html_encoded_never_leaks(
    up: LocalUpstream, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """A reply that wrote the key percent-encoded (every byte, or some: a URL quotes what it
    must) or with HTML character references (a proxy's error page) kept it whole in the
    error, its attempts and the answer: only the key as it is, and JSON escapes, were
    removed. Found by review."""
    monkeypatch.setenv("SATISFICE_CANARY_KEY", CANARY)
    core = CANARY[4:-4]
    forms = [
        "".join(f"%{b:02X}" for b in CANARY.encode()),
        "".join(f"%{b:02x}" for b in CANARY.encode()),
        CANARY.replace("-", "%2D"),
        CANARY.replace("-", "&#45;"),
        "".join(f"&#x{ord(c):X};" for c in CANARY),
        "".join(f"&#{ord(c)};" if i % 2 else c for i, c in enumerate(CANARY)),
    ]
    echo = "you sent " + " and ".join(forms)

    def clean(*surfaces: object) -> None:
        for s in surfaces:
            text = s if isinstance(s, str) else repr(s)
            for form in forms:
                assert form not in text, f"{form!r} leaked into {text[:300]!r}"
            assert core not in text and CANARY.replace("-", "%2D")[6:-6] not in text

    err, res = await _echoed(up, echo, stream)
    clean(str(err), repr(err), [a.to_dict() for a in getattr(err, "attempts", [])])
    clean(res.text, repr(res), json.dumps(res.to_record()), str(res.raw))
    assert res.text.count("[redacted]") == len(forms)


def test_a_key_encoded_and_split_between_stream_pieces_never_leaks() -> None:
    """A percent-encoded key cut in two by a stream's pieces went out whole, its first half
    in one piece. Found by review. Text around it, and ordinary per cents and references,
    come through as they were."""
    from satisfice._redact import StreamScrubber, register, scrub

    register(CANARY)
    encoded = "".join(f"%{b:02X}" for b in CANARY.encode())
    for text in (f"x {encoded} y", f"see &#x73;{CANARY[1:]}. ok", f"a%20b {encoded} z"):
        for cut in range(1, len(text)):
            s = StreamScrubber()
            out = s.feed(text[:cut]) + s.feed(text[cut:]) + s.flush()
            assert "[redacted]" in out and CANARY[4:-4] not in out, (cut, out)
            assert out.startswith(text.split()[0]) and out[-1] == text[-1]
    plain = "50% off, 100%AB a%20b&#38;c &amp; 5 % 3"
    assert scrub(plain) == plain
    s = StreamScrubber()
    assert "".join([s.feed(plain[:10]), s.feed(plain[10:]), s.flush()]) == plain


@pytest.mark.parametrize("stream", [False, True])
async def test_a_key_echoed_base64_encoded_never_leaks(
    up: LocalUpstream, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """An upstream that echoed the key base64-encoded (a Basic header `user:key`, a debug
    dump of the request, in either alphabet, at any of the three alignments) kept it
    readable in the error, its attempts and the answer. Found by review."""
    import base64

    monkeypatch.setenv("SATISFICE_CANARY_KEY", CANARY)
    raw = [pre + CANARY.encode() + post for pre in (b"", b"u:", b"me:") for post in (b"", b"!")]
    forms = [base64.b64encode(b).decode() for b in raw]
    forms += [base64.urlsafe_b64encode(b).decode() for b in raw]
    echo = "you sent " + " and ".join(f"Basic {f}" for f in forms)

    def clean(*surfaces: object) -> None:
        for s in surfaces:
            text = s if isinstance(s, str) else repr(s)
            for f in forms:
                assert f not in text, f"{f!r} leaked into {text[:300]!r}"
                assert f[4:-4] not in text, f"{f[4:-4]!r} leaked into {text[:300]!r}"

    err, res = await _echoed(up, echo, stream)
    clean(str(err), repr(err), [a.to_dict() for a in getattr(err, "attempts", [])])
    clean(res.text, repr(res), json.dumps(res.to_record()), str(res.raw))
    assert res.text.count("[redacted]") == len(forms)
    assert "Basic [redacted]" in res.text  # what is around a spelling is kept


async def test_a_key_a_caller_puts_in_metadata_or_the_prompt_is_not_recorded(
    up: LocalUpstream, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The ledger (and the metrics it counts) keep a caller's metadata and, with
    record_prompts, its messages: an upstream key put there (a log line pasted into a
    prompt, a key id in metadata) had been stored whole, and metadata's `key` had become a
    metrics label of it. Scrubbed as the record is built, as the server scrubs its own."""
    from satisfice.ledger import read_records
    from satisfice.metrics import Metrics

    monkeypatch.setenv("SATISFICE_CANARY_KEY", CANARY)
    up.script(wire("alpha"), reply("fine"))
    path = tmp_path / "ledger.jsonl"
    metrics = Metrics()
    async with router(up.url) as r:
        r.update(keyed(up.url))  # type: ignore[arg-type]
        r.attach(ledger=str(path), record_prompts=True, metrics=metrics)
        await r.chat(MSGS)  # (the deployment's key known: its provider made)
        msgs = [{"role": "user", "content": f"why does {CANARY} fail?"}]
        cyc: dict[str, Any] = {"k": CANARY}
        cyc["self"] = cyc  # (a cycle: made plain, then scrubbed)
        meta = {"key": CANARY, "note": [f"k={CANARY}"], CANARY: 1, "c": cyc,
                "t": (CANARY, (CANARY,)), "b": CANARY.encode(), "s": {CANARY}}  # fmt: skip
        await r.chat(msgs, metadata=meta)
        assert r.ledger is not None and r.ledger.flush(10)
    recs = list(read_records(path))
    assert len(recs) == 2
    assert_clean(path.read_text(), json.dumps(recs), metrics.exposition().decode())
    assert "[redacted]" in json.dumps(recs[-1]["metadata"])
    assert recs[-1]["metadata"]["c"] == {"k": "[redacted]", "self": "<cycle>"}


def test_metadata_that_changes_while_written_rejects_one_record_not_the_writer(
    tmp_path: Path,
) -> None:
    """A caller's metadata that fails while the writer walks it (a dict another thread
    changes meanwhile) had ended the ledger's writer thread, every later record lost; it is
    that record rejected, the rest written."""
    from satisfice import _redact
    from satisfice.ledger import Ledger, read_records

    class Moving(dict):  # type: ignore[type-arg]
        def items(self):  # type: ignore[no-untyped-def]
            raise RuntimeError("dictionary changed size during iteration")

    _redact.register(CANARY)  # (keys known: the writer scrubs what it writes)
    led = Ledger.open(tmp_path / "l.jsonl")
    try:
        led.put({"request_id": "bad", "metadata": {"m": Moving(a=1)}})
        led.put({"request_id": "good", "metadata": {"m": 1}})
        assert led.flush(5.0)
    finally:
        led.close()
    assert [r["request_id"] for r in read_records(tmp_path / "l.jsonl")] == ["good"]
    assert led.rejected == 1


def test_a_key_in_metadata_of_any_type_is_not_written(tmp_path: Path) -> None:
    """A record put as it is (a failure's) kept its metadata's tuples, bytes and sets as
    they were: scrub_values reads str, list and dict alone, and the key in them had been
    written whole. What is written is scrubbed, after it is made plain."""
    from satisfice import _redact
    from satisfice.ledger import Ledger

    _redact.register(CANARY)
    path = tmp_path / "l.jsonl"
    led = Ledger.open(path)
    try:
        meta = {"t": (CANARY, (CANARY,)), "b": CANARY.encode(), "s": {CANARY}}
        led.put({"request_id": "r", "metadata": meta})
        assert led.flush(5.0)
    finally:
        led.close()
    assert_clean(path.read_text())
    assert "[redacted]" in path.read_text()
