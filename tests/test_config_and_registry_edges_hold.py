"""How satisfice loads and changes its registry, prices and config, as an operator hits
them, as reviewed. Every test here failed on the code it was written against; each
docstring says the defect and what should hold instead."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SECRET = "S3cretPw99zz"


def _cli(*argv: str, cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """`satisfice ARGV` in a child process, as an operator runs it."""
    code = "import sys; from satisfice.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ},
    )


@pytest.mark.parametrize(
    "toml",
    [
        '[ledger]\ntarget = "led\\u0000ger.db"\n',
        '[registry]\npath = "models\\u0000.toml"\n',
        '[policy]\npath = "policy\\u0000.json"\n',
    ],
    ids=["ledger", "registry", "policy"],
)
def test_a_config_path_with_a_nul_is_a_config_error(tmp_path: Path, toml: str) -> None:
    """Defect: a satisfice.toml whose [ledger].target, [registry].path or [policy].path holds
    a NUL (a TOML "\\u0000" escape; valid TOML) makes `satisfice serve --config` die with a
    raw Python traceback ending "ValueError: embedded null byte" (exit 1), not the config
    error that names the field. Expected: "satisfice serve: error: ..." naming the field,
    exit code 2, no traceback (README: "every field is checked; an error names it")."""
    cfg = tmp_path / "satisfice.toml"
    cfg.write_text(toml)
    r = _cli("serve", "--config", str(cfg), "--port", "0", cwd=tmp_path)
    assert "Traceback" not in r.stderr, r.stderr[-600:]
    assert r.returncode == 2, (r.returncode, r.stderr[-400:])
    assert "satisfice serve: error:" in r.stderr


def test_a_ledger_url_of_another_scheme_is_refused_without_its_password(tmp_path: Path) -> None:
    """Defect: [ledger].target = "postgresql+psycopg://app:<password>@host/db" (the DSN form
    SQLAlchemy users copy) is not a postgresql:// URL, so it is opened as a SQLite path and
    `satisfice serve` prints "error: cannot open the ledger
    postgresql+psycopg:/app:S3cretPw99zz@127.0.0.1:1/db: unable to open database file":
    the database password in the terminal and any log that captures it (ServerConfig keeps
    `ledger` out of its repr precisely because it may hold a password). Expected: the
    error never holds the URL's password."""
    cfg = tmp_path / "satisfice.toml"
    cfg.write_text(f'[ledger]\ntarget = "postgresql+psycopg://app:{SECRET}@127.0.0.1:1/db"\n')
    r = _cli("serve", "--config", str(cfg), "--port", "0", cwd=tmp_path)
    assert r.returncode != 0
    assert SECRET not in r.stderr + r.stdout, r.stderr[-400:]


def test_the_config_repr_hides_the_refresh_locations_credentials(tmp_path: Path) -> None:
    """Defect: repr(ServerConfig) prints [registry].refresh.location whole, e.g.
    "refresh={'source': 'openrouter', 'location':
    'https://bot:S3cretPw99zz@catalog.example/models?token=...'}", while the same class
    hides redis_url and ledger from its repr because they may hold a password, and README
    promises "a catalogue URL is printed without its user, password and query".
    Expected: neither the URL's password nor its query token appears in the repr."""
    from satisfice.server import ServerConfig

    cfg = tmp_path / "satisfice.toml"
    cfg.write_text(
        '[registry]\nrefresh = { source = "openrouter", location = '
        f'"https://bot:{SECRET}@catalog.example/models?token=TOK{SECRET}" }}\n'
    )
    shown = repr(ServerConfig.load(cfg))
    assert SECRET not in shown, shown


def _catalogue(tmp_path: Path, usd_per_token_in: float, usd_per_token_out: float) -> Path:
    cat = tmp_path / "litellm.json"
    cat.write_text(json.dumps({"gpt-x": {
        "mode": "chat", "litellm_provider": "openai",
        "input_cost_per_token": usd_per_token_in, "output_cost_per_token": usd_per_token_out,
    }}))  # fmt: skip
    return cat


def test_a_refresh_refuses_a_1000x_move_of_a_whole_dollar_price(
    tmp_path: Path,
) -> None:
    """Defect: a registry built in Python with whole-dollar prices, Price(3, 15) (Price is a
    public class), keeps them as ints, and Diff.absurd() only compares floats
    (`isinstance(old, float)`), so RegistryRefresher applies a catalogue that moves the
    price from $3/$15 to $3000/$15000 per 1M (observed: refresh() returns, router's
    price.input == 3000.0, refused == 0). The same registry with Price(3.0, 15.0) is
    refused. Expected: a >10x move is refused (RefreshRefused) and the router keeps $3."""
    from satisfice import Router
    from satisfice.refresh import RefreshRefused, RegistryRefresher
    from satisfice.registry import Deployment, ModelSpec, Price, Registry

    dep = Deployment("openai", "openai", "http://127.0.0.1:9/v1", "gpt-x", "OPENAI_API_KEY")
    reg = Registry([ModelSpec("gpt-x", "openai", 128000, 16000, price=Price(3, 15),
                              deployments=(dep,))])  # fmt: skip
    router = Router(registry=reg)
    refresher = RegistryRefresher(router, "litellm", str(_catalogue(tmp_path, 3e-3, 15e-3)))

    async def go() -> None:
        with pytest.raises(RefreshRefused):
            await asyncio.wait_for(refresher.refresh(), 30)

    try:
        asyncio.run(go())
    finally:
        assert router.registry["gpt-x"].price.input == 3, router.registry["gpt-x"].price


