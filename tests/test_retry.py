"""The executor's retry decisions, case by case (pure functions: no server, no clock)."""

from __future__ import annotations

import pytest

from satisfice.errors import (
    AllAttemptsFailedError,
    AuthError,
    BadRequestError,
    ContextLengthError,
    ProviderError,
    RetryableError,
    UpstreamTimeoutError,
)
from satisfice.retry import Action, backoff_s, classify, cooldown_wait_s


@pytest.mark.parametrize(
    ("error", "action"),
    [
        (RetryableError("503", status=503), Action.RETRY),
        (RetryableError("429", status=429, retry_after=1.0), Action.RETRY),
        (RetryableError("connect refused"), Action.RETRY),
        (UpstreamTimeoutError("slow"), Action.NEXT),
        (AuthError("401", status=401), Action.DISABLE),
        (ContextLengthError("too long", status=400), Action.WIDEN),
        (BadRequestError("bad", status=400), Action.STOP),
        (ProviderError("odd"), Action.NEXT),
        (AllAttemptsFailedError("all", []), Action.NEXT),
    ],
)
def test_classify(error: ProviderError, action: Action) -> None:
    assert classify(error) is action


BASE = {"max_retries": 2, "base_s": 0.1, "max_s": 1.0, "jitter": 0.5}


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ({"retry": 0, "retry_after": None, "time_left_s": None}, 0.05),  # jitter x base
        ({"retry": 1, "retry_after": None, "time_left_s": None}, 0.1),  # doubled
        ({"retry": 1, "retry_after": None, "time_left_s": None, "max_s": 0.15}, 0.075),  # capped
        ({"retry": 2, "retry_after": None, "time_left_s": None}, None),  # out of retries
        # a Retry-After moves on, short or long: cooldown_wait_s waits when nothing is left
        ({"retry": 0, "retry_after": 1.9, "time_left_s": None}, None),
        ({"retry": 0, "retry_after": 3.0, "time_left_s": None}, None),
        ({"retry": 0, "retry_after": 0.2, "time_left_s": 0.5}, None),
        ({"retry": 0, "retry_after": None, "time_left_s": 0.01}, None),  # past the deadline
        ({"retry": 0, "retry_after": 0.0, "time_left_s": None}, 0.05),  # "0": no wait asked
    ],
)
def test_backoff(case: dict[str, float | None], expected: float | None) -> None:
    got = backoff_s(**{**BASE, **case})  # type: ignore[arg-type]
    assert got == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(
    ("frees_in", "max_wait", "left", "expected"),
    [
        ([], 2.0, None, None),
        ([0.5, 0.2], 2.0, None, 0.201),
        ([3.0], 2.0, None, None),
        ([0.5], 2.0, 0.4, None),
        ([0.5], 2.0, 1.0, 0.501),
    ],
)
def test_cooldown_wait(
    frees_in: list[float], max_wait: float, left: float | None, expected: float | None
) -> None:
    got = cooldown_wait_s(frees_in, max_retry_wait_s=max_wait, time_left_s=left)
    assert got == (pytest.approx(expected) if expected is not None else None)
