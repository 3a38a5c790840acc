"""A second look at the fixes of the twenty-ninth session, from a separate clone. Every test
here failed on the code it was written against: an allow-list refusal blamed `needs` (the
hard filters had been moved before `exclude` in the Rust table, now back), and so a prompt
too long for the named model with tools said `no_route`; a model cooling at routing time
was sent a prompt past its window by a cascade step naming it; a key echoed in a UTF-16
error body reached the error; closing a SQLite ledger another writer held crashed the
process; a JSONL record appended between the reader's two passes lost its score; a 404 of
/v1/models carried no request id."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from satisfice import Policy, Registry, Router
from satisfice.errors import NoRouteError
from satisfice.server import ServerConfig
from satisfice.testing import LocalUpstream

from .chat_support import registry
from .server_support import MASTER, running
from .test_router import spec

ADMIN = {"authorization": f"Bearer {MASTER}"}


def _serve(up: LocalUpstream, tmp_path: Path, reg: Registry) -> Any:
    path = tmp_path / "r.toml"
    path.write_text(reg.to_toml())
    cfg = ServerConfig(registry_path=str(path), ledger=str(tmp_path / "l.db"))
    router = Router(reg, Policy(quality_floor=0.5, max_fallbacks=3))
    return running(cfg, router)


@pytest.fixture
def fresh(up: LocalUpstream, master: None) -> LocalUpstream:
    """The local upstream (conftest's `up`), with the master key set and counters built."""
    return up


# 1 -------------------------------------------------------------------------------------------
def test_an_allow_list_refusal_blames_what_ruled_out_the_allowed_model() -> None:
    """rust/dispatch.rs now checks `needs` before `exclude`: models outside the allow list
    that lack the capability count as `needs`, and the refusal says "loosen 'needs' first"
    though the one allowed model has it (its max output is what rules it out).
    tests/test_routing_holds.py::test_a_refusal_names_what_ruled_out_the_models_the_request_could_have
    fails the same way."""
    reg = Registry([spec(f"m{i}", 1, 1, 0.9) for i in range(5)]
                   + [spec("short", 0.1, 0.1, 0.9, max_output=256,
                           capabilities=frozenset({"vision"}))])  # fmt: skip
    r = Router(reg, Policy(quality_floor=0.0))
    with pytest.raises(NoRouteError) as e:
        r.route("hi", allow=("short",), needs=("vision",), max_output_tokens=600)
    assert "loosen 'max_output_tokens' first" in str(e.value), str(e.value)[:160]
    assert e.value.rules["m0"] == "exclude", e.value.rules


# 2 -------------------------------------------------------------------------------------------
def test_a_too_long_prompt_for_the_named_model_is_context_length_exceeded_with_tools(
    fresh: LocalUpstream, tmp_path: Path
) -> None:
    """`model: "gamma"` with tools and a prompt past gamma's window: every other model is
    outside the request's allow list, but alpha (no tools) now reads `needs`, not
    `exclude` (the filter order change), so `_too_long` sees a model "the request could
    have had" ruled out by something else and answers `no_route`, not
    `context_length_exceeded`. Claude Code and the agents compact on the latter only."""
    reg = registry(fresh.url)
    reg = reg.replace(reg["alpha"].replace(capabilities=frozenset({"json", "streaming"})))
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with _serve(fresh, tmp_path, reg) as (url, _):
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        with c, pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(
                model="gamma",
                tools=tools,  # type: ignore[arg-type]
                messages=[{"role": "user", "content": "word " * 150_000}],
            )
    assert e.value.code == "context_length_exceeded", (e.value.code, str(e.value)[:300])


async def test_a_cascade_never_sends_a_cooled_model_a_prompt_past_its_window(
    up: LocalUpstream,
) -> None:
    """aca4dcf moved `needs` and the output limit before `exclude` so that a ladder step
    naming a model that was cooling at routing time is still skipped for what it cannot
    take (`executor._unfit`, `_HARD_FILTERS`). The context window, in `_HARD_FILTERS` too,
    is still tested after `exclude` (rust/dispatch.rs): alpha (8,000 tokens), cooling when
    the request is routed, reads "exclude", and the ladder sends it a 20,000-token prompt
    once it has recovered, as it sent gamma the tools before the fix."""
    from satisfice import Cascade, Step, validators
    from satisfice.executor import ExecutionConfig
    from satisfice.testing import reply, status

    r = Router(registry(up.url), Policy(quality_floor=0.5, max_fallbacks=3)).configure(
        execution=ExecutionConfig(read_timeout_s=2.0, attempt_timeout_s=5.0, backoff_base_s=0.01)
    )
    never = validators.check(lambda t: False, name="never")
    ladder = Cascade([Step(("gamma",), never), Step(("alpha",))])
    big = "word " * 20_000
    async with r:
        up.script("gamma-wire", reply("x"))  # control: alpha's window is skipped
        res = await r.chat(big, cascade=ladder, timeout=10)
        assert res.cascade.steps[1].status == "skipped", res.cascade.steps[1]
        up.script("alpha-wire", status(429, retry_after=0.5))  # alpha cooling for 0.5 s
        await r.chat("plain", allow=["alpha", "gamma"], timeout=5)
        assert r.health()["alpha/alpha-dep"]["state"] == "cooling"
        up.script("gamma-wire", reply("x", latency=0.8))
        before = len(up.seen("alpha-wire"))
        res = await r.chat(big, cascade=ladder, timeout=10)
    sent = up.seen("alpha-wire")[before:]
    assert not sent, f"alpha (window 8,000) was sent {len(sent)} call(s) of a 20,000-token prompt"


# 3 -------------------------------------------------------------------------------------------
def test_a_retrieved_unknown_model_carries_the_request_id_headers(
    fresh: LocalUpstream, tmp_path: Path
) -> None:
    """Every error answer was to carry `x-request-id`/`request-id` (`_error`), but
    GET /v1/models[/{id}] builds its errors with a bare JSONResponse: the SDKs' error has
    request_id None (a 404 for an unknown model, a 401 for a bad key)."""
    with _serve(fresh, tmp_path, registry(fresh.url)) as (url, _):
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=30)
        with c, pytest.raises(openai.NotFoundError) as e:
            c.models.retrieve("no-such-model")
    assert e.value.request_id is not None


