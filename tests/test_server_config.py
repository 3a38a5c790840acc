"""`satisfice serve --config FILE`: every wrong field is a ConfigError naming it, found when the
file is read (several raised raw Python errors, or failed only as the server started)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from satisfice.errors import ConfigError
from satisfice.server import ServerConfig
from satisfice.server._http import DRAIN_S

BAD = [
    ("[server]\nshutdown_grace_s = inf\n", "shutdown_grace_s"),
    ("[server]\nshutdown_grace_s = nan\n", "shutdown_grace_s"),
    ("[server]\nread_timeout_s = 0\n", "read_timeout_s"),
    ('[server]\nread_timeout_s = "30"\n', "read_timeout_s"),
    ("[server]\nport = 70000\n", "port"),
    ("[server]\nwhat = 1\n", "unknown field"),
    ('[registry]\nrefresh = { source = "nope" }\n', "refresh.source"),
    ("[registry]\nrefresh = { source = 5 }\n", "refresh.source"),
    ('[registry]\nrefresh = { source = "litellm", max_ratio = "x" }\n', "refresh.max_ratio"),
    ('[registry]\nrefresh = { source = "litellm", location = 5 }\n', "refresh.location"),
    ('[state]\nbackend = "redis"\nredis_url = 5\n', "redis_url"),
    ('[state]\nbackend = "redis"\nredis_url = "notaurl"\n', "redis_url"),
    ('[state]\nbackend = "etcd"\n', "backend"),
    # redis-py refused these only at start-up, with a raw ValueError; /notadb served db 0
    ('[state]\nbackend = "redis"\nredis_url = "redis://127.0.0.1:99999/0"\n', "redis_url.*port"),
    ('[state]\nbackend = "redis"\nredis_url = "redis://127.0.0.1:port/0"\n', "redis_url.*port"),
    ('[state]\nbackend = "redis"\nredis_url = "redis://h:6379/notadb"\n', "redis_url.*database"),
    ('[state]\nbackend = "redis"\nredis_url = "redis://[::1:6379/0"\n', "redis_url.*host or port"),
    # an option redis-py's connection does not take made every state call a 500 (TypeError);
    # one it cannot read ended start-up with a traceback
    (
        '[state]\nbackend = "redis"\nredis_url = "redis://:pw@h:6379/0?ssl_cert_reqs=none"\n',
        "redis_url: an option .* 'ssl_cert_reqs'",
    ),
    (
        '[state]\nbackend = "redis"\nredis_url = "redis://:pw@h:6379/0?max_connections=abc"\n',
        "redis_url: Invalid value for 'max_connections'",
    ),
    (
        '[state]\nbackend = "redis"\nredis_url = "redis://:pw@h:6379/0?timeout=zz"\n',
        "redis_url: Invalid value for 'timeout'",
    ),
    (
        '[state]\nbackend = "redis"\nredis_url = "rediss://:pw@h:6379/0?ssl_cert_reqs=bogus"\n',
        "redis_url: Invalid SSL Certificate",
    ),
    (
        '[state]\nbackend = "redis"\nredis_url = "redis://h:6379/0?protocol=9"\n',
        "redis_url: protocol must be",
    ),
    (
        '[state]\nbackend = "redis"\nredis_url = "unix:///tmp/r.sock?foo=1"\n',
        "redis_url: an option .* 'foo'",
    ),
    # taken by redis-py, but satisfice could not work with them: every read failed, or
    # Redis looked down for good
    (
        '[state]\nbackend = "redis"\nredis_url = "redis://h:6379/0?decode_responses=true"\n',
        "redis_url: decode_responses must be false or left out",
    ),
    (
        '[state]\nbackend = "redis"\nredis_url = "redis://h:6379/0?health_check_interval=-5"\n',
        "redis_url: health_check_interval must not be negative",
    ),
    (
        '[state]\nbackend = "redis"\nredis_url = "redis://h:6379/0?socket_timeout=-1"\n',
        "redis_url: socket_timeout must be a positive",
    ),
    (
        '[state]\nbackend = "redis"\nredis_url = "redis://h:6379/0?socket_connect_timeout=0"\n',
        "redis_url: socket_connect_timeout must be a positive",
    ),
    (
        '[state]\nbackend = "redis"\nredis_url = "redis://h:6379/0?max_connections=0"\n',
        "redis_url: max_connections must be at least 1",
    ),
    # a URL without backend = "redis" was ignored: replicas shared nothing
    ('[state]\nredis_url = "redis://127.0.0.1:6379/0"\n', "redis_url is set but"),
    ("[probe]\ninterval_s = -1\n", "interval_s"),
    # accepted, and the catalogue was fetched back to back
    ('[registry]\nrefresh = { source = "litellm", interval_s = 1e-300 }\n', "at least 60"),
]


@pytest.mark.parametrize(("toml", "field"), BAD, ids=[b[1] + ":" + b[0][:30] for b in BAD])
def test_a_bad_field_is_named(toml: str, field: str, tmp_path: Path) -> None:
    p = tmp_path / "satisfice.toml"
    p.write_text(toml)
    with pytest.raises(ConfigError, match=field):
        ServerConfig.load(p)


def test_files_that_cannot_be_read(tmp_path: Path) -> None:
    p = tmp_path / "satisfice.toml"
    p.write_bytes(b"\xff\xfe[server]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        ServerConfig.load(p)
    with pytest.raises(ConfigError, match="cannot be read"):
        ServerConfig.load(tmp_path)
    p.write_text(f'[probe]\nhealth_file = "{tmp_path}"\n')
    with pytest.raises(ConfigError, match="health_file .* is a directory"):
        ServerConfig.load(p)


def test_a_redis_url_is_not_echoed_in_its_error(tmp_path: Path) -> None:
    """It may hold Redis's password."""
    p = tmp_path / "satisfice.toml"
    p.write_text('[state]\nbackend = "redis"\nredis_url = "redis://:s3cret-pw@h:99999/0"\n')
    with pytest.raises(ConfigError) as e:
        ServerConfig.load(p)
    assert "s3cret" not in str(e.value)


