from __future__ import annotations

import math
from pathlib import Path

import pytest

from satisfice import ConfigError, ModelSpec, Price, Registry, UnknownModelError


def test_bundled_registry_is_valid_and_dated() -> None:
    reg = Registry.default()
    assert len(reg) >= 15
    assert reg.meta["prices_as_of"]
    providers = {m.provider for m in reg}
    assert {"openai", "anthropic", "google", "mistral", "meta", "qwen", "deepseek"} <= providers
    for m in reg:
        assert m.deployments, m.id
        assert m.price is not None and m.price.output >= m.price.input * 0.5


def test_from_toml_errors_name_the_field(tmp_path: Path) -> None:
    p = tmp_path / "r.toml"
    head = '[[model]]\nid = "x"\ncontext_window = 100\nmax_output = 10\n'
    p.write_text(head + "price = {input = -1, output = 1}\n")
    with pytest.raises(ConfigError, match=r"model 'x'.price: 'input' must be a finite number"):
        Registry.from_toml(p)
    p.write_text('[[model]]\nid = "x"\ncontext_window = 100\nmax_output = 10\ncolour = "red"\n')
    with pytest.raises(ConfigError, match="unknown field"):
        Registry.from_toml(p)
    p.write_text("not = [valid")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Registry.from_toml(p)
    with pytest.raises(ConfigError, match="does not exist"):
        Registry.from_toml(tmp_path / "missing.toml")


def test_unpriced_model_has_no_cost() -> None:
    m = ModelSpec("local", "ollama", 8000, 1000)
    assert not m.priced and m.cost(100, 100) is None
    reg = Registry([m])
    assert reg.unpriced == ["local"]


def test_a_model_priced_on_its_deployments_alone_is_priced() -> None:
    """Defect: a model with no model price and a price on each deployment was listed by
    `Registry.unpriced`, had `priced` False and `cost()` None (so no reference cost, no
    demo saving), while routing priced it at its deployments' prices (it passed max_cost).
    Expected: priced, costed at its first deployment's price (as the ledger prices the
    reference's saving); one deployment unpriced leaves it unpriced (never $0)."""
    from satisfice import Deployment

    def dep(name: str, price: Price | None) -> Deployment:
        return Deployment(name, "openai", "http://127.0.0.1:9/v1", "m", price=price)

    deps = (dep("a", Price(1.0, 2.0)), dep("b", Price(3.0, 4.0)))
    both = ModelSpec("m", "openai", 8000, 1000, quality={"general": 0.9}, deployments=deps)
    half = ModelSpec(
        "h", "openai", 8000, 1000, deployments=(dep("a", Price(1.0, 2.0)), dep("b", None))
    )
    reg = Registry([both, half])
    assert both.priced and both.cost(1e6, 1e6) == 3.0
    assert not half.priced and half.cost(1e6, 1e6) is None
    assert reg.unpriced == ["h"] and reg.reference.id == "m"
    # a per-token figure given as a deployment's price is said, as on the model's
    tiny = ModelSpec("t", "openai", 8000, 1000, deployments=(dep("a", Price(2.5e-6, 1e-5)),))
    assert any("per-token" in n for n in Registry([both, tiny]).attention())


def test_duplicate_and_unknown_ids() -> None:
    m = ModelSpec("a", "p", 100, 10, price=Price(1, 1))
    with pytest.raises(ConfigError, match="twice"):
        Registry([m, m])
    with pytest.raises(UnknownModelError, match="the registry has: a"):
        Registry([m])["b"]


def test_price_tiers() -> None:
    p = Price(2.0, 8.0, cached_input=0.5)
    assert p.cost(1_000_000, 0) == pytest.approx(2.0)
    assert p.cost(1_000_000, 1_000_000, cached_in=500_000) == pytest.approx(1.0 + 0.25 + 8.0)


