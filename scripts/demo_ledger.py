"""Fill a ledger by sending the demo prompts through the bundled registry's router against
the local test upstream (canned answers; tokens counted, costs from the registry's prices),
with cascades on the reasoning prompts and feedback from a simple check. Then render it:

    python scripts/demo_ledger.py /tmp/demo.db --n 600
    satisfice report /tmp/demo.db --html /tmp/report.html
    chromium --headless --no-sandbox --screenshot=docs/img/report.png \
        --window-size=1100,1500 file:///tmp/report.html
"""

from __future__ import annotations

import argparse
import asyncio
import json
from importlib import resources

from satisfice import Registry, Router
from satisfice.testing import LocalUpstream, patch_registry, status


async def main_async(path: str, n: int) -> None:
    prompts = json.loads(
        resources.files("satisfice").joinpath("data/demo_prompts.json").read_text("utf-8")
    )
    with LocalUpstream(record=False) as up:
        router = Router(patch_registry(Registry.default(), up.url)).attach(ledger=path)
        async with router:
            for i in range(n):
                p = prompts[i % len(prompts)]
                if i % 50 == 7:  # now and then an upstream has a bad moment
                    up.script(router.registry[router.route(p).model].deployments[0].model,
                              status(503), status(503), status(503))  # fmt: skip
                res = await router.chat(p, metadata={"key": f"team-{i % 3}"})
                router.feedback(res.request_id, 0.0 if i % 9 == 0 else 1.0)
            assert router.ledger is not None
            router.ledger.flush()
    print(f"wrote {n} requests to {path}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--n", type=int, default=600)
    a = ap.parse_args()
    asyncio.run(main_async(a.path, a.n))


if __name__ == "__main__":
    main()