@pytest.mark.parametrize(
    ("aliases", "word"),
    [
        ({"auto": {"quality_floor": 0.5}}, "the router"),
        ({"gpt-oss-120b": {"quality_floor": 0.5}}, "a model"),
        ({"cheap": {"allow": ["no-such-model"]}}, "allow names models"),
    ],
)
def test_an_alias_hides_no_model_and_names_only_known_ones(
    aliases: dict[str, dict[str, object]], word: str
) -> None:
    """All three were accepted: the alias answered where the model was asked for, or an
    alias allowing only unknown models failed every request."""
    from satisfice.server import create_app

    with pytest.raises(ConfigError, match=word):
        create_app(ServerConfig(aliases=aliases))


def test_a_fractional_shutdown_grace_is_rounded_up_not_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uvicorn takes whole seconds: int() had made a grace of 0.9 s none at all (and the cut's
    last bytes get DRAIN_S more to reach their clients)."""
    import uvicorn

    from satisfice.server import listen, serve

    seen: list[Any] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, **kw: seen.append(self.config))
    serve(ServerConfig(shutdown_grace_s=0.9), sockets=listen("127.0.0.1", 0))
    assert seen[0].timeout_graceful_shutdown == 1 + DRAIN_S


def test_serve_joins_an_answers_head_and_body_in_one_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import uvicorn

    from satisfice.server import listen, serve
    from satisfice.server._http import http_protocol

    seen: list[Any] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, **kw: seen.append(self.config))
    serve(ServerConfig(), sockets=listen("127.0.0.1", 0))
    assert seen[0].http is not None and seen[0].http != "auto"  # httptools is installed
    assert http_protocol() != "auto"


async def test_writes_are_held_until_the_next_one_or_the_end_of_the_step() -> None:
    """Head and body: one writev. A lone write (a stream's piece, a HEAD's head) goes out
    at the end of the loop's step; close() sends what is held first, abort() drops it."""
    import asyncio

    from satisfice.server._http import _OneWrite

    class Sock:
        def __init__(self) -> None:
            self.out: list[tuple[str, bytes]] = []
            self.closed = False

        def write(self, b: bytes) -> None:
            self.out.append(("write", b))

        def writelines(self, bs: Any) -> None:
            self.out.append(("writev", b"|".join(bs)))

        def is_closing(self) -> bool:
            return self.closed

        def close(self) -> None:
            self.closed = True

        def abort(self) -> None:
            self.closed = True

        def get_write_buffer_size(self) -> int:
            return 0

        def get_extra_info(self, name: str) -> str:
            return name

    loop = asyncio.get_running_loop()
    s = Sock()
    t = _OneWrite(s, loop)  # type: ignore[arg-type]
    t.write(b"head")
    assert s.out == [] and t.get_write_buffer_size() == 4
    t.write(b"body")
    assert s.out == [("writev", b"head|body")]
    await asyncio.sleep(0)
    assert s.out == [("writev", b"head|body")]  # the step's flush finds nothing held
    t.write(b"piece")
    await asyncio.sleep(0)
    assert s.out[-1] == ("write", b"piece")
    t.write(b"last")
    t.close()
    assert s.out[-1] == ("write", b"last") and s.closed
    await asyncio.sleep(0)
    assert len(s.out) == 3
    s2 = Sock()
    t2 = _OneWrite(s2, loop)  # type: ignore[arg-type]
    t2.write(b"x")
    t2.abort()
    await asyncio.sleep(0)
    assert s2.out == [] and t2.get_extra_info("peername") == "peername"