def test_bad_spec_values() -> None:
    with pytest.raises(ConfigError, match="tokenizer"):
        ModelSpec("a", "p", 100, 10, tokenizer="klingon")
    with pytest.raises(ConfigError, match="capabilities"):
        ModelSpec("a", "p", 100, 10, capabilities=frozenset({"telepathy"}))
    with pytest.raises(ConfigError, match="max_output exceeds"):
        ModelSpec("a", "p", 100, 1000)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"quality": 0.9}, "quality must be a table"),
        ({"quality": {"general": "high"}}, "quality must be a table"),
        ({"capabilities": 3}, "capabilities must be a list"),
        ({"price": 2.0}, "price must be a table"),
        ({"deployments": ["openai"]}, "deployments must be a list of tables"),
    ],
)
def test_wrong_types_are_config_errors(extra: dict[str, object], match: str) -> None:
    base = {"id": "x", "context_window": 100, "max_output": 10}
    with pytest.raises(ConfigError, match=match):
        Registry.from_dict({"model": [{**base, **extra}]})


@pytest.mark.parametrize(
    "kw",
    [{"input": float("nan"), "output": 1.0}, {"input": -5.0, "output": -5.0},
     {"input": 1.0, "output": 2.0, "cached_input": float("nan")},
     {"input": 1.0, "output": float("inf")}, {"input": 1.0, "output": 2.0, "per_request": -1.0},
     # a cost of 1e308 per 1M tokens overflowed to inf: "est_cost_usd": Infinity, not JSON
     {"input": 1e308, "output": 1e308}, {"input": 1.0, "output": 2.0, "reasoning": 2e5}],
)  # fmt: skip
def test_a_price_built_by_hand_is_checked_too(kw: dict[str, float]) -> None:
    """Registry files were checked; Price(...) in code was not, and billed NaN or negative
    USD that passed any cost cap."""
    with pytest.raises(ConfigError, match="finite number"):
        Price(**kw)


@pytest.mark.parametrize("ref", [["a"], {"id": "a"}, 5])
def test_a_reference_model_that_is_not_an_id_is_a_config_error(ref: object) -> None:
    base = Registry.default()
    with pytest.raises(ConfigError, match="meta.reference_model"):
        Registry(list(base), {**base.meta, "reference_model": ref})


def test_models_and_deployments_built_in_code_are_checked_as_a_file_is() -> None:
    """Deployment(...) and .replace() had no checks: a key pasted as api_key_env was taken
    and echoed in every error naming the variable, and a str price or a non-Deployment
    failed later as a raw AttributeError."""
    from satisfice.registry import Deployment, Effort

    key = "sk-proj-" + "a1B2c3D4e5" * 4
    m = next(m for m in Registry.default() if m.deployments and m.base is None)
    dep = m.deployments[0]
    bad = ({"api_key_env": key}, {"api": "grpc"}, {"base_url": "ftp://x y"}, {"model": 5},
           {"model": ""}, {"p95_latency_ms": math.nan}, {"price": "free"}, {"name": 5})  # fmt: skip
    for kw in bad:
        with pytest.raises(ConfigError) as e:
            dep.replace(**kw)
        assert key not in str(e.value)
    with pytest.raises(ConfigError):
        Deployment("d", "openai", "https://x.example/v1", "m", api_key_env=key)
    for kw in ({"price": "x"}, {"deployments": (5,)}, {"p95_latency_ms": -1},
               {"disabled": "no"}, {"efforts": {"low": 5}}, {"efforts": {"huge": Effort(10)}},
               {"reasoning_tokens": -1}):  # fmt: skip
        with pytest.raises(ConfigError):
            m.replace(**kw)
    with pytest.raises(ConfigError, match=r"model 'a'.deployments\[0\]: model \(the id"):
        dep_d = {"base_url": "https://x.example", "model": None}
        Registry.from_dict({"model": [{"id": "a", "provider": "p", "context_window": 10,
                                       "max_output": 5, "deployments": [dep_d]}]})  # fmt: skip


