"""What route() says and relies on, held where an adversarial review found it did not: the
thinking budget Anthropic's wire adds, message fields the wire sends, rules misspelt or
filtered out, the reasons a refusal gives, and the Rust core's own checks."""

from __future__ import annotations

import array
import math

import pytest

from satisfice import Policy, Registry, Router, Rule, _core
from satisfice.errors import ConfigError, NoRouteError

from .test_router import spec


def test_the_thinking_budget_is_left_out_of_the_window_and_max_output() -> None:
    """An Anthropic effort row's wire max_tokens is the answer's plus its thinking budget;
    the filters had checked the answer alone (max_tokens 64,000 went out as 80,384, past
    the model's max output, and a long prompt past the window)."""
    reg = Registry.default()
    m = reg["claude-haiku-4-5@high"]
    budget = max(m.reasoning_tokens or 0, 1024)
    r = Router(reg, Policy(quality_floor=0.0))
    with pytest.raises(NoRouteError, match="max_output_tokens"):
        r.route("hi", allow=(m.id,), max_output_tokens=m.max_output)
    assert r.route("hi", allow=(m.id,), max_output_tokens=m.max_output - budget).model == m.id
    prompt = "word " * (m.context_window - budget - 1000)  # fits with the answer alone
    with pytest.raises(NoRouteError, match="context_window"):
        r.route(prompt, allow=(m.id,), max_output_tokens=900, count_prompt=True)


def test_an_assistant_turns_refusal_and_reasoning_text_are_counted() -> None:
    """A top-level `refusal` (what `message.model_dump()` puts back in a history) and a
    `reasoning_content` go on the wire as given, and had not been counted: 21k tokens
    routed to an 8k window as 20."""
    small = spec("small", 1.0, 1.0, 0.9, tokenizer="o200k_base")
    r = Router(Registry([small]), Policy(quality_floor=0.0))
    big = "I cannot help with that request. " * 3000
    for key in ("refusal", "reasoning_content"):
        msgs = [{"role": "user", "content": "Do it."},
                {"role": "assistant", "content": None, key: big},
                {"role": "user", "content": "Please?"}]  # fmt: skip
        with pytest.raises(NoRouteError, match="context_window"):
            r.route(msgs, max_output_tokens=100)


def test_a_misspelt_rule_key_is_an_error_and_a_filtered_rule_is_not_named() -> None:
    """ "wen" for "when" had been dropped, making a rule for code catch every prompt; a rule
    whose models were all filtered out was named as the decision's rule all the same."""
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['wen'\]"):
        Rule.from_dict({"name": "code", "use": ["a"], "wen": {"task": "code"}})
    with pytest.raises(ConfigError, match="rule name must be a string"):
        Rule.from_dict({"name": {"x": 1}, "use": ["a"]})
    reg = Registry(
        [spec("a", 0.1, 0.1, 0.9), spec("b", 1, 1, 0.9, capabilities=frozenset({"tools"}))]
    )
    r = Router(reg, Policy(quality_floor=0.0, rules=(Rule("cheap", ("a",)),)))
    assert r.route("hi").rule == "cheap"
    d = r.route("hi", needs=("tools",))  # the rule's one model lacks tools
    assert d.model == "b" and d.rule is None and d.to_dict()["rule"] is None
    assert "rule" not in d.reasons()[0]


def test_a_refusal_names_what_ruled_out_the_models_the_request_could_have() -> None:
    """Under an allow list the other models count as excluded, and that count had been
    blamed ("loosen 'exclude' first") for what ruled out the allowed one; a max output
    filter quoted a max_tokens the caller never sent."""
    reg = Registry([spec(f"m{i}", 1, 1, 0.9) for i in range(5)]
                   + [spec("short", 0.1, 0.1, 0.9, max_output=256)])  # fmt: skip
    r = Router(reg, Policy(quality_floor=0.0))
    with pytest.raises(NoRouteError, match="loosen 'needs' first") as e:
        r.route("hi", allow=("short",), needs=("vision",))
    assert str(e.value).index("short:") < str(e.value).index("m0:")  # its reason first
    d = r.route("Write a poem about the sea.")
    why = d.filtered["short"][1]
    assert "expected answer" in why and "max_tokens" in why and "pass max_tokens" in why
    with pytest.raises(NoRouteError, match="max_tokens 600 exceeds"):
        r.route("hi", allow=("short",), max_output_tokens=600)


def _row(**kw: object) -> dict[str, object]:
    row: dict[str, object] = dict(
        id="a", price_in=1.0, price_out=1.0, context_window=100, max_output=10,
        capabilities=[], p95_ms=math.nan, tokenizer="o200k_base", bias=0.0,
        ability=[0.0, 0.0], disabled=False, long_above=math.inf, long_in=math.nan,
        long_out=math.nan, fee=0.0,
    )  # fmt: skip
    row.update(kw)
    return row


def test_the_core_refuses_what_would_abort_or_poison_it() -> None:
    """k = 2^40 aborted the process (an allocation Rust cannot recover from), 2^62 raised a
    PanicException past `except Exception`; a batch too big for memory aborted it too; a
    negative rate made a negative cost, a NaN fee a NaN cost that passed any cap."""
    w = array.array("f", [0.0] * 8)
    for k in (2**40, 2**62):
        with pytest.raises(ConfigError, match="latent dimensions"):
            _core.DispatchTable([_row()], w, [0.0] * 3, k, [], [1] * 8)
    for bad in ({"price_in": -1.0}, {"fee": math.nan}, {"long_out": math.inf}, {"fee": -0.1}):
        with pytest.raises(ConfigError, match="negative, infinite or NaN"):
            _core.DispatchTable([_row(**bad)], w, [0.0] * 3, 2, [], [1] * 8)
    with pytest.raises(MemoryError, match="do not fit in memory"):
        _core.Featurizer(1 << 20).featurize_batch(["a"] * 200_000)


