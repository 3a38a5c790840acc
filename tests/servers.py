"""Real PostgreSQL and Redis servers on 127.0.0.1 for the tests that need them.

`.ci/run` installs both from Debian's packages. Where a binary is missing the tests that
need it skip, saying which package to install.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A fresh PostgreSQL cluster on a free loopback port; yields its DSN. Run as the
    `postgres` user when the tests run as root (PostgreSQL refuses root)."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    as_user: list[str] = []
    root = os.geteuid() == 0
    if root:
        as_user = ["runuser", "-u", "postgres", "--"]
    d = tempfile.mkdtemp(prefix="satisfice-pg-")
    if root:
        shutil.chown(d, "postgres", "postgres")
    port = free_port()
    data = os.path.join(d, "data")
    subprocess.run([*as_user, initdb, "-D", data, "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)  # fmt: skip
    opts = f"-p {port} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*as_user, pg_ctl, "-D", data, "-o", opts, "-l", os.path.join(d, "log"),
                    "-w", "start"], check=True, capture_output=True)  # fmt: skip
    try:
        _wait_port(port)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "immediate", "stop"],
                       capture_output=True, check=False)  # fmt: skip
        shutil.rmtree(d, ignore_errors=True)


class RedisServer:
    """redis-server on a free loopback port, stoppable and restartable on the same port."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="satisfice-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.binary is not None
        self.proc = subprocess.Popen(
            # append-only in a temporary directory: a restart keeps keys and counters
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@contextlib.contextmanager
def redis() -> Iterator[RedisServer]:
    s = RedisServer()
    s.start()
    try:
        yield s
    finally:
        s.stop()
        shutil.rmtree(s.dir, ignore_errors=True)