def test_registry_update_writes_toml_from_a_json_registry_with_a_null_meta(tmp_path: Path) -> None:
    """Defect: a JSON registry whose [meta] holds a null (e.g. "reference_model": null,
    which Registry.load takes as no reference) loads and routes, but `satisfice registry
    update --from litellm CAT --registry r.json --out new.toml` dies with a raw traceback
    "TypeError: Object of type 'NoneType' is not TOML serializable" after printing the
    diff. Expected: the TOML is written (the null left out), or a one-line
    "satisfice registry: error: ..." with exit code 2; never a traceback."""
    reg = {
        "meta": {"reference_model": None, "prices_as_of": "2025-01-01"},
        "model": [{
            "id": "gpt-x", "provider": "openai", "context_window": 128000, "max_output": 16000,
            "price": {"input": 3.0, "output": 15.0},
            "deployments": [{"name": "openai", "api": "openai",
                             "base_url": "https://api.openai.com/v1",
                             "api_key_env": "OPENAI_API_KEY", "model": "gpt-x"}],
        }],
    }  # fmt: skip
    (tmp_path / "r.json").write_text(json.dumps(reg))
    from satisfice.registry import Registry

    Registry.load(tmp_path / "r.json")  # the file is a valid registry
    cat = _catalogue(tmp_path, 3.5e-6, 15e-6)
    r = _cli("registry", "update", "--from", "litellm", str(cat), "--registry", "r.json",
             "--out", "new.toml", cwd=tmp_path)  # fmt: skip
    assert "Traceback" not in r.stderr, r.stderr[-600:]
    assert r.returncode in (0, 2), r.stderr[-300:]


def test_the_refresh_timeout_the_log_names_can_be_set_in_the_config(
    tmp_path: Path,
) -> None:
    """Defect: when a catalogue download is slow, the server logs "GET ...: not downloaded
    within 30s; raise the refresh's timeout_s or use a faster mirror", but
    `[registry].refresh = { source = "litellm", timeout_s = 120 }` is refused at start:
    "[registry].refresh must be { source = ..., location = ..., interval_s = 3600,
    max_ratio = 10 }". A server operator cannot follow the advice. Expected: the config
    takes refresh.timeout_s (checked like interval_s) and hands it to the refresher."""
    from satisfice.server import ServerConfig

    cfg = tmp_path / "satisfice.toml"
    cfg.write_text('[registry]\nrefresh = { source = "litellm", timeout_s = 120 }\n')
    c = ServerConfig.load(cfg)
    assert c.refresh is not None and c.refresh.get("timeout_s") == 120