# 4 -------------------------------------------------------------------------------------------
CANARY = "sk-canary-" + "5e1d2b" * 6


@pytest.mark.parametrize("status", ["401 Unauthorized", "400 Bad Request"])
async def test_a_key_echoed_in_a_utf16_error_body_is_not_in_the_error(
    monkeypatch: pytest.MonkeyPatch, status: str
) -> None:
    """`_json.loads` now refuses UTF-16, so `providers.base._message_of` falls back to
    `body[:300].decode("utf-8", "replace")`: the upstream's UTF-16 error body, the key it
    echoed included, goes into the error message with a NUL between each character
    (`scrub_bytes` looks for the key's UTF-8 bytes). Strip the NULs (any log viewer,
    terminal or `tr -d '\\0'`) and the key is there, in the error, its `attempts`, the
    ledger's `error` and the server's 4xx/5xx body. (Before the change it was there whole.)"""
    import asyncio

    from satisfice.errors import SatisficeError
    from satisfice.testing import RawUpstream, http_response

    from .chat_support import move_alpha, router

    monkeypatch.setenv("SATISFICE_REVIEW_KEY", CANARY)
    said = {"error": {"message": f"Incorrect API key provided: {CANARY}", "type": "x"}}
    body = json.dumps(said).encode("utf-16-le")
    with RawUpstream() as raw:
        for _ in range(5):
            raw.push(http_response(body, status=status, ctype="application/json; charset=utf-16"))
        reg = move_alpha(registry(raw.url), raw.url, "openai")
        alpha = reg["alpha"]
        dep = alpha.deployments[0].replace(api_key_env="SATISFICE_REVIEW_KEY")
        reg = reg.replace(alpha.replace(deployments=(dep,)))
        async with router(raw.url) as r:
            r.update(reg)
            with pytest.raises(SatisficeError) as e:
                await asyncio.wait_for(
                    r.chat([{"role": "user", "content": "hi"}], allow=["alpha"], timeout=5), 10
                )
    shown = (str(e.value) + repr(getattr(e.value, "attempts", None))).replace("\x00", "")
    assert CANARY not in shown, shown[:400]


