"""What to do after a failed call: pure decisions, no I/O and no clock, so that a table of
cases tests them (tests/test_retry.py). The executor applies them.

    RetryableError (429, 5xx, connect)  RETRY the same deployment after a jittered backoff;
                                        with a Retry-After, the NEXT deployment at once (the
                                        executor waits out a Retry-After only when no other
                                        target is left: `cooldown_wait_s`)
    UpstreamTimeoutError                NEXT (a second wait would bust the SLO)
    AuthError                           DISABLE the deployment (see Health), then NEXT
    ContextLengthError                  WIDEN: skip every deployment whose window is not
                                        larger, into the decision's further candidates
    BadRequestError                     STOP: the request must change; another model would
                                        reject it too
    anything else from a provider       NEXT
"""

from __future__ import annotations

import enum

from .errors import (
    AuthError,
    BadRequestError,
    ContextLengthError,
    ProviderError,
    RetryableError,
    UnsupportedRequestError,
    UpstreamTimeoutError,
)

__all__ = ["Action", "backoff_s", "classify", "cooldown_wait_s"]


class Action(enum.Enum):
    RETRY = "retry"
    NEXT = "next"
    STOP = "stop"
    DISABLE = "disable"
    WIDEN = "widen"


def classify(e: ProviderError) -> Action:
    """The action for one failed call (checked most specific class first)."""
    if isinstance(e, AuthError):
        return Action.DISABLE
    if isinstance(e, ContextLengthError):
        return Action.WIDEN
    if isinstance(e, UnsupportedRequestError):  # this model's wire, not the request
        return Action.NEXT
    if isinstance(e, BadRequestError):
        return Action.STOP
    if isinstance(e, RetryableError) and not isinstance(e, UpstreamTimeoutError):
        return Action.RETRY
    return Action.NEXT


def backoff_s(
    *,
    retry: int,
    max_retries: int,
    retry_after: float | None,
    base_s: float,
    max_s: float,
    jitter: float,
    time_left_s: float | None,
) -> float | None:
    """Seconds to wait before retry number `retry` of the same deployment, or None to move
    on: full jitter (`jitter` in [0, 1)) on an exponential backoff. A Retry-After (above 0)
    always moves on: while another target may answer, nobody waits for this one (when none
    is left, `cooldown_wait_s` decides, the same way for 1.9 s and 3 s). No wait that ends
    at or past the deadline (`time_left_s`)."""
    if retry >= max_retries or (retry_after is not None and retry_after > 0):
        return None
    wait = jitter * min(max_s, base_s * 2.0**retry)  # full jitter spreads many clients' retries
    if time_left_s is not None and wait >= time_left_s:
        return None
    return wait


def cooldown_wait_s(
    frees_in_s: list[float], *, max_retry_wait_s: float, time_left_s: float | None
) -> float | None:
    """When every target left is cooling: seconds until the first is free again, if that
    is worth waiting for (at most `max_retry_wait_s`, and before the deadline)."""
    if not frees_in_s:
        return None
    wait = min(frees_in_s) + 0.001
    if wait > max_retry_wait_s:
        return None
    if time_left_s is not None and wait >= time_left_s:
        return None
    return wait
