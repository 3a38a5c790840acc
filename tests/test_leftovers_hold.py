"""Defects the twenty-ninth session's reviews reported and left unfixed, fixed in the
thirtieth. Every test here failed on the code it was written against (02924a2)."""

from __future__ import annotations

import pytest

from satisfice.errors import ConfigError
from satisfice.record import _NullSink
from satisfice.server import ServerConfig

# the shape of a pasted project key: letters and digits, no space
KEY = "sk-proj-" + "Ab3xQ9" * 8


@pytest.mark.parametrize(
    "config",
    [
        {"state": {"backend": KEY}},
        {"server": {"port": KEY}},
        {"server": {"shutdown_grace_s": KEY}},
        {"server": {"host": KEY}},
        {"registry": {"refresh": {"source": KEY}}},
    ],
    ids=["backend", "port", "grace", "host", "refresh-source"],
)
def test_a_key_pasted_into_the_wrong_field_is_not_quoted(config: dict) -> None:
    """A config error named the field and quoted its value, up to 40 characters or whole: a
    key pasted into `[state].backend` went to the log of the failed start."""
    with pytest.raises(ConfigError) as e:
        ServerConfig.from_dict(config)
    said = str(e.value)
    assert KEY[:12] not in said, said
    assert "not shown" in said, said


def test_an_ordinary_wrong_value_is_still_quoted() -> None:
    """What is plainly no key stays in the message: the user sees what they wrote."""
    with pytest.raises(ConfigError, match="'mem'"):
        ServerConfig.from_dict({"state": {"backend": "mem"}})
    with pytest.raises(ConfigError, match="'8080x'"):
        ServerConfig.from_dict({"server": {"port": "8080x"}})


def test_keys_past_the_label_cap_do_not_merge_with_a_key_named_other() -> None:
    """Keys past MAX_KEYS were counted under the label "other": a real key named "other"
    among the first ones then carried every later key's requests and spend."""
    from satisfice import metrics
    from satisfice.metrics import Metrics

    m = Metrics()
    names = ["other"] + [f"k{i}" for i in range(metrics.MAX_KEYS - 1)] + ["late1", "late2"]
    for name in names:
        m.observe({"metadata": {"key": name}, "model": "a", "deployment": "d", "outcome": "ok"})
    by_key: dict[str, float] = {}
    for family in m.registry.collect():
        if family.name == "satisfice_requests":
            for s in family.samples:
                if s.name == "satisfice_requests_total":
                    by_key[s.labels["key"]] = by_key.get(s.labels["key"], 0) + s.value
    assert by_key["other"] == 1, by_key  # the real key's own request alone
    overflow = [k for k in by_key if k.strip() == "other" and k != "other"]
    assert len(overflow) == 1 and by_key[overflow[0]] == 2, by_key


def test_serve_limits_malloc_arenas_unless_told(tmp_path) -> None:
    """`satisfice serve` limits glibc's malloc arenas before its threads start: with one per
    thread its RSS grew by 16-23 MiB a 100,000 requests (benches/bench_server.py's memory
    phase), where issue 13 asks for flat. A MALLOC_ARENA_MAX the user set is left alone."""
    import os
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's arenas: Linux only")
    code = (
        "from unittest import mock\n"
        "import satisfice.cli as cli, satisfice.server as s\n"
        "calls, real = [], s.limit_malloc_arenas\n"
        "def limit(n=2):\n"
        "    calls.append(real(n)); raise SystemExit(0)\n"
        "with mock.patch.object(s, 'limit_malloc_arenas', limit):\n"
        "    try:\n"
        "        cli.main(['serve', '--port', '0'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(calls)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert out.stdout.strip() == "[True]", out.stdout + out.stderr
    told = subprocess.run([sys.executable, "-c", code], env={**env, "MALLOC_ARENA_MAX": "4"},
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert told.stdout.strip() == "[False]", told.stdout + told.stderr


class _Kept(_NullSink):
    """A sink that keeps what it is given, and counts its writes."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.writes = 0

    def write(self, records: list[dict]) -> None:
        self.rows += records
        self.writes += 1


def _answered_at_once():  # -> Router
    """A router on one model whose upstream answers from memory: no I/O wait."""
    import os

    import httpx

    from satisfice import Policy, Registry, Router

    reg = Registry.from_dict({"model": [
        {"id": "a", "provider": "openai", "context_window": 100_000, "max_output": 4_000,
         "price": {"input": 1.0, "output": 2.0}, "quality": {"general": 0.9},
         "deployments": [{"name": "d", "base_url": "https://a.example.com/v1",
                          "api_key_env": "LEFTOVER_KEY"}]}]})  # fmt: skip
    answer = {
        "id": "c", "object": "chat.completion", "model": "a",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1},
    }  # fmt: skip
    os.environ["LEFTOVER_KEY"] = "sk-leftover-0123456789"
    client = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda _: httpx.Response(200, json=answer))
    )
    return Router(reg, Policy(quality_floor=0.0)).configure(http=client)


async def test_a_loop_that_never_waits_on_io_does_not_starve_the_ledger() -> None:
    """An event loop that seldom waits on I/O (CPU-bound work, an upstream answering at
    once) left the ledger's writer 0.2 ms of every 5 ms switch interval, and its build loop
    ran until the queue was empty, which under such a loop it never was: 20,000 in-process
    requests left 15,000 records queued and none written after the first, the queue
    growing until records were dropped (here 5,556 and 9,108 of 20,000 in two runs; the
    writer now keeps within ~1,000 of the loop). Now the writer builds what was queued when it
    began, writes it, and holds the GIL longer while it is behind."""
    from satisfice.ledger import Ledger

    sink = _Kept()
    ledger = Ledger(sink, max_buffer=3000)
    r = _answered_at_once()
    r.attach(ledger=ledger)
    n = 20_000
    for _ in range(n):
        await r.chat("hello")
    written_during = len(sink.rows)
    assert ledger.close(timeout=30)
    assert ledger.dropped == 0, (ledger.dropped, written_during)
    assert len(sink.rows) == n
    # written as they came: at most about ledger._BEHIND records behind (it had fallen a
    # quarter of the requests behind, and further the longer the loop ran)
    assert written_during >= n - 2500, written_during


def test_a_router_called_from_many_event_loops_keeps_none_of_them_alive() -> None:
    """The executor kept each event loop's deadline timer in a WeakKeyDictionary keyed by the
    loop, but the timer holds its loop: every `asyncio.run(router.chat(...))` left a closed
    loop alive for the router's life (50 runs, 50 loops)."""
    import asyncio
    import gc

    r = _answered_at_once()

    def loops() -> int:
        gc.collect()
        return sum(isinstance(o, asyncio.AbstractEventLoop) for o in gc.get_objects())

    before = loops()
    for _ in range(20):
        asyncio.run(r.chat("hello"))
    assert loops() - before <= 1, loops() - before  # the last one's timer may stay