# 5 -------------------------------------------------------------------------------------------
_CLOSE_UNDER_A_LOCK = r"""
import sqlite3, sys, time
from satisfice.ledger import Ledger

def rec(i):
    return {"request_id": f"r{i}", "started_at": time.time(), "outcome": "ok", "model": "a",
            "task": "general", "total_cost_usd": 0.1}

p = sys.argv[1]
ledger = Ledger.open(p, flush_interval_s=0.005)
ledger.put(rec(0))
assert ledger.flush(10)
other = sqlite3.connect(p, isolation_level=None)  # another process's write transaction
other.execute("BEGIN EXCLUSIVE")
for i in range(1, 4):
    ledger.put(rec(i))
time.sleep(0.3)
ok = ledger.close(0.5)
other.execute("COMMIT")
ledger._thread.join(8)
print("closed", ok, ledger.queued, ledger.acked, ledger.dropped, flush=True)
"""


def test_closing_a_sqlite_ledger_whose_file_another_writer_holds_does_not_crash(
    tmp_path: Path,
) -> None:
    """Ledger.close() gives the writer `timeout` + 1 s (`_abandon`), then closes the sink
    with the writer thread still inside `sink.write` (SQLite's busy wait, 5 s): the
    connection is closed under the running statement and the process dies with SIGSEGV.
    Another process holding the file's write lock (a long transaction, a backup, `sqlite3`
    in a shell) at shutdown is enough."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run([sys.executable, "-c", _CLOSE_UNDER_A_LOCK, str(tmp_path / "l.db")],
                       capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert p.returncode == 0, (p.returncode, p.stdout[-300:], p.stderr[-500:])
    _, _, queued, acked, dropped = p.stdout.split()
    assert int(acked) + int(dropped) <= int(queued), p.stdout


# 6 -------------------------------------------------------------------------------------------
def test_a_jsonl_record_read_while_the_ledger_grows_keeps_its_score(tmp_path: Path) -> None:
    """`_read_jsonl` reads the scores in a first pass, then the records in a second; the
    second reads to the file's end as it is then. A record (and its score) appended
    between the passes, as a live server's ledger is while `satisfice report` or
    `calibrate` reads it, is yielded without its score: its score line is skipped in the
    second pass as "read above", which it never was. (One pass, or a second pass that
    stops where the first did, is consistent.)"""
    from satisfice.ledger import read_records

    p = tmp_path / "l.jsonl"

    def rec(i: str) -> str:
        rec = {"request_id": i, "started_at": 1700000000, "outcome": "ok", "task": "general",
               "model": "a", "total_cost_usd": 1.0}  # fmt: skip
        return json.dumps(rec) + "\n"

    def score(i: str) -> str:
        return json.dumps({"feedback": {"request_id": i, "score": 1.0, "model": "a"}}) + "\n"

    p.write_text(rec("r1") + score("r1"))
    it = read_records(p)
    first = next(it)  # the first pass is done
    with p.open("a") as f:  # the server writes on meanwhile
        f.write(rec("r2") + score("r2"))
    rest = list(it)
    assert first["feedback"] is not None
    for r in rest:
        assert r.get("feedback") is not None, f"{r['request_id']} read without its score"