def test_an_alias_may_allow_a_single_model_id() -> None:
    """allow = "gpt-5.4-nano" (Constraints takes one id) was refused, naming its letters."""
    from satisfice.server import create_app

    create_app(ServerConfig(aliases={"nano": {"allow": "gpt-5.4-nano"}}))
    with pytest.raises(ConfigError, match=r"names models the registry lacks: \['nope'\]"):
        create_app(ServerConfig(aliases={"nope": {"deny": "nope"}}))


def test_a_file_the_server_writes_needs_its_directory(tmp_path: Path) -> None:
    """A health file in a missing directory failed after the probe's paid calls."""
    p = tmp_path / "satisfice.toml"
    p.write_text(f'[probe]\nhealth_file = "{tmp_path}/missing/h.json"\n')
    with pytest.raises(ConfigError, match="health_file .*directory does not exist"):
        ServerConfig.load(p)


@pytest.mark.parametrize(("argv", "says"), [
    (["--port", "99999"], r"\[server\].port \(--port\) must be an integer in \[0, 65535\]"),
    (["--port", "-1"], r"--port"),
    (["--host", ""], r"\[server\].host \(--host\)"),
])  # fmt: skip
def test_serve_checks_its_host_and_port_options(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--port 99999 bound a port of the system's choosing, announced as 99999."""
    import re

    from satisfice.cli import main

    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert re.search(says, err) and "Traceback" not in err, err


def test_files_saved_with_a_byte_order_mark_are_read(tmp_path: Path) -> None:
    """Editors on Windows save UTF-8 with a BOM; tomllib and json refused the file."""
    from satisfice import Policy, Registry

    cfg = tmp_path / "s.toml"
    cfg.write_bytes(b"\xef\xbb\xbf[server]\nport = 4100\nread_timeout_s = 5\n")
    c = ServerConfig.load(cfg)
    assert (c.port, c.read_timeout_s) == (4100, 5.0)
    reg = tmp_path / "r.toml"
    reg.write_bytes(b"\xef\xbb\xbf" + Registry.default().to_toml().encode())
    assert len(Registry.load(reg)) == len(Registry.default())
    pol = tmp_path / "p.json"
    pol.write_bytes(b"\xef\xbb\xbf" + b'{"quality_floor": 0.7}')
    assert Policy.load(pol).quality_floor == 0.7


def test_a_json_registry_is_read_as_json(tmp_path: Path) -> None:
    """The bundled registry is JSON; a copy of it had been read as TOML and refused."""
    from satisfice import Registry

    default = Registry.default()
    j = tmp_path / "models.json"
    j.write_text(default.to_json())
    assert Registry.load(j).to_dict() == default.to_dict()
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold a table of models"):
        Registry.load(tmp_path / "list.json")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ConfigError, match="list.json|bad.json is not valid JSON"):
        Registry.load(tmp_path / "bad.json")
    misnamed = tmp_path / "models.txt"
    misnamed.write_text(default.to_json())
    with pytest.raises(ConfigError, match=r"not valid TOML.*name must end in \.json"):
        Registry.load(misnamed)
    cfg = tmp_path / "s.toml"
    cfg.write_text(f'[registry]\npath = "{j}"\n')
    from satisfice.server import create_app

    app = create_app(ServerConfig.load(cfg))
    assert len(app.state.service.router.registry) == len(default)