def test_an_image_is_bounded_at_what_a_patch_priced_model_bills() -> None:
    """The upper bound of an image was Anthropic's 1,600 tokens: OpenAI's nano model bills
    a large image at ~3,780 (1,536 patches x 2.46), past a window the bound said it fit."""
    vision = frozenset({"vision"})
    reg = Registry([spec("v", 1.0, 1.0, 0.9, context_window=3000, max_output=100,
                         capabilities=vision)])  # fmt: skip
    r = Router(reg, Policy(quality_floor=0.0))
    image = {"type": "image_url", "image_url": {"url": "https://example.com/big.png"}}
    msgs = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}]
    with pytest.raises(NoRouteError, match="context_window"):
        r.route(msgs, max_output_tokens=50)
    big = Registry([spec("v", 1.0, 1.0, 0.9, context_window=5000, max_output=100,
                         capabilities=vision)])  # fmt: skip
    d = Router(big, Policy(quality_floor=0.0)).route(msgs, max_output_tokens=50)
    assert d.model == "v" and d.max_tokens_in("v") >= 3800


def test_a_tokenizer_no_family_is_estimated_not_called_exact() -> None:
    """xAI's and Zhipu's models, and any OpenRouter model, were given o200k_base, and their
    decisions said the prompt's count was exact; they are "other" now: o200k's count with
    a margin, estimated."""
    from satisfice.registry import Price
    from satisfice.sources import Listing, _new_model

    assert "other" in _core.FAMILIES
    reg = Registry.default()
    for mid in ("grok-4.3", "glm-5.2"):
        assert reg[mid].tokenizer == "other"
        d = Router(reg).route("Hello there, how are you?", allow=(mid,), count_prompt=True)
        assert not d.primary.tokens_in_exact
    assert Router(reg).route("hi", allow=("gpt-5.4",), count_prompt=True).primary.tokens_in_exact
    price = Price(1.0, 2.0)
    cases = (("x-ai/grok-9", "other"), ("openai/gpt-9", "o200k_base"),
             ("openai/gpt-4-turbo", "cl100k_base"), ("openai/gpt-4o", "o200k_base"),
             ("anthropic/claude-9", "claude"), ("meta-llama/llama-9", "llama"))  # fmt: skip
    for model, tok in cases:
        assert _new_model(model, Listing("openrouter", model, price)).tokenizer == tok
    assert _new_model("grok-9", Listing("xai", "grok-9", price)).tokenizer == "other"


async def test_the_wire_leaves_room_for_the_thinking_budget_too() -> None:
    """A decision made without max_tokens, then called with max_tokens = max_output, had
    sent max_output plus the thinking budget (the routing table's fix alone left it)."""
    from satisfice.testing import LocalUpstream, reply

    with LocalUpstream() as up:
        up.default = reply("hello")
        reg = up.patch(Registry.default())
        m = reg["claude-haiku-4-5@high"]
        async with Router(reg, Policy(quality_floor=0.0)) as r:
            d = await r.decide("hi", allow=(m.id,))
            res = await r.chat("hi", decision=d, max_tokens=m.max_output)
        sent = up.seen(m.deployments[0].model)[-1].body
    assert res.model == m.id and sent["max_tokens"] == m.max_output
    assert sent["max_tokens"] - sent["thinking"]["budget_tokens"] > 0


def test_an_image_to_a_claude_model_is_bounded_at_what_anthropic_bills() -> None:
    """The 3,800-token bound (an OpenAI nano model's large image) applied to every model:
    60 images to a 200k-window Claude model were refused, Anthropic billing ~96k."""
    reg = Registry.default()
    image = {"type": "image_url", "image_url": {"url": "https://example.com/big.png"}}
    msgs = [{"role": "user", "content": [{"type": "text", "text": "Compare these."}]
             + [image] * 60}]  # fmt: skip
    d = Router(reg, Policy(quality_floor=0.0)).route(msgs, allow=("claude-haiku-4-5",))
    assert d.model == "claude-haiku-4-5" and d.max_tokens_in(d.model) >= 60 * 1600


async def test_with_no_max_tokens_the_default_answer_leaves_room_for_the_budget() -> None:
    """No max_tokens: Anthropic's wire got its default 4,096 plus the budget, past a
    max_output of 8,192 with a budget of 6,000."""
    from satisfice.testing import LocalUpstream, reply

    with LocalUpstream() as up:
        up.default = reply("hello")
        m = {"id": "cx", "provider": "anthropic", "tokenizer": "claude", "context_window": 200_000,
             "max_output": 8192, "quality": {"general": 0.9}, "p95_latency_ms": 100,
             "price": {"input": 1.0, "output": 5.0},
             "efforts": {"high": {"reasoning_tokens": 6000}},
             "deployments": [{"name": "d", "api": "anthropic", "base_url": up.url,
                              "model": "cx-wire"}]}  # fmt: skip
        async with Router(Registry.from_dict({"model": [m]}), Policy(quality_floor=0.0)) as r:
            await r.chat("hi", allow=["cx@high"])
        sent = up.seen("cx-wire")[-1].body
    assert sent["max_tokens"] == 8192 and sent["thinking"]["budget_tokens"] == 6000
