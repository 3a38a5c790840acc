"""Router overhead: satisfice `chat()` vs LiteLLM `Router.acompletion` vs a direct httpx call,
all against the same local upstream (`python -m satisfice.testing`, in its own process so it
does not share the client's GIL), sequentially and at 32 concurrent requests.

    python benches/bench_overhead.py            # prints the markdown table for the README
    python benches/bench_overhead.py --n 4000   # more requests per cell
    pytest benches/bench_overhead.py --benchmark-enable   # pytest-benchmark, sequential

"direct httpx" is `httpx.AsyncClient()` as most code creates it: the baseline of the
"added" and "throughput" columns. "direct httpx + satisfice pool" is the same call on the
transport satisfice's router uses by default (satisfice/transport.py), and "+ aiohttp" on
httpx-aiohttp's `AiohttpTransport` with the same limits; together they separate what the
transport gains from what routing, fallbacks and accounting cost. `satisfice chat()` runs on
each of the three. LiteLLM rows are left out when litellm is not installed, aiohttp rows
when httpx-aiohttp is not.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from satisfice import Registry, Router
from satisfice.executor import ExecutionConfig
from satisfice.testing import patch_registry

MODEL = "gpt-5.4-nano"  # the one model left enabled (OpenAI wire format); asserted below


def bench_registry(url: str) -> Registry:
    """The bundled registry on the local upstream, every model but MODEL disabled: the
    router still ranks the whole table, and the answer comes from one known model."""
    reg = patch_registry(Registry.default(), url)
    models = [_changed(m, efforts={}) if m.id == MODEL else _changed(m, disabled=True)
              for m in reg if m.base is None]  # fmt: skip
    return Registry(models, reg.meta)


def _changed(m: Any, **changes: Any) -> Any:
    """`m.replace(...)`; a build before 0e964ad (benches/instructions.py --against) has
    ModelSpec as a dataclass."""
    if hasattr(m, "replace"):
        return m.replace(**changes)
    import dataclasses

    return dataclasses.replace(m, **changes)


def plain_client(cfg: ExecutionConfig | None = None) -> httpx.AsyncClient:
    """httpx's own AsyncClient on the transport the router uses, with the router's limits:
    the baseline "the same transport driven directly" (the router's own client also skips
    cookies and httpx's send layers, which belong to what satisfice does differently)."""
    from satisfice.transport import PooledTransport

    c = cfg or ExecutionConfig()
    transport = PooledTransport(
        max_connections=c.max_connections,
        max_per_host=c.max_connections_per_host,
        keepalive_expiry=c.keepalive_expiry_s,
        max_body=c.max_response_bytes,
    )
    timeout = httpx.Timeout(c.read_timeout_s, connect=c.connect_timeout_s)
    return httpx.AsyncClient(
        transport=transport, timeout=timeout, headers={"accept-encoding": "gzip, deflate"}
    )


def warm_tokenizers() -> None:
    """Wait for the exact counters' tokenizers, which Router() builds on a thread: that
    second of CPU must not land in a measurement of process CPU time."""
    from satisfice import _core

    _core.count_tokens("warm", "o200k_base")
    _core.count_tokens("warm", "cl100k_base")


MESSAGES = [{"role": "user", "content": "hi"}]
CONCURRENCY = 32
WIDE = 512  # the issue-10 throughput check: satisfice pool, direct vs chat()

Call = Callable[[], Awaitable[str]]


@contextmanager
def upstream(words: int = 0) -> Iterator[str]:
    """The local upstream in a child process; yields its base URL. `words`: each answer
    that many words long (one streamed piece a word), else three. This checkout's, whatever
    build the bench measures (`PYTHONPATH=DIR`, `instructions.py --against DIR`): the same
    upstream for both."""
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "python")
    proc = subprocess.Popen(
        [sys.executable, "-m", "satisfice.testing", "--words", str(words)],
        env={**os.environ, "PYTHONPATH": os.path.normpath(here)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"the local upstream did not start: {line!r}")
        yield line.split()[1]
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def direct_call(client: httpx.AsyncClient, url: str) -> Call:
    body = {"model": MODEL, "messages": MESSAGES}

    async def call() -> str:
        r = await client.post(url + "/v1/chat/completions", json=body)
        r.raise_for_status()
        text: str = r.json()["choices"][0]["message"]["content"]
        return text

    return call


def aiohttp_client(config: ExecutionConfig) -> httpx.AsyncClient | None:
    """httpx over httpx-aiohttp's transport, with the limits satisfice's pool gets."""
    try:
        from httpx_aiohttp import AiohttpTransport
    except ImportError:
        return None
    limits = httpx.Limits(
        max_connections=config.max_connections,
        max_keepalive_connections=config.max_connections,
        keepalive_expiry=config.keepalive_expiry_s,
    )
    timeout = httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s)
    return httpx.AsyncClient(transport=AiohttpTransport(limits=limits), timeout=timeout)


def satisfice_call(router: Router) -> Call:
    async def call() -> str:
        return (await router.chat(MESSAGES)).text

    return call


