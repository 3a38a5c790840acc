"""Fixtures shared by the chat tests: a local upstream per module, reset for each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from satisfice.testing import LocalUpstream, RawUpstream


@pytest.fixture(scope="module")
def upstream() -> Iterator[LocalUpstream]:
    # The exact counters, built now: until Router() has built them (a second, on a thread)
    # usage is estimated, not counted, so a test run on its own would see other numbers.
    from satisfice import _core

    _core.count_tokens("warm", "o200k_base")
    _core.count_tokens("warm", "cl100k_base")
    with LocalUpstream() as up:
        yield up


@pytest.fixture
def raw() -> Iterator[RawUpstream]:
    """An upstream whose every byte the test scripts (a module may keep its own, shared)."""
    with RawUpstream() as r:
        yield r


@pytest.fixture
def up(upstream: LocalUpstream) -> Iterator[LocalUpstream]:
    # A request cancelled by the previous test may still be on its way in: let it land
    # before scripting, or it would take this test's first behaviour.
    assert upstream.wait_idle(), "a connection from an earlier test is still open"
    upstream.reset_script()
    yield upstream


@pytest.fixture
def master(monkeypatch: pytest.MonkeyPatch) -> None:
    """The master key set (`server_support.MASTER`), and the exact counters built."""
    from satisfice import _core

    from .server_support import MASTER

    monkeypatch.setenv("SATISFICE_MASTER_KEY", MASTER)
    _core.wait_for_tokenizers()
