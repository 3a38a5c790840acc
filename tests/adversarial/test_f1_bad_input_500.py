"""F1: malformed requests get a bare 'Internal Server Error' 500 (text/plain, a Python
traceback in the server log) instead of a 400 in OpenAI's error shape."""

import httpx
import pytest

from .harness import LocalUpstream, key, serve

U = [{"role": "user", "content": "hi"}]
ANTH = {
    "system_int": {"system": 5},
    "stop_sequences_int": {"stop_sequences": 5},
    "tools_str": {"tools": "x"},
    "tools_int_item": {"tools": [1]},
    "tools_no_name": {"tools": [{}]},
    "str_block_next_to_tool_use": {
        "messages": [
            {"role": "assistant", "content": ["x", {"type": "tool_use", "id": "a", "name": "f"}]}
        ]
    },
    "tool_use_without_id": {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [{"type": "tool_use", "name": "f"}]},
        ]
    },
    "tool_result_content_int": {
        "messages": [
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "i", "content": 5}]}
        ]
    },
}


@pytest.fixture(scope="module")
def srv():
    with LocalUpstream() as up, serve(up) as (url, d, p):
        yield url, d


def _assert_openai_4xx(r: httpx.Response) -> None:
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:200])
    e = r.json()["error"]
    assert e["message"] and e["type"]


@pytest.mark.parametrize("name", sorted(ANTH))
def test_anthropic_messages_bad_fields(srv, name):
    url, _ = srv
    body = {"model": "auto", "max_tokens": 50, "messages": U, **ANTH[name]}
    _assert_openai_4xx(httpx.post(url + "/v1/messages", json=body, timeout=30))


def test_openai_stop_int_to_anthropic_deployment(srv):
    url, _ = srv  # beta is an Anthropic deployment: list(5) in AnthropicProvider._wire
    body = {"model": "beta", "messages": U, "stop": 5}
    _assert_openai_4xx(httpx.post(url + "/v1/chat/completions", json=body, timeout=30))


def test_openai_max_tokens_string_with_a_budget_key(srv):
    url, _ = srv  # worst_case_usd multiplies the raw max_tokens before anything validates it
    k = key(url, budget_usd=5.0)
    body = {"model": "auto", "messages": U, "max_tokens": "100"}
    r = httpx.post(
        url + "/v1/chat/completions",
        json=body,
        timeout=30,
        headers={"authorization": f"Bearer {k['key']}"},
    )
    _assert_openai_4xx(r)  # without a key the same body gets a clean 400


def test_string_stop_sequences_are_refused_not_split_into_characters(srv):
    url, _ = srv  # observed: 200, the upstream is sent stop ["E", "N", "D"]
    body = {"model": "auto", "max_tokens": 50, "messages": U, "stop_sequences": "END"}
    _assert_openai_4xx(httpx.post(url + "/v1/messages", json=body, timeout=30))


def test_stream_false_as_a_string_does_not_stream(srv):
    url, _ = srv  # observed: bool("false") is True -> an SSE stream
    r = httpx.post(
        url + "/v1/chat/completions", json={"model": "auto", "messages": U, "stream": "false"}
    )
    assert r.status_code == 400 or "json" in r.headers["content-type"], r.headers["content-type"]


def test_reload_with_an_unreadable_registry_is_a_clear_400(srv):
    import os

    url, d = srv
    from .harness import ADMIN

    reg = d / "r.toml"
    good = reg.read_text()
    try:
        reg.write_bytes(b"\xff\xfe\x00garbage")  # not UTF-8 -> UnicodeDecodeError, a 500
        r = httpx.post(url + "/admin/reload", headers=ADMIN)
        assert r.status_code == 400, r.status_code
        os.remove(reg)
        os.mkdir(reg)  # a directory -> IsADirectoryError, a 500
        r = httpx.post(url + "/admin/reload", headers=ADMIN)
        assert r.status_code == 400, r.status_code
    finally:
        if reg.is_dir():
            reg.rmdir()
        reg.write_text(good)