def litellm_call(url: str) -> tuple[Call, Any] | None:
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # no network at import
    try:
        import litellm
    except ImportError:
        return None
    litellm.suppress_debug_info = True
    router = litellm.Router(
        model_list=[
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": url + "/v1",
                    "api_key": "unused",
                },
            }
        ]
    )

    async def call() -> str:
        r = await router.acompletion(model=MODEL, messages=MESSAGES)
        text: str = r.choices[0].message.content
        return text

    return call, router


async def run(call: Call, n: int, concurrency: int) -> tuple[list[float], float]:
    """Per-request latencies (s) and wall time for `n` calls at `concurrency`."""
    lat: list[float] = []
    per = n // concurrency

    async def worker() -> None:
        for _ in range(per):
            t = time.perf_counter()
            await call()
            lat.append(time.perf_counter() - t)

    gc.collect()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return lat, time.perf_counter() - t0


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(int(q * len(s)), len(s) - 1)]


async def measure(url: str, n: int, rounds: int) -> tuple[list[list[str]], dict[str, float]]:
    cfg = ExecutionConfig()
    default_client = httpx.AsyncClient()
    tuned_client = plain_client(cfg)  # the router's transport, driven by httpx's own client
    aio_client = aiohttp_client(cfg)
    router = Router(bench_registry(url))
    decision = router.route(MESSAGES)
    assert decision.model == MODEL, f"the registry now routes 'hi' to {decision.model}"
    # satisfice on a client of httpx's own pool (configure(http=...)) and on aiohttp
    httpx_client = httpx.AsyncClient(limits=httpx.Limits(max_connections=cfg.max_connections))
    httpx_router = Router(bench_registry(url)).configure(http=httpx_client)
    calls: dict[str, Call] = {
        "direct httpx": direct_call(default_client, url),
        "direct httpx + satisfice pool": direct_call(tuned_client, url),
    }
    routers = [router, httpx_router]
    clients = [default_client, tuned_client, httpx_client]
    if aio_client is not None:
        clients.append(aio_client)
        calls["direct httpx + aiohttp"] = direct_call(aio_client, url)
    calls["satisfice chat()"] = satisfice_call(router)
    calls["satisfice chat() on httpx pool"] = satisfice_call(httpx_router)
    if aio_client is not None:
        own_client = aiohttp_client(cfg)  # a client of its own, as the router's would be
        assert own_client is not None
        clients.append(own_client)
        aio_router = Router(bench_registry(url)).configure(http=own_client)
        routers.append(aio_router)
        calls["satisfice chat() on aiohttp"] = satisfice_call(aio_router)
    lite = litellm_call(url)
    if lite is not None:
        calls["LiteLLM Router"] = lite[0]
    # warm up every path (connections, imports, caches)
    for call in calls.values():
        await run(call, 256, CONCURRENCY)
        await run(call, 64, 1)
    # Interleave the contenders round by round so drift on the machine hits all alike.
    results: dict[tuple[str, int], tuple[list[float], float]] = {}
    cpu: dict[str, float] = {}  # client CPU seconds of the sequential cells
    wide = ("direct httpx + satisfice pool", "satisfice chat()")  # also at WIDE concurrent
    for _ in range(rounds):
        for conc in (1, CONCURRENCY, WIDE):
            for name, call in calls.items():
                if conc == WIDE and name not in wide:
                    continue
                c = time.process_time()
                lat, wall = await run(call, n if conc > 1 else n // 2, conc)
                if conc == 1:
                    cpu[name] = cpu.get(name, 0.0) + time.process_time() - c
                prev = results.get((name, conc), ([], 0.0))
                results[name, conc] = (prev[0] + lat, prev[1] + wall)
    overhead = []
    for _ in range(n // 2):
        overhead.append((await router.chat(MESSAGES)).overhead_s)
    for r in routers:
        await r.aclose()
    for c in clients:  # the routers do not close a client they were given
        await c.aclose()

    rows = []
    base = {c: results["direct httpx", c] for c in (1, CONCURRENCY)}
    for conc in (1, CONCURRENCY):  # the WIDE cells are summarised below the table
        b_lat, b_wall = base[conc]
        b50, b99 = pct(b_lat, 0.5), pct(b_lat, 0.99)
        b_rps = len(b_lat) / b_wall
        for name in calls:
            lat, wall = results[name, conc]
            p50, p99 = pct(lat, 0.5), pct(lat, 0.99)
            rps = len(lat) / wall
            base_row = name == "direct httpx"
            rows.append(
                [
                    "sequential" if conc == 1 else f"{conc} concurrent",
                    name,
                    f"{p50 * 1e3:.3f}",
                    f"{p99 * 1e3:.3f}",
                    "—" if base_row else f"{(p50 - b50) * 1e3:+.3f}",
                    "—" if base_row else f"{(p99 - b99) * 1e3:+.3f}",
                    f"{rps:,.0f}",
                    f"{rps / b_rps:.2f}",
                ]
            )
    seq = rounds * (n // 2)
    own = {
        "cpu_direct_us": cpu["direct httpx + satisfice pool"] / seq * 1e6,
        "cpu_chat_us": cpu["satisfice chat()"] / seq * 1e6,
        "wide_ratio": (
            len(results["satisfice chat()", WIDE][0]) / results["satisfice chat()", WIDE][1]
        )
        / (
            len(results["direct httpx + satisfice pool", WIDE][0])
            / results["direct httpx + satisfice pool", WIDE][1]
        ),
        "overhead_p50_ms": statistics.median(overhead) * 1e3,
        "overhead_p99_ms": pct(overhead, 0.99) * 1e3,
    }
    for conc in (1, CONCURRENCY):  # satisfice minus the same call on the same transport
        same = results["direct httpx + satisfice pool", conc][0]
        tw = results["satisfice chat()", conc][0]
        own[f"same_transport_p50_ms_{conc}"] = (pct(tw, 0.5) - pct(same, 0.5)) * 1e3
        own[f"same_transport_p99_ms_{conc}"] = (pct(tw, 0.99) - pct(same, 0.99)) * 1e3
    return rows, own


def table(rows: list[list[str]]) -> str:
    head = [
        "load",
        "client",
        "p50 ms",
        "p99 ms",
        "added p50 ms",
        "added p99 ms",
        "req/s",
        "throughput vs direct",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    warm_tokenizers()
    ap.add_argument("--n", type=int, default=3200, help="requests per concurrent cell per round")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if args.n < WIDE:  # (a cell of fewer requests than its concurrency had divided by zero)
        ap.error(f"--n must be at least {WIDE}, the widest cell's concurrency")
    with upstream() as url:
        rows, own = asyncio.run(measure(url, args.n, args.rounds))
    cmd = (
        "python benches/bench_overhead.py"
        + (f" --n {args.n}" if args.n != 3200 else "")
        + (f" --rounds {args.rounds}" if args.rounds != 2 else "")
    )
    print(
        f"`{cmd}` ({os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"httpx {httpx.__version__})\n"
    )
    print(table(rows))
    print(
        f"\nsatisfice `chat()` minus a direct call on the same transport: sequential "
        f"p50 {own['same_transport_p50_ms_1']:+.3f} ms, p99 {own['same_transport_p99_ms_1']:+.3f}"
        f" ms; {CONCURRENCY} concurrent p50 {own[f'same_transport_p50_ms_{CONCURRENCY}']:+.3f}"
        f" ms, p99 {own[f'same_transport_p99_ms_{CONCURRENCY}']:+.3f} ms. "
        f"satisfice's own accounting (`ChatResult.overhead_s`: routing, request encoding, "
        f"answer parsing, fallback logic, accounting): p50 {own['overhead_p50_ms']:.3f} ms, "
        f"p99 {own['overhead_p99_ms']:.3f} ms.\n\n"
        f"Client CPU per sequential request on the same transport: direct "
        f"{own['cpu_direct_us']:.0f} µs, `chat()` {own['cpu_chat_us']:.0f} µs, so satisfice's "
        f"own CPU is {own['cpu_chat_us'] - own['cpu_direct_us']:+.0f} µs "
        f"(`overhead_s` p50 is {own['overhead_p50_ms'] * 1e3:.0f} µs of wall time). "
        f"At {WIDE} concurrent, `chat()` throughput is {own['wide_ratio']:.2f}× the same "
        f"transport driven directly."
    )


# -- pytest-benchmark (sequential, one request per round) ----------------------------------
try:
    import pytest
except ImportError:  # the script above needs no pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture(scope="module")
    def bench_url() -> Iterator[str]:
        with upstream() as url:
            yield url

    @pytest.fixture
    def loop() -> Iterator[asyncio.AbstractEventLoop]:
        lp = asyncio.new_event_loop()
        yield lp
        lp.close()

    def _bench(benchmark: Any, loop: asyncio.AbstractEventLoop, call: Call) -> None:
        for _ in range(50):  # warm the connection and caches
            loop.run_until_complete(call())
        text = benchmark(lambda: loop.run_until_complete(call()))
        assert text.startswith("answer from")

    def test_direct_httpx(benchmark: Any, loop: asyncio.AbstractEventLoop, bench_url: str) -> None:
        client = httpx.AsyncClient()
        _bench(benchmark, loop, direct_call(client, bench_url))
        loop.run_until_complete(client.aclose())

    def test_satisfice_chat(
        benchmark: Any, loop: asyncio.AbstractEventLoop, bench_url: str
    ) -> None:
        router = Router(patch_registry(Registry.default(), bench_url))
        _bench(benchmark, loop, satisfice_call(router))
        loop.run_until_complete(router.aclose())

    def test_litellm_router(
        benchmark: Any, loop: asyncio.AbstractEventLoop, bench_url: str
    ) -> None:
        lite = litellm_call(bench_url)
        if lite is None:
            pytest.skip("litellm is not installed")
        _bench(benchmark, loop, lite[0])


if __name__ == "__main__":
    main()