def test_an_anthropic_effort_below_its_smallest_thinking_budget_is_priced_at_it() -> None:
    """A level of 200 reasoning tokens was priced at 200, passed a cap, then sent Anthropic's
    smallest budget_tokens, 1024, and could not be called under that cap."""
    from satisfice.registry import ANTHROPIC_MIN_THINKING, Effort

    m = next(m for m in Registry.default()
             if m.base is None and m.efforts and m.deployments[0].api == "anthropic")  # fmt: skip
    low = m.replace(efforts={"low": Effort(200)}).variant("low")
    assert low.reasoning_tokens == ANTHROPIC_MIN_THINKING
    o = next(m for m in Registry.default()
             if m.base is None and m.efforts and m.deployments[0].api == "openai")  # fmt: skip
    assert o.replace(efforts={"low": Effort(200)}).variant("low").reasoning_tokens == 200


def test_a_bad_tier_names_its_place_once() -> None:
    tier = {"above": 5, "input": "a", "output": 1}
    bad = {"model": [{"id": "x", "provider": "x", "context_window": 10, "max_output": 5,
                      "price": {"input": 1, "output": 1, "long_context": tier}}]}  # fmt: skip
    with pytest.raises(ConfigError) as e:
        Registry.from_dict(bad)
    assert str(e.value).count("price") == 1, str(e.value)


def test_a_model_id_a_caller_could_not_type_or_a_log_would_misprint_is_refused() -> None:
    """Blank ids, a NUL, a right-to-left override and "auto" (the name that routes) had
    loaded and routed. Found by review."""
    base = {"provider": "openai", "context_window": 1000, "max_output": 100,
            "price": {"input": 1.0, "output": 2.0}}  # fmt: skip
    cases = {"   ": "start or end with spaces", " m": "start or end with spaces",
             "a\x00b": "control or format", "a\u202eb": "control or format",
             "a\u00a0b": "control or format", "auto": "the name that routes"}  # fmt: skip
    for mid, word in cases.items():
        with pytest.raises(ConfigError, match=word):
            Registry.from_dict({"model": [{"id": mid, **base}]})
    ok = Registry.from_dict({"model": [{"id": "my model/v2:1.0 ünï", **base}]})
    for mid in ("auto", " m\x00"):  # in code as well
        with pytest.raises(ConfigError, match="model id"):
            ok["my model/v2:1.0 ünï"].replace(id=mid)


def test_a_password_in_a_base_url_is_in_no_repr() -> None:
    """A deployment's base_url with a password (https://user:pass@host) showed it in the
    repr of the model and the registry. Found by review."""
    reg = Registry.from_dict({"model": [{
        "id": "m", "provider": "openai", "context_window": 1000, "max_output": 100,
        "price": {"input": 1.0, "output": 2.0},
        "deployments": [{"name": "d", "api": "openai",
                         "base_url": "http://user:UrlPassw0rdSecret@127.0.0.1:9/v1"}],
    }]})  # fmt: skip
    for shown in (repr(reg["m"]), repr(reg["m"].deployments[0]), repr(list(reg))):
        assert "UrlPassw0rdSecret" not in shown and "user:***@127.0.0.1" in shown
        assert "name='d', api='openai'" in shown  # nothing else masked
    dep = reg["m"].deployments[0].replace(base_url="http://user:a@127.0.0.1:9/v1")
    assert repr(dep).startswith("Deployment(name='d', api='openai', base_url='http://user:***@")
    assert reg["m"].deployments[0].base_url.startswith("http://user:UrlPassw0rdSecret@")


def test_a_retirement_is_said_once_per_model_not_per_effort_row() -> None:
    """Defect: `attention()` said a model's retirement once per row: the model and each of
    its effort rows (m, m@low, m@high), the same date and successor three times. Expected:
    once, naming the model."""
    from datetime import date

    reg = Registry.from_dict({"model": [{
        "id": "m", "context_window": 8000, "max_output": 1000, "price": {"input": 1, "output": 2},
        "deprecation_date": "2026-01-01", "successor": "n",
        "efforts": {"low": {"reasoning_tokens": 100}, "high": {"reasoning_tokens": 1000}},
    }]})  # fmt: skip
    notes = [n for n in reg.attention(date(2026, 6, 1)) if "retired" in n]
    assert len(notes) == 1 and "model 'm' " in notes[0], notes