def test_a_master_key_with_a_trailing_newline_is_trimmed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Defect: SATISFICE_MASTER_KEY set with a trailing newline (a Kubernetes secret or an
    env file written with `echo`) is taken as is: the server starts, but the admin API
    compares the caller's stripped Bearer token with the unstripped variable, so every
    /admin request with the right key is a 401 "the admin API needs the master key"
    (observed: POST /admin/keys -> 401), and nothing says why. Provider keys read from the
    environment are stripped ("HTTP trims it: so do we"). Expected: the key is trimmed as
    provider keys are (POST /admin/keys -> 201), or the server refuses to start saying
    the variable holds whitespace."""
    import httpx

    from satisfice.errors import ConfigError
    from satisfice.server import ServerConfig

    from .server_support import running

    key = "master-key-0123456789abcdefghij"
    monkeypatch.setenv("SATISFICE_MASTER_KEY", key + "\n")
    try:
        with running(ServerConfig()) as (url, _app):
            r = httpx.post(url + "/admin/keys", json={"name": "ci"},
                           headers={"authorization": f"Bearer {key}"}, timeout=10)  # fmt: skip
    except ConfigError as e:  # refused at start, saying so: also fine
        assert "SATISFICE_MASTER_KEY" in str(e)
        return
    assert r.status_code == 201, (r.status_code, r.text)


@pytest.mark.parametrize(
    ("toml", "said"),
    [
        ('[aliases]\n"" = { quality_floor = 0.5 }\n', "it is empty"),
        ('[aliases]\n"cheap " = { quality_floor = 0.5 }\n', "spaces"),
        ('[aliases]\n"che\\u0007ap" = { quality_floor = 0.5 }\n', "control"),
        ("[server]\nread_timeout_s = 1e-300\n", r"read_timeout_s must be a number in \[1,"),
    ],
    ids=["empty-alias", "spaced-alias", "control-alias", "read-timeout"],
)
def test_a_config_value_no_request_could_use_is_refused(
    tmp_path: Path, toml: str, said: str
) -> None:
    """Defect: an alias named "" or "cheap " or with a control character loaded (a model
    id is refused for each: callers send it as `model`, metrics and logs print it), and a
    [server].read_timeout_s of 1e-300 was taken (every request would be a 408).
    Expected: a ConfigError naming the field."""
    from satisfice.errors import ConfigError
    from satisfice.server import ServerConfig

    cfg = tmp_path / "satisfice.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError, match=said):
        ServerConfig.load(cfg)


def test_a_registry_file_says_what_it_cannot_mean(tmp_path: Path) -> None:
    """Defect: a JSON registry naming "input" twice in one price silently took the last
    (TOML refuses a repeated key); `provider = ["x"]` was read as the text "['x']"; and a
    per-token price written where USD per 1M tokens go ($2.5e-06) loaded without a word,
    making the model a million times too cheap. Expected: the first two are ConfigErrors
    naming the file or model; the third is in `attention()` (a RegistryWarning at load)."""
    from satisfice.errors import ConfigError
    from satisfice.registry import Registry

    model = {"id": "m", "provider": "openai", "context_window": 1000, "max_output": 100}
    twice = tmp_path / "twice.json"
    twice.write_text(
        '{"model": [{"id": "m", "provider": "openai", "context_window": 1000, '
        '"max_output": 100, "price": {"input": 3, "input": 0.3, "output": 1}}]}'
    )
    with pytest.raises(ConfigError, match=r"twice\.json.*'input' is given twice"):
        Registry.load(twice)
    with pytest.raises(ConfigError, match="provider must be a string"):
        Registry.from_dict({"model": [{**model, "provider": ["x"]}]})
    tiny = Registry.from_dict({"model": [{**model, "price": {"input": 2.5e-6, "output": 1e-5}}]})
    assert any("per 1M tokens" in n and "'m'" in n for n in tiny.attention()), tiny.attention()


def test_a_catalogue_price_with_one_side_at_zero_is_unpriced(tmp_path: Path) -> None:
    """Defect: a catalogue entry with a paid input and a $0 output (the LiteLLM map lists
    one) was imported with free output: its answers billed $0. A catalogue's 0 means "not
    listed" (both at 0 was already unpriced). Expected: the model is unpriced."""
    from satisfice import sources

    cat = sources.parse_litellm({"gpt-x": {
        "mode": "chat", "litellm_provider": "openai",
        "input_cost_per_token": 3e-6, "output_cost_per_token": 0,
    }})  # fmt: skip
    listing = cat.find("gpt-x")
    assert listing is not None, cat.listings
    assert listing.price is None, listing.price


@pytest.mark.parametrize("name", ["r.json", "r.toml"])
def test_a_registry_file_with_an_integer_past_pythons_digits_is_a_config_error(
    tmp_path: Path, name: str
) -> None:
    """Defect: a registry file holding an integer of more than 4,300 digits (valid JSON and
    TOML) made `Registry.load` raise a raw ValueError ("Exceeds the limit (4300 digits) for
    integer string conversion"): `_read` caught only the parser's own error. Expected: a
    ConfigError naming the file, as for any other unreadable registry."""
    from satisfice.errors import ConfigError
    from satisfice.registry import Registry

    big = "9" * 5000
    path = tmp_path / name
    if name.endswith(".json"):
        path.write_text(f'{{"model": [{{"id": "m", "context_window": {big}}}]}}')
    else:
        path.write_text(f'[[model]]\nid = "m"\ncontext_window = {big}\n')
    with pytest.raises(ConfigError, match=rf"registry file .*{name} is not valid"):
        Registry.load(path)


@pytest.mark.parametrize(
    ("where", "said"),
    [("successor", "model 'm': successor"),
     ("wire", r"model 'm'\.deployments\[0\]: model \(the id sent on the wire\)"),
     ("deployment", r"model 'm'\.deployments\[0\]: name"),
     ("provider", "model 'm': provider")],
)  # fmt: skip
def test_a_lone_surrogate_in_a_registry_is_refused_naming_the_field(
    tmp_path: Path, where: str, said: str
) -> None:
    """Defect: a JSON registry holding a lone surrogate ("\\ud800", valid JSON) in a model's
    successor or provider, or a deployment's name or wire model, loaded; `registry update`
    then died writing it with a raw UnicodeEncodeError, and a wire model's made every call
    fail with an error blaming the caller's messages. Expected: a ConfigError at load
    naming the field."""
    from satisfice.errors import ConfigError
    from satisfice.registry import Registry

    dep = {"name": "a", "base_url": "http://127.0.0.1:1/v1", "model": "w"}
    model = {"id": "m", "provider": "p", "context_window": 1000, "max_output": 100,
             "deployments": [dep]}  # fmt: skip
    if where == "successor":
        model["successor"] = "n\ud800"
    elif where == "provider":
        model["provider"] = "p\ud800"
    else:
        dep["model" if where == "wire" else "name"] = "w\ud800"
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"model": [model]}))  # ASCII: the surrogate as an escape
    with pytest.raises(ConfigError, match=said):
        Registry.load(path)
