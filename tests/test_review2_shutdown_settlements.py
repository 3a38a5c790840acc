"""A request the router's close cuts settles from a task of its own (`settle_soon`); the
shutdown waits for it (c307da2). Defect: with the budget store away for a moment, that
settlement is queued after the shutdown's retries of the queue have run, so it is tried
once and never again, though the shutdown's grace has seconds left: its spend is not
counted, and no "settlements_lost" line says so (without [state].unsettled_file). Expected:
it is retried within the same deadline as the rest of the queue, and settles."""

from __future__ import annotations

import time
from typing import Any

from satisfice.server import ServerConfig
from satisfice.server.state import StateUnavailable

from .server_support import running


def test_a_settlement_queued_as_the_router_closes_is_retried_within_the_grace() -> None:
    settled: list[float] = []
    back_at = [float("inf")]
    cfg = ServerConfig(shutdown_grace_s=5)
    with running(cfg) as (_url, app):
        svc = app.state.service
        real_settle = svc.state.settle
        real_aclose = svc.router.aclose

        async def settle(budgets: Any, reserved: float, actual: float) -> None:
            if time.monotonic() < back_at[0]:
                raise StateUnavailable("the budget store is away (for a moment)")
            await real_settle(budgets, reserved, actual)
            settled.append(actual)

        async def aclose(grace_s: float = 30.0) -> None:
            # a request cut by the close: its settlement in a task, the store away 0.3 s
            back_at[0] = time.monotonic() + 0.3
            svc.settle_soon([], 0.25, 0.125)
            await real_aclose(grace_s=grace_s)

        svc.state.settle = settle
        svc.router.aclose = aclose
    assert settled == [0.125] and not svc.unsettled, (
        f"a settlement queued as the router closed was dropped: settled {settled}, "
        f"left {list(svc.unsettled)}"
    )
