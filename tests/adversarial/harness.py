"""Adversarial regression tests of `satisfice serve` (from an independent review): a
LocalUpstream in this process and a real `satisfice serve` subprocess on 127.0.0.1, its stderr
captured to a file."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from satisfice import Registry
from satisfice.testing import LocalUpstream

from ..chat_support import registry
from ..servers import free_port

MASTER = "master-adv-0123456789abcdef-SECRETMASTER"
UPKEY = "sk-upstream-SECRET-0123456789abcdefXYZ"
ADMIN = {"authorization": f"Bearer {MASTER}"}


def reg_with_key(url: str) -> Registry:
    reg = registry(url)
    models = []
    for m in reg:
        deps = tuple(d.replace(api_key_env="ADV_UPSTREAM_KEY") for d in m.deployments)
        models.append(m.replace(deployments=deps))
    return Registry(models, reg.meta)


@contextlib.contextmanager
def serve(
    up: LocalUpstream,
    extra_toml: str = "",
    env_extra: dict | None = None,
    reg_text: str | None = None,
):
    d = Path(tempfile.mkdtemp(prefix="adv-"))
    reg = d / "r.toml"
    reg.write_text(reg_text if reg_text is not None else reg_with_key(up.url).to_toml())
    cfg = d / "satisfice.toml"
    cfg.write_text(
        f'[registry]\npath = "{reg}"\n[ledger]\ntarget = "{d / "l.jsonl"}"\n' + extra_toml
    )
    port = free_port()
    env = {
        **os.environ,
        "SATISFICE_MASTER_KEY": MASTER,
        "ADV_UPSTREAM_KEY": UPKEY,
        **(env_extra or {}),
    }
    err = open(d / "stderr.log", "wb")
    p = subprocess.Popen(
        [sys.executable, "-m", "satisfice.cli", "serve", "--config", str(cfg), "--port", str(port)],
        env=env,
        stdout=err,
        stderr=err,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((d / "stderr.log").read_text()[-3000:])
            time.sleep(0.05)
        yield url, d, p
    finally:
        p.terminate()
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        err.close()


def key(url: str, **body) -> dict:
    r = httpx.post(url + "/admin/keys", headers=ADMIN, json={"name": "k", **body})
    assert r.status_code == 201, r.text
    return r.json()


def spend(url: str) -> list[dict]:
    return httpx.get(url + "/admin/spend", headers=ADMIN).json()["budgets"]