def test_a_redis_url_without_redis_py_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The URL's check had imported redis-py unguarded: a ModuleNotFoundError at load."""
    import sys

    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    p = tmp_path / "satisfice.toml"
    p.write_text('[state]\nbackend = "redis"\nredis_url = "redis://127.0.0.1:6379/0"\n')
    with pytest.raises(ConfigError, match="needs redis-py: pip install redis"):
        ServerConfig.load(p)


def test_redis_url_options_that_say_the_default_are_taken() -> None:
    """decode_responses=false had been refused as if it were true (the URL's string)."""
    from satisfice.server.config import _redis_url

    for q in ("decode_responses=false", "decode_responses=0", "health_check_interval=0"):
        assert _redis_url(f"redis://127.0.0.1:6379/0?{q}")


def test_settings_that_would_run_but_not_as_configured_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: probes every 1e-300 s ran back to back (paid calls); a probe budget
    without an interval bounded nothing; a refresh from a file that is not there failed
    only in the log after "serving"; keys required with no master key (memory state) made
    a server that refused every request and could never make a key."""
    from satisfice.server import create_app

    cases = {
        "[probe]\ninterval_s = 1e-300\n": r"\[probe\].interval_s must be at least 60",
        "[probe]\nbudget_usd = 0.5\n": r"\[probe\].budget_usd is set but \[probe\].interval_s",
        '[registry]\nrefresh = { source = "litellm", location = "nope/map.json" }\n':
            r"\[registry\].refresh.location .*nope/map.json.* is not a file",
    }  # fmt: skip
    for text, word in cases.items():
        cfg = tmp_path / "s.toml"
        cfg.write_text(text)
        with pytest.raises(ConfigError, match=word):
            ServerConfig.load(cfg)
    # read from the config file's folder, as [registry].path is, wherever the server starts
    (tmp_path / "map.json").write_text("{}")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg.write_text('[registry]\nrefresh = { source = "litellm", location = "map.json" }\n')
    assert ServerConfig.load(cfg).refresh["location"] == str(tmp_path / "map.json")  # type: ignore[index]
    cfg.write_text("[probe]\ninterval_s = 600\nbudget_usd = 0.5\n")
    assert ServerConfig.load(cfg).probe_interval_s == 600
    monkeypatch.delenv("SATISFICE_MASTER_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"SATISFICE_MASTER_KEY .*is not set"):
        create_app(ServerConfig(require_keys=True))
    create_app(ServerConfig(require_keys=True, state_backend="redis",
                            redis_url="redis://127.0.0.1:9/0"))  # fmt: skip
    monkeypatch.setenv("SATISFICE_MASTER_KEY", "k" * 32)
    create_app(ServerConfig(require_keys=True))


def test_a_short_master_key_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3-character master key had been taken for the admin API (which makes keys, sets
    budgets and reloads the registry), where an upstream key under 8 characters is refused.
    Under 16 characters it is a ConfigError at start, saying how to make one."""
    from satisfice.server import create_app

    monkeypatch.setenv("SATISFICE_MASTER_KEY", "abc")
    with pytest.raises(ConfigError, match="at least 16") as e:
        create_app(ServerConfig())
    assert "abc" not in str(e.value)  # (a key is never said)
    monkeypatch.setenv("SATISFICE_MASTER_KEY", "k" * 16)
    create_app(ServerConfig())
