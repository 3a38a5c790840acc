"""A fourth look at the twenty-ninth session's last fixes, from a separate clone. Every test
here failed on the code it was written against: an image in a tuple of parts did not make
an excluded ladder step unfit; a step excluded for an image under needs=vision named vision
twice; a sink whose write landed within close()'s last wait was closed twice; a non-ASCII
key shouted and split across stream pieces went out whole; a race's loser that had failed
beside the winner was recorded as a call cut off (the review's suspicion, confirmed)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from satisfice import Policy, Registry, Router, _redact
from satisfice.executor import _unfit
from satisfice.testing import LocalUpstream

from .chat_support import registry

_PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA"
    "60e6kgAAAABJRU5ErkJggg=="
)


def _vision_router() -> Router:
    d0 = registry("http://127.0.0.1:9").to_dict()
    for m in d0["model"]:
        if m["id"] == "gamma":
            m["capabilities"] = [*m["capabilities"], "vision"]
    return Router(Registry.from_dict(d0), Policy(quality_floor=0.0))


# 1 ------------------------------------------------------------------------------------------
def test_an_image_in_a_tuple_of_parts_makes_an_excluded_step_unfit() -> None:
    """Defect (a23ba65): `executor._with_images` reads a message's parts only when its
    content is a `list` (`isinstance(m.get("content"), list)`), but routing (`py.rs`
    `items()`: any sequence but a str) reads a tuple of parts as parts, and counts its image
    as a need for vision. `router._message_list` copies each message shallowly, so a tuple
    reaches `run.request.messages` as it was given: a ladder step naming a model without
    vision that was excluded at routing (cooling) is not ruled out by `_unfit`, and is sent
    the image once its cooldown is over. Fix: accept any non-str Sequence in
    `_with_images` (or take the plan's image count from the decision)."""
    r = _vision_router()
    msgs = [{"role": "user", "content": (
        {"type": "text", "text": "what is in it?"},
        {"type": "image_url", "image_url": {"url": _PNG}},
    )}]  # fmt: skip
    routed = r.route(msgs)
    assert routed.filtered["alpha"][0] == "needs", "routing reads the tuple's image: vision"
    d = r.route(msgs, deny=("alpha",))  # (as cooling excludes it: the rule "exclude")
    assert d.filtered["alpha"][0] == "exclude"
    assert "alpha" in _unfit(d, msgs), (
        f"_unfit lets a ladder call alpha (no vision) with a tuple's image: {_unfit(d, msgs)}"
    )


# 2 ------------------------------------------------------------------------------------------
def test_a_step_excluded_for_an_image_under_needs_vision_names_vision_once() -> None:
    """Defect (a23ba65, cosmetic): `_cannot_take(..., sees=True)` appends "vision" to the
    missing capabilities even when the request's `needs` named it already: the step is
    ruled out "lacks capability vision, vision". Fix: add it to the set before sorting."""
    r = _vision_router()
    msgs = [{"role": "user", "content": [
        {"type": "text", "text": "what is in it?"},
        {"type": "image_url", "image_url": {"url": _PNG}},
    ]}]  # fmt: skip
    d = r.route(msgs, deny=("alpha",), needs=("vision",))
    assert d.filtered["alpha"][0] == "exclude"
    assert _unfit(d, msgs)["alpha"] == "lacks capability vision", _unfit(d, msgs)


# 3 ------------------------------------------------------------------------------------------
class _SlowSink:
    """A sink whose write takes `write_s` (a slow disk, a database under load)."""

    def __init__(self, write_s: float) -> None:
        self.write_s = write_s
        self.writing = False
        self.written = 0
        self.closes: list[str] = []

    def write(self, records: Any) -> None:
        self.writing = True
        time.sleep(self.write_s)
        self.writing = False
        self.written += len(records)

    def feedback(self, rows: Any) -> None:
        pass

    def expire(self, before_ts: float) -> int:
        return 0

    def close(self) -> None:
        import threading

        self.closes.append(threading.current_thread().name)


def test_a_sink_whose_write_lands_within_closes_last_join_is_closed_once() -> None:
    """Defect (a23ba65): the writer now closes the sink as it leaves by the loop's last line
    when `_abandon` is set. close() gives up on the writer (sets `_abandon`) and joins it
    for 1 s more; when the running write lands within that second and nothing is left,
    the writer closes the sink and leaves, and close() then finds it dead (`if not
    self._thread.is_alive(): self.sink.close()`) and closes the sink again: two close()
    calls (before a23ba65, this case was closed once, by close()). A sink whose close()
    is not idempotent (a pool's, a client's that raises "already closed") fails or raises
    out of Ledger.close(). Fix: one owner of the close, e.g. a flag set under a lock by
    whichever closes first (or close() closes only when `_abandon` is unset)."""
    from satisfice.ledger import Ledger

    sink = _SlowSink(write_s=1.0)
    led = Ledger(sink, flush_interval_s=0.01)
    led.put({"request_id": "fourth-0", "ts": time.time(), "model": "m", "status": "ok"})
    time.sleep(0.1)  # the writer is in its write (~1 s)
    assert sink.writing
    led.close(timeout=0.2)  # flush 0.2 s, join 0.2 s, gives up, joins 1 s: the write lands
    led._thread.join(10)
    assert not led._thread.is_alive()
    assert sink.written == 1
    assert len(sink.closes) == 1, f"the sink was closed {len(sink.closes)} times: {sink.closes}"


# 4 ------------------------------------------------------------------------------------------
def test_a_non_ascii_key_shouted_in_its_letters_split_across_pieces_is_caught() -> None:
    """Defect (pre-existing, 022f119; not a23ba65's: the area it touched). A non-ASCII key
    is matched as it is (`_exact`), and `scrub` removes it whole. `StreamScrubber` holds
    back a piece's end that may start a key by `_key_start`, whose table is built from
    `s.lower()` of each key (str.lower(): É -> é) but compared with `_fold(text)` (A-Z
    only: É stays É): a key with an upper-case non-ASCII letter never matches its own
    start, nothing is held, and the key split across two pieces goes out whole. Fix: build
    the table with `_fold` (for non-ASCII keys: as they are) rather than `str.lower`."""
    key = "ÉTÉ-fourth-look-0123456789"
    _redact.register(key)
    assert _redact.scrub(f"x {key} y") == "x [redacted] y"
    s = _redact.StreamScrubber()
    text = f"before {key} after"
    cut = text.index(key) + 2
    out = s.feed(text[:cut]) + s.feed(text[cut:]) + s.flush()
    assert key not in out, out


async def test_a_race_loser_that_failed_beside_the_winner_is_a_failure_not_a_cut_call(
    up: LocalUpstream,
) -> None:
    """A race's loser whose call had already failed (a 500) when the winner answered, in
    the same wait, was recorded as a call cut off in flight: billed its prompt, estimated,
    its failure on no record, and the request's run marked as having cut a call (a
    cancelled request then kept its whole hold). It is a failure (the review's suspicion,
    confirmed here)."""
    import asyncio

    from satisfice import validators
    from satisfice.testing import reply, status

    from .chat_support import router as make_router
    from .chat_support import wire

    async def slowly_fine(text: str) -> bool:  # beta fails while alpha's answer is checked
        await asyncio.sleep(0.4)
        return True

    up.script(wire("alpha"), reply("fine", latency=0.05))
    up.script(wire("beta"), status(500, latency=0.15))
    async with make_router(up.url, max_retries=0) as r:
        res = await r.chat(
            "hi", race=2, accept=validators.check(slowly_fine), allow=["alpha", "beta"]
        )
    assert res.model == "alpha"
    (beta,) = [a for a in res.attempts if a.model == "beta"]
    assert beta.outcome == "error" and beta.status == 500, beta


def test_a_key_start_is_the_longest_of_any_cased_and_exact_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the any-case keys and the exact ones (base64 spellings, a non-ASCII key) held
    back from two tables, the first table's one-letter match ("t" of another key) had been
    taken over the second's longer one ("ÉT"): the key, split after it, went out whole."""
    for name in ("_secrets", "_folded", "_folded_b", "_exact", "_exact_b", "_spellings"):
        monkeypatch.setattr(_redact, name, None if name == "_spellings" else ())
    _redact.register("thirdlookkeyabcd")
    _redact.register("ÉTÉ-fourth-look-0123456789")
    assert _redact._key_start("before ÉT") == 2
