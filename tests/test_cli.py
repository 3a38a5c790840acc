from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from satisfice.cli import main


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "satisfice.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
    )


def test_route_json_object() -> None:
    p = run("route", "--json", "Extract the dates from this text as JSON: met on 2024-05-01")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    for key in ("model", "fallbacks", "tokens_in", "tokens_in_exact", "est_cost_usd", "reasons"):
        assert key in out
    assert isinstance(out["tokens_in_exact"], bool) and out["reasons"]


def test_route_file_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_text("Write a haiku about rain")
    p = run("route", "--file", str(f))
    assert p.returncode == 0 and "model:" in p.stdout
    p = run("route", "--max-cost", "0.0000000001", "hello")
    assert p.returncode == 2 and "no model satisfies" in p.stderr
    p = run("route")
    assert p.returncode == 2 and "give a prompt" in p.stderr


def test_count(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("hello world")
    assert run("count", "--model", "gpt-5.4-nano", str(f)).stdout.strip() == "2"
    out = json.loads(run("count", "--json", "--model", "claude-sonnet-4-6", str(f)).stdout)
    assert out == {"tokens": 2, "encoding": "claude", "exact": False}
    p = run("count", "--model", "gpt-99", str(f))
    assert p.returncode == 2 and "unknown model 'gpt-99'" in p.stderr
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00")
    assert "not UTF-8" in run("count", str(tmp_path / "bin")).stderr


def test_demo_runs() -> None:
    p = run("demo", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert len(out["routes"]) >= 10
    assert out["total_est_cost_usd"] < out["total_reference_cost_usd"]


def _bad_files(tmp: Path) -> list[tuple[list[str], str]]:
    (tmp / "adir").mkdir()
    (tmp / "notdb.db").write_bytes(b"this is not sqlite")
    (tmp / "empty.db").write_bytes(b"")
    (tmp / "scalar.jsonl").write_text("5\n")
    (tmp / "noid.jsonl").write_text('{"outcome": "ok"}\n')
    (tmp / "isots.jsonl").write_text('{"request_id": "a", "started_at": "2025-01-01"}\n')
    (tmp / "ok.jsonl").write_text('{"request_id": "a", "started_at": 1700000000}\n')
    (tmp / "binary.jsonl").write_bytes(b"\xbb\xff\x00")
    d = str(tmp / "adir")
    return [
        (["report", str(tmp / "notdb.db")], "not a satisfice ledger"),
        (["report", str(tmp / "empty.db")], "not a satisfice ledger"),
        (["report", d], "directory"),
        (["report", str(tmp / "scalar.jsonl")], "line 1: not a satisfice record"),
        (["report", str(tmp / "noid.jsonl")], "line 1: not a satisfice record"),
        (["report", str(tmp / "isots.jsonl")], "started_at"),
        (["report", str(tmp / "ok.jsonl"), "--html", d], "directory"),
        (["route", "--file", d], "directory"),
        (["count", d], "directory"),
        (["eval", "--format", "outcomes", str(tmp / "binary.jsonl"), "--quiet"], "UTF-8"),
    ]


@pytest.mark.parametrize("i", range(10))
def test_bad_files_are_a_clear_error_not_a_traceback(
    i: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, why = _bad_files(tmp_path)[i]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert why in err and "Traceback" not in err, err


@pytest.mark.parametrize("budget", ["nan", "inf", "-1", "0"])
def test_a_probe_budget_that_is_no_amount_is_refused(
    budget: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """NaN was taken: every probe then "failed" on its cost cap, and the exit code was 0."""
    assert main(["probe", "--models", "gpt-5.4-nano", "--budget-usd", budget]) == 2
    assert "budget_usd must be a number of USD > 0" in capsys.readouterr().err


def test_no_key_pasted_into_a_registry_is_echoed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model without an id had its whole table in the error (an inline api_key too); a
    catalogue URL's password was printed with the progress line and the error."""
    reg = tmp_path / "r.toml"
    reg.write_text('[[model]]\napi_key = "sk-live-SECRET123"\ncontext_window = 1000\n')
    assert main(["route", "hi", "--registry", str(reg)]) == 2
    err = capsys.readouterr().err
    assert "every model needs a string 'id'" in err and "SECRET" not in err
    reg.write_text(
        '[[model]]\nid = "m"\ncontext_window = 1000\nmax_output = 100\n'
        'deployments = [{name = "x", base_url = "sk-live-SECRET1234567890"}]\n'
    )
    assert main(["route", "hi", "--registry", str(reg)]) == 2
    err = capsys.readouterr().err
    assert "base_url must be an http(s) URL" in err and "SECRET" not in err
    url = "http://user:sk-live-SECRET123@127.0.0.1:9/x.json?key=SECRET456"
    assert main(["registry", "diff", "--from", "litellm", url]) == 2
    err = capsys.readouterr().err
    assert "http://127.0.0.1:9/x.json?..." in err and "SECRET" not in err, err


def test_a_ledger_amount_no_request_costs_is_an_error_not_inf(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two records at $1e308 each summed to "$inf ... nan% saved"."""
    import json

    led = tmp_path / "l.jsonl"
    rec = {"request_id": "r", "started_at": 1.7e9, "model": "m", "total_cost_usd": 1e308,
           "reference_cost_usd": 1e308}  # fmt: skip
    led.write_text("\n".join(json.dumps({**rec, "request_id": f"r{i}"}) for i in range(2)))
    assert main(["report", str(led)]) == 2
    err = capsys.readouterr().err
    assert "must be a number >= 0 (at most 1e+09)" in err and "$inf" not in err, err


def test_serve_says_what_is_wrong_before_it_says_serving(tmp_path: Path) -> None:
    """`satisfice serve` printed "serving ..." and then failed on the registry."""
    reg = tmp_path / "r.toml"
    reg.write_text("[[model]]\nid = 5\n")
    cfg = tmp_path / "s.toml"
    cfg.write_text(f'[registry]\npath = "{reg}"\n')
    p = run("serve", "--config", str(cfg), "--port", "0")
    assert p.returncode == 2 and "serving" not in p.stderr and "id" in p.stderr, p.stderr


def test_serve_says_a_port_it_cannot_listen_on_before_it_says_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port another process held, or a host that does not resolve, was uvicorn's bare
    `ERROR: [Errno 98] ...` after "serving", and exit code 3."""
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        p = run("serve", "--port", str(held.getsockname()[1]))
    assert p.returncode == 2 and "serving" not in p.stderr, p.stderr
    assert "cannot listen on 127.0.0.1:" in p.stderr and "choose another port" in p.stderr
    monkeypatch.setenv("SATISFICE_MASTER_KEY", "k" * 32)
    cfg = tmp_path / "s.toml"
    cfg.write_text("[server]\nrequire_keys = true\n")
    p = run("serve", "--config", str(cfg), "--host", "no-such-host.invalid", "--port", "0")
    assert p.returncode == 2 and "serving" not in p.stderr, p.stderr
    assert "'no-such-host.invalid' does not resolve" in p.stderr, p.stderr


def test_serve_says_the_port_it_bound() -> None:
    """With --port 0 the "serving" line said `:0`, a URL nobody can call."""
    import re
    import signal

    import httpx

    p = subprocess.Popen([sys.executable, "-m", "satisfice.cli", "serve", "--port", "0"],
                         stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert p.stderr is not None
        line = p.stderr.readline()
        m = re.search(r"on (http://127\.0\.0\.1:(\d+)/v1) ", line)
        assert m and m[2] != "0", line
        for _ in range(100):
            try:
                r = httpx.get(m[1].removesuffix("/v1") + "/health", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert r.status_code == 200
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)


def test_listen_binds_every_address_a_name_resolves_to() -> None:
    """`localhost` is ::1 and 127.0.0.1 on many machines; only the first had been bound."""
    import socket

    from satisfice.server import listen

    want = {a[4][0] for a in socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)}
    socks = listen("localhost", 0)
    try:
        assert {s.getsockname()[0] for s in socks} == want
        assert len({s.getsockname()[1] for s in socks}) == 1  # one port for all
    finally:
        for s in socks:
            s.close()


def _outputs_cases(tmp: Path) -> list[tuple[list[str], str, str]]:
    """(argv, the module attribute where the command's work starts, what the error says)"""
    (tmp / "l.jsonl").write_text('{"request_id": "a", "started_at": 1700000000}\n')
    (tmp / "o.jsonl").write_text('{"prompt": "p", "model": "m", "score": 1, "cost_usd": 0.1}\n')
    d, gone, led, out = str(tmp), str(tmp / "no" / "x.png"), str(tmp / "l.jsonl"), tmp / "o.jsonl"
    return [
        (["probe", "--models", "gpt-5.4-nano", "--save-policy", d], "satisfice.probe.run_probes",
         "--save-policy"),
        (["probe", "--save-policy", str(tmp / "p.json"), "--save-predictor", gone],
         "satisfice.probe.run_probes", "--save-predictor"),
        (["probe", "--health", gone], "satisfice.probe.run_probes", "--health"),
        (["eval", "--format", "outcomes", str(out), "--save-predictor", d],
         "satisfice.eval.cli.load", "--save-predictor"),
        (["eval", "--format", "outcomes", str(out), "--plot", gone], "satisfice.eval.cli.load",
         "--plot"),
        (["eval", "--format", "outcomes", str(out), "--save-onnx", d], "satisfice.eval.cli.load",
         "--save-onnx"),
        (["train", "--from-ledger", led, "--save-predictor", d],
         "satisfice.flywheel.train_from_ledger", "--save-predictor"),
        (["train", "--from-ledger", led, "--save-predictor", str(tmp / "q.npz"), "--policy", gone],
         "satisfice.flywheel.train_from_ledger", "--policy"),
        (["report", led, "--html", gone], "satisfice.report.summarize", "--html"),
        (["calibrate", "--format", "outcomes", str(out), "--target", "cost:0.1", "--policy", d],
         "satisfice.eval.cli.load", "--policy"),
        (["registry", "update", "--from", "litellm", str(out), "--out", d],
         "satisfice.sources.load", "--out"),
        (["registry", "update", "--from", "litellm", str(out)], "satisfice.sources.load",
         "give --out FILE"),
        (["train", "--from-ledger", led, "--save-predictor", str(tmp / "p.json"), "--policy",
          str(tmp / "p.json")], "satisfice.flywheel.train_from_ledger",
         "--save-predictor and --policy both name"),
    ]  # fmt: skip


@pytest.mark.parametrize("i", range(13))
def test_an_output_path_that_cannot_be_written_is_refused_before_the_work(
    i: int, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`probe --save-policy /tmp` ran every (paid) probe call, `eval --save-predictor DIR`
    trained, and then each failed on the write; `eval --plot /nonexistent/x.png` printed the
    finished report, a note and an error, and exited 1."""
    import importlib

    argv, work, flag = _outputs_cases(tmp_path)[i]
    module, attr = work.rsplit(".", 1)

    def started(*a: object, **k: object) -> None:
        raise AssertionError(f"{work} ran before the output path was checked")

    monkeypatch.setattr(importlib.import_module(module), attr, started)
    before = sorted(tmp_path.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"satisfice {argv[0]}: error: {flag}" in err and "Traceback" not in err, err
    assert sorted(tmp_path.rglob("*")) == before  # nothing created early


def test_an_output_path_the_command_can_write_is_not_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A new file in a directory that exists, a file to replace, and a stream (/dev/null,
    written into) all pass the check."""
    led = tmp_path / "l.jsonl"
    led.write_text('{"request_id": "a", "started_at": 1700000000}\n')
    (tmp_path / "old.html").write_text("old")
    for html in ("new.html", "old.html", "/dev/null"):
        assert main(["report", str(led), "--html", str(tmp_path / html)]) == 0
    assert (tmp_path / "new.html").read_text().startswith("<!")
    assert (tmp_path / "old.html").read_text() != "old"


def test_needs_leaves_the_prompt_to_the_prompt(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`route --needs json "prompt"` took the prompt as a second capability and then said
    "give a prompt, or --file PATH (- for stdin), not both", as it did for no prompt at all."""
    prompt = "Extract the dates from this text: met on 2024-05-01"
    outs = []
    for needs in (["--needs", "json"], ["--needs", "json,tools"],
                  ["--needs", "json", "--needs", "tools"]):  # fmt: skip
        assert main(["route", "--json", *needs, prompt]) == 0, capsys.readouterr().err
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[1] == outs[2]
    assert main(["demo", "--json", "--needs", "json"]) == 0
    capsys.readouterr()
    # the old spaced form says what to write instead of routing the word "tools"
    assert main(["route", "--needs", "json", "tools"]) == 2
    assert "--needs json,tools" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["route", "--needs", "json", "tools", prompt])
    assert "--needs json,tools" in capsys.readouterr().err
    assert main(["route"]) == 2
    neither = capsys.readouterr().err
    assert main(["route", "--file", "-", prompt]) == 2
    both = capsys.readouterr().err
    assert "give a prompt" in neither and "not both" not in neither, neither
    assert "not both" in both and neither != both, both
    # with --file, the spaced form's second value said "not both"; a prompt taken as a
    # capability said "give a prompt" (found by review)
    f = tmp_path / "p.txt"
    f.write_text(prompt)
    assert main(["route", "--file", str(f), "--needs", "json", "tools"]) == 2
    assert "'tools' is a capability" in capsys.readouterr().err
    assert main(["route", "--needs", "hello world"]) == 2
    assert "--needs 'hello world' is no capability" in capsys.readouterr().err


def test_a_warning_is_one_line_said_once(tmp_path: Path) -> None:
    """Python's form had the file and line that warned and its source line
    (`.../ledger.py:898: UserWarning: ...` and `  yield from _read_jsonl(p)`), and a retired
    model's registry note came twice: its log line, then `cli.py:26: RegistryWarning: ...`."""
    led = tmp_path / "l.jsonl"
    led.write_text('{"request_id": "a", "started_at": 1700000000}\nnot json\n'
                   '{"request_id": "b", "started_at": 1700000001}\n')  # fmt: skip
    p = run("report", str(led))
    assert p.returncode == 0, p.stderr
    assert p.stderr.splitlines() == [
        f"satisfice report: warning: ledger {led}: 1 line(s) that are not JSON were skipped "
        "(line 2)"
    ], p.stderr
    reg = tmp_path / "r.toml"
    reg.write_text('[[model]]\nid = "m"\ncontext_window = 100000\nmax_output = 10000\n'
                   "deprecation_date = 2020-01-01\n")  # fmt: skip
    p = run("route", "hi", "--registry", str(reg))
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and "'m' was retired on 2020-01-01" in lines[0], p.stderr
    assert "Warning:" not in p.stderr and ".py:" not in p.stderr, p.stderr


def test_an_option_that_would_do_nothing_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`route --messages hi` routed "hi" as text and said nothing of --messages (it reads
    --file only); `registry check --max-price-age-days -5` called every price stale;
    `probe --save-predictor P` without --save-policy probed and wrote nothing."""
    import satisfice.probe

    assert main(["route", "--messages", "hi"]) == 2
    err = capsys.readouterr().err
    assert "error: --messages reads" in err and "--file" in err, err
    with pytest.raises(SystemExit) as e:
        main(["registry", "check", "--max-price-age-days", "-5"])
    assert e.value.code == 2
    assert "--max-price-age-days: must be a whole number of days >= 0" in capsys.readouterr().err
    assert main(["registry", "check", "--max-price-age-days", "0"]) in (0, 1)

    def probed(*a: object, **k: object) -> None:
        raise AssertionError("probed")

    monkeypatch.setattr(satisfice.probe, "run_probes", probed)
    assert main(["probe", "--save-predictor", str(tmp_path / "p.npz")]) == 2
    assert "error: --save-predictor" in capsys.readouterr().err
