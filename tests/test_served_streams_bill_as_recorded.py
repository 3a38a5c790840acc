"""Served streams billed to a virtual key as the ledger records them, read with the
official clients over a socket: the key's spend is the sum of what each request is on
record at, to the nano-dollar the budget counts in."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import openai

from satisfice import Policy, Router
from satisfice.ledger import read_records
from satisfice.server import ServerConfig
from satisfice.testing import LocalUpstream, reply

from .chat_support import registry, wire
from .server_support import ADMIN, running

HELLO = [{"role": "user", "content": "hello"}]


def _settled(url: str, svc: Any) -> dict[str, Any]:
    """The key's budget row once nothing is in flight or held (polled, at most 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        (row,) = httpx.get(url + "/admin/spend", headers=ADMIN).json()["budgets"]
        if (svc.in_flight == 0 and row["held_usd"] == 0 and not svc._settling) or (
            time.monotonic() > deadline
        ):
            return row  # type: ignore[no-any-return]
        time.sleep(0.05)


def test_a_keys_spend_is_what_its_streams_are_on_record_at(master: None, tmp_path: Path) -> None:
    """Three streamed answers whose costs are not whole nano-dollars in floating point
    (3 prompt and 1 output tokens of alpha: $7.000000000000001e-07): the budget rounded
    each up (`state._nano_up`: ceil of 700.0000000000001 nano-dollars), so the key's
    spend read $0.000002103 where the ledger said $0.0000021, a nano-dollar over for
    every request."""
    ledger = str(tmp_path / "l.db")
    with LocalUpstream() as up:
        r = Router(registry(up.url), Policy(quality_floor=0.5, max_fallbacks=0))
        with running(ServerConfig(ledger=ledger), r) as (url, app):
            svc = app.state.service
            asked = {"name": "k", "budget_usd": 5.0}
            key = httpx.post(url + "/admin/keys", headers=ADMIN, json=asked).json()["key"]
            client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=10)
            for _ in range(3):
                up.script(wire("alpha"), reply("hi", usage=(3, 1, 0)))
                stream = client.chat.completions.create(
                    model="alpha",
                    messages=HELLO,
                    max_tokens=100,
                    stream=True,  # type: ignore[arg-type]
                )
                said = [c.choices[0].delta.content or "" for c in stream if c.choices]
                assert "".join(said) == "hi"
            row = _settled(url, svc)
            svc.router.ledger.flush()
    recorded = [rec["total_cost_usd"] for rec in read_records(ledger)]
    assert len(recorded) == 3 and all(c and c > 0 for c in recorded), recorded
    assert row["held_usd"] == 0
    assert round(row["spent_usd"] * 1e9) == round(sum(recorded) * 1e9), (row, recorded)
